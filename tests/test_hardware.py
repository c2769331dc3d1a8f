"""Hardware helpers: releasing a thread's OpenMP workers really lets them go, and computing afterwards
still works (the workers come back)."""
import os
import threading
import time

import pytest
import torch

from lmtune.hardware import _libgomp, release_cpu_workers


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(_libgomp() is None or not os.path.isdir("/proc/self/task") or torch.get_num_threads() < 2,
                    reason="needs PyTorch on GNU OpenMP, Linux and 2+ CPU threads")
def test_a_thread_that_computed_lets_its_openmp_workers_go():
    a = torch.randn(512, 512)
    result: dict = {}

    def worker():  # a fresh thread: its own OpenMP pool, created by its first parallel op
        before = _threads()
        first = a @ a
        result["grown"] = _threads() - before
        release_cpu_workers()
        deadline = time.time() + 5
        while _threads() > before and time.time() < deadline:
            time.sleep(0.01)
        result["after"] = _threads() - before
        result["same"] = torch.equal(a @ a, first)  # the pool comes back and computes the same

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert result["grown"] >= 1 and result["after"] == 0 and result["same"]


def test_the_bf16_answer_can_be_handed_down(monkeypatch):
    from lmtune.hardware import cpu_has_bf16

    for given, answer in (("1", True), ("0", False)):
        monkeypatch.setenv("LMTUNE_CPU_BF16", given)
        cpu_has_bf16.cache_clear()
        assert cpu_has_bf16() is answer
    monkeypatch.delenv("LMTUNE_CPU_BF16")
    cpu_has_bf16.cache_clear()
