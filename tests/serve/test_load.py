"""A bounded load test on loopback against a real `lmtune serve` process: 500 requests at concurrency 16
mixing every route, including clients that drop mid-stream and while queued. No failures, no hangs,
latency percentiles printed, memory at the end within 1.2x of memory after warm-up."""

import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.serve.conftest import raw_request_then_hang_up

REQUESTS, CONCURRENCY, WARMUP = 500, 16, 60


def one_request(server, kind: str, seed: int) -> tuple[str, float, str]:
    """(kind, seconds, problem or ''). Dropping clients count as fine when the server survives them."""
    url, start = server.url, time.perf_counter()
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            if kind == "generate":
                r = client.post("/v1/generate", json={"prompt": "The king", "max_new_tokens": 8, "seed": seed})
                ok = r.status_code == 200 and len(r.json()["completions"]) == 1
            elif kind == "stream":
                with client.stream(
                    "POST", "/v1/generate", json={"prompt": "A ghost", "max_new_tokens": 8, "stream": True}
                ) as r:
                    lines = [line for line in r.iter_lines() if line.startswith("data: ")]
                ok = r.status_code == 200 and lines[-1] == "data: [DONE]"
            elif kind == "completions":
                r = client.post("/v1/completions", json={"prompt": "The queen", "max_tokens": 8})
                ok = r.status_code == 200 and r.json()["choices"]
            elif kind == "chat-stream":
                with client.stream(
                    "POST",
                    "/v1/chat/completions",
                    json={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "stream": True},
                ) as r:
                    lines = [line for line in r.iter_lines() if line.startswith("data: ")]
                ok = r.status_code == 200 and lines[-1] == "data: [DONE]"
            elif kind == "fill-mask":
                r = client.post("/v1/fill-mask", json={"text": "the king [MASK] the castle", "top_k": 3})
                ok = r.status_code == 200 and len(r.json()["results"][0]["masks"][0]) == 3
            elif kind == "classify":
                r = client.post("/v1/classify", json={"text": ["great film", "awful film"]})
                ok = r.status_code == 200 and len(r.json()["results"]) == 2
            elif kind == "models":
                ok = client.get("/v1/models").status_code == 200 and client.get("/health").status_code == 200
            elif kind == "bad":
                r = client.post("/v1/generate", json={"prompt": "x", "temperature": -3})
                ok = r.status_code == 422 and "error" in r.json()
            elif kind == "drop-mid-stream":
                with client.stream(
                    "POST",
                    "/v1/generate",
                    json={"prompt": "Night", "max_new_tokens": 200, "ignore_eos": True, "stream": True},
                ) as r:
                    next(r.iter_lines())  # one event, then leave
                ok = r.status_code == 200
            elif kind == "drop-queued":
                raw_request_then_hang_up(
                    server.port, "/v1/generate", {"prompt": "x", "max_new_tokens": 200, "ignore_eos": True}
                )
                ok = True
            else:
                raise AssertionError(kind)
        return kind, time.perf_counter() - start, "" if ok else f"unexpected answer to {kind}"
    except Exception as err:  # a hang (timeout) or a broken connection is a failure
        return kind, time.perf_counter() - start, f"{kind}: {type(err).__name__}: {err}"


KINDS = (
    ["generate"] * 3
    + ["stream"] * 3
    + ["completions"] * 2
    + ["chat-stream"] * 2
    + ["fill-mask"] * 3
    + ["classify"] * 3
    + ["models", "bad", "drop-mid-stream", "drop-queued"]
)


def run_batch(server, kinds: list[str]) -> list[tuple[str, float, str]]:
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return list(pool.map(lambda item: one_request(server, item[1], item[0]), enumerate(kinds)))


def test_500_mixed_requests_at_concurrency_16(server_process):
    rng = random.Random(0)
    kinds = [rng.choice(KINDS) for _ in range(REQUESTS)]
    started = time.perf_counter()
    results = run_batch(server_process, kinds[:WARMUP])
    rss_warm = server_process.rss_mb()
    results += run_batch(server_process, kinds[WARMUP:])
    wall = time.perf_counter() - started
    rss_end = server_process.rss_mb()
    failures = [problem for _, _, problem in results if problem]
    latencies = sorted(seconds for kind, seconds, _ in results if not kind.startswith("drop"))
    p50, p95, p99 = (latencies[int(q * (len(latencies) - 1))] for q in (0.5, 0.95, 0.99))
    print(
        f"\n{len(results)} requests in {wall:.1f} s at concurrency {CONCURRENCY}: {len(failures)} failures; "
        f"latency p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"mean {statistics.mean(latencies) * 1000:.0f} ms; RSS {rss_warm:.0f} MB after warm-up, "
        f"{rss_end:.0f} MB at the end"
    )
    assert len(results) == REQUESTS and not failures, failures[:5]
    assert rss_end <= 1.2 * rss_warm
    # The server is still whole: a last request is served at once, and SIGTERM stops it in seconds.
    last = httpx.post(server_process.url + "/v1/generate", json={"prompt": "The end", "max_new_tokens": 4}, timeout=10)
    assert last.status_code == 200
    assert server_process.stop(timeout=10) < 8
