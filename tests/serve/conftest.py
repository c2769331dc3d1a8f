"""Serving tests' shared pieces: three tiny trained models, a real `lmtune serve` process on a loopback port,
raw clients that hang up, a stand-in request whose client leaves, an app in a thread and a browser page."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port


@pytest.fixture(scope="session")
def tiny_models(tiny_clm_run, tiny_classifier, tmp_path_factory):
    """A causal LM, a masked LM and a classifier, each trained for a few steps."""
    from lmtune.config import build_config
    from lmtune.train.loop import train
    from tests.conftest import make_story

    root = tmp_path_factory.mktemp("serve-models")
    (root / "book.txt").write_text("\n\n".join(make_story(i) for i in range(6)))
    mlm = train(
        build_config(
            {
                "objective": "mlm",
                "output_dir": str(root / "mlm"),
                "model": {"name": "bert-tiny"},
                "data": {"train": str(root / "book.txt"), "block_size": 32},
                "train": {"batch_size": 8, "max_steps": 3, "precision": "fp32"},
                "report": {"compare_base": False},
            }
        ),
        progress=False,
    )["final_model"]
    return {"clm": tiny_clm_run, "mlm": mlm, "cls": tiny_classifier[0]}


class ServerProcess:
    def __init__(self, models: dict, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.models = models
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lmtune.cli",
                "serve",
                models["clm"],
                models["mlm"],
                models["cls"],
                "--port",
                str(self.port),
                "--no-ui",
                "--max-new-tokens",
                "480",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        deadline = time.time() + 120
        while True:
            assert self.proc.poll() is None, self.proc.communicate()[1][-2000:]
            assert time.time() < deadline, "the server did not start"
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def stop(self, timeout: float = 10) -> float:
        """SIGTERM; the seconds it took the server to exit."""
        start = time.time()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the server ignored SIGTERM for {timeout} s") from None
        return time.time() - start

    def close(self) -> None:
        """Kill the server if a test left it running."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def server_process(tiny_models):
    server = ServerProcess(tiny_models)
    yield server
    server.close()


def send_raw(port: int, path: str, body: dict) -> socket.socket:
    """Send a complete HTTP request and return the open socket, unread: closing it is a client that leaves."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def raw_request_then_hang_up(port: int, path: str, body: dict) -> None:
    send_raw(port, path, body).close()


class Gone:
    """A stand-in for a request: `is_disconnected()` turns true once `leave` is set."""

    def __init__(self):
        self.leave = threading.Event()

    async def is_disconnected(self) -> bool:
        return self.leave.is_set()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it where apt works)"
)


@contextlib.contextmanager
def app_in_thread(app):
    """`app` served by uvicorn on a free loopback port in this process; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def browser_page():
    """A page of Debian's chromium driven by Playwright (never a browser download)."""
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from playwright.sync_api import sync_playwright

    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield browser.new_page()
        finally:
            browser.close()
