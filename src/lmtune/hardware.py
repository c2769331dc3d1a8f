"""What this machine's hardware does fast, measured rather than assumed (CPUs differ: some compute bf16
matmuls ~4x faster than fp32, others ~3.5x slower)."""
from __future__ import annotations

import functools
import time

import torch


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether bf16 matmuls are clearly faster than fp32 on this CPU, measured (~0.3 s, once per process):
    with avx512_bf16/AMX they run ~4x faster, without them ~3.5x slower, so the margin asked for is wide
    and the answer does not flip with noise (processes of one run must agree)."""
    return _matmul_seconds(torch.bfloat16) < 0.6 * _matmul_seconds(torch.float32)


def _matmul_seconds(dtype: torch.dtype, n: int = 1024, repeats: int = 3) -> float:
    a, b = torch.randn(n, 2 * n, dtype=dtype), torch.randn(2 * n, n, dtype=dtype)
    a @ b  # warm-up: the first call picks and loads kernels
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best
