"""The serving bench: a real `lmtune serve` process on loopback, driven by concurrent streaming clients,
with continuous batching (the default) against one request at a time (`--batch-size 1`)."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import httpx

from lmtune.errors import LmtuneError

PROMPTS = [
    "HAMLET. To be, or not to be",
    "The king is dead",
    "O Romeo, Romeo",
    "Good night, sweet prince",
    "What a piece of work is a man",
    "Now is the winter of our discontent",
    "All the world's a stage",
    "Friends, Romans, countrymen",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, model: str, *options: str):
        self.url = f"http://127.0.0.1:{(port := _free_port())}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lmtune.cli", "serve", model, "--port", str(port), "--no-ui", *options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")},
        )
        deadline = time.time() + 300
        while True:
            if self.proc.poll() is not None:
                raise LmtuneError(f"the bench server did not start: {self.proc.communicate()[1][-500:]}")
            if time.time() > deadline:
                self.close()
                raise LmtuneError("the bench server did not start within 300 s")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _drive(url: str, clients: int, rounds: int, new_tokens: int) -> dict[str, Any]:
    """`clients` threads, each streaming `rounds` requests of exactly `new_tokens` tokens, back to back."""
    records: list[tuple[float, float]] = []  # (first piece, whole request) seconds
    errors: list[str] = []

    def client(i: int) -> None:
        with httpx.Client(timeout=600) as http:
            for r in range(rounds):
                body = {
                    "prompt": PROMPTS[(i + r) % len(PROMPTS)],
                    "max_new_tokens": new_tokens,
                    "temperature": 0.8,
                    "seed": i * 100 + r,
                    "ignore_eos": True,
                    "stream": True,
                }
                start, first = time.perf_counter(), None
                with http.stream("POST", url + "/v1/generate", json=body) as response:
                    for line in response.iter_lines():
                        if line.startswith("data: ") and first is None:
                            first = time.perf_counter() - start
                        if line.startswith("data: ") and "error" in line and line != "data: [DONE]":
                            errors.append(json.loads(line[6:]).get("error", {}).get("message", line))
                records.append((first or float("nan"), time.perf_counter() - start))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise LmtuneError(f"the bench server failed a request: {errors[0]}")
    firsts, totals = sorted(r[0] for r in records), sorted(r[1] for r in records)

    def p95(values: list[float]) -> float:
        return values[int(0.95 * (len(values) - 1))]

    return {
        "requests": len(records),
        "tokens_per_s": len(records) * new_tokens / elapsed,
        "p50_s": statistics.median(totals),
        "p95_s": p95(totals),
        "first_token_p50_s": statistics.median(firsts),
        "first_token_p95_s": p95(firsts),
    }


def bench_serving(model: str, clients: int = 8, rounds: int = 2, new_tokens: int = 32) -> dict[str, Any]:
    """Total generated tokens/s and latencies with `clients` concurrent streaming clients, for the batching
    server and the one-at-a-time server (each alone on the machine, in turn)."""
    out: dict[str, Any] = {"model": model, "clients": clients, "rounds": rounds, "new_tokens": new_tokens}
    for name, options in (("one_at_a_time", ["--batch-size", "1"]), ("batched", ["--batch-size", str(clients)])):
        server = _Server(model, *options)
        try:
            _drive(server.url, 1, 1, 4)  # warm up
            out[name] = _drive(server.url, clients, rounds, new_tokens)
        finally:
            server.close()
    out["ratio"] = out["batched"]["tokens_per_s"] / out["one_at_a_time"]["tokens_per_s"]
    # How long one decode step of the full batch takes: a newcomer should wait about this, not a whole answer.
    out["batched"]["step_s"] = clients / out["batched"]["tokens_per_s"]
    return out
