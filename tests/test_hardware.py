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


@pytest.mark.skipif(
    _libgomp() is None or not os.path.isdir("/proc/self/task") or torch.get_num_threads() < 2,
    reason="needs PyTorch on GNU OpenMP, Linux and 2+ CPU threads",
)
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


_PAGE_FAULTS = """
import resource, sys
import torch
from lmtune.hardware import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range(4):  # the first touches fault in any case (the heap settles after a few)
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):  # what a training step does: free a large tensor, allocate its successor, write it
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not hasattr(__import__("ctypes").CDLL(None), "gnu_get_libc_version"), reason="glibc only")
def test_freed_memory_is_reused_without_page_faults():
    import subprocess
    import sys

    def faults(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", _PAGE_FAULTS, mode], capture_output=True, text=True, check=True)
        return int(run.stdout.split()[-1])

    # In about one process in six here the heap cannot grow in place (where the address-space layout put
    # other mappings) and glibc falls back to fresh mappings after all: the best of a few processes counts.
    default = faults("default")
    kept = min(faults("keep") for _ in range(4))
    assert default > 1000  # 5 x 64 MB of fresh mmaps
    assert kept < default / 10, (kept, default)
