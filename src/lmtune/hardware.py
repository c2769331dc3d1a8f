"""What this machine's hardware does fast, measured rather than assumed (CPUs differ: some compute bf16
matmuls ~4x faster than fp32, others ~3.5x slower)."""

from __future__ import annotations

import ctypes
import functools
import os
import time
from pathlib import Path

import torch


def cpu_cores() -> int:
    """The CPUs this process may run on (a container's or taskset's share, not the whole machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads(processes: int = 1) -> int:
    """Compute threads for each of `processes` processes sharing this machine: OMP_NUM_THREADS when set (a
    scheduler's or a test runner's word for this process), else an equal share of the cores."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, cpu_cores() // processes)


def default_device(device: str | None = None) -> torch.device:
    """The device asked for, else the first GPU when there is one, else the CPU: the one default everywhere."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether bf16 matmuls are clearly faster than fp32 on this CPU, measured (~0.3 s, once per process):
    with avx512_bf16/AMX they run ~4x faster, without them ~3.5x slower, so the margin asked for is wide
    and the answer does not flip with noise (processes of one run must agree). `LMTUNE_CPU_BF16=1|0` gives
    the answer instead: a parent that measured once hands it to its workers (the bench's contenders, where
    a worker measuring while the model loader's threads still held CPUs once answered differently)."""
    given = os.environ.get("LMTUNE_CPU_BF16")
    if given in ("0", "1"):
        return given == "1"
    seconds = _matmul_seconds((torch.bfloat16, torch.float32))
    return seconds[torch.bfloat16] < 0.6 * seconds[torch.float32]


def _matmul_seconds(dtypes: tuple[torch.dtype, ...], n: int = 1024, repeats: int = 5) -> dict[torch.dtype, float]:
    """The best time of one n x 2n x n matmul per dtype, the dtypes taking turns: a passing slowdown (another
    process, a thread's OpenMP pool waking) then hits them alike instead of only the one measured then
    (a test run once saw bf16 measured slow on a CPU where it is 2.5x faster)."""
    pairs = {dtype: (torch.randn(n, 2 * n, dtype=dtype), torch.randn(2 * n, n, dtype=dtype)) for dtype in dtypes}
    for a, b in pairs.values():
        a @ b  # warm-up: the first call picks and loads kernels
    best = dict.fromkeys(dtypes, float("inf"))
    for _ in range(repeats):
        for dtype, (a, b) in pairs.items():
            start = time.perf_counter()
            a @ b
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best


@functools.lru_cache(maxsize=1)
def _libgomp():
    """The GNU OpenMP runtime PyTorch runs its CPU kernels on, when that is what it uses (Linux wheels)."""
    for path in sorted(Path(torch.__file__).parent.glob("lib/libgomp*.so*")):
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        if hasattr(lib, "omp_pause_resource_all"):
            return lib
    return None


def release_cpu_workers() -> None:
    """Let the calling thread's OpenMP worker threads exit (they come back, in microseconds, when it computes
    again). Why: libgomp's workers spin between parallel regions only while it manages no more threads than
    there are CPUs. Once two threads have each run PyTorch ops (a model loaded on the main thread and run on
    a worker thread, or two engine threads), every op on either sleeps and wakes on futexes instead:
    measured on 2 vCPUs (AMD EPYC), SmolLM2 decoding 1.6x slower, small matmuls 3x. A thread that hands its
    model to another, or goes idle, calls this. A no-op with other OpenMP runtimes."""
    lib = _libgomp()
    if lib is not None:
        lib.omp_pause_resource_all(1)  # omp_pause_soft: frees this thread's pool, keeps what was set


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of giving it back to the system. Why: a
    training step frees and re-allocates the same large tensors (activations, logits, gradients) every
    step; glibc serves blocks over 32 MB with a fresh mmap each time, and every page of it faults on first
    touch. Measured on 2 vCPUs (AMD EPYC), SmolLM2-135M at 8x256 in bf16: 9.1-10.8 s per step before,
    6.8-8.5 s after, peak RSS 5.2 -> 4.9 GB (the heap reuses what the mmaps kept re-creating). In about
    one process in six the heap cannot grow in place (other mappings in the way) and glibc falls back to
    fresh mappings: no gain there, no harm either. Once per
    process; True where it applied (glibc), False elsewhere (macOS, musl: their allocators are left alone)."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):
        return False
    return all(
        mallopt(option, value) == 1
        for option, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 256 << 20))
    )  # C ints
