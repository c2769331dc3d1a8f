"""A real `lmtune serve` process on a loopback port, serving three tiny models."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_models(tiny_clm_run, tiny_classifier, tmp_path_factory):
    """A causal LM, a masked LM and a classifier, each trained for a few steps."""
    from lmtune.config import build_config
    from lmtune.train.loop import train
    from tests.conftest import make_story

    root = tmp_path_factory.mktemp("serve-models")
    (root / "book.txt").write_text("\n\n".join(make_story(i) for i in range(6)))
    mlm = train(build_config({
        "objective": "mlm", "output_dir": str(root / "mlm"), "model": {"name": "bert-tiny"},
        "data": {"train": str(root / "book.txt"), "block_size": 32},
        "train": {"batch_size": 8, "max_steps": 3, "precision": "fp32"}, "report": {"compare_base": False}}),
        progress=False)["final_model"]
    return {"clm": tiny_clm_run, "mlm": mlm, "cls": tiny_classifier[0]}


class ServerProcess:
    def __init__(self, models: dict, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.models = models
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lmtune.cli", "serve", models["clm"], models["mlm"], models["cls"],
             "--port", str(self.port), "--no-ui", "--max-new-tokens", "480", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
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
            raise AssertionError(f"the server ignored SIGTERM for {timeout} s")
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
