"""Which device and which number format a run uses, decided by what the hardware does fast."""
from __future__ import annotations

import contextlib
import functools
import time

import torch


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


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


def autocast_for(precision: str, device: torch.device):
    """A no-argument factory of autocast contexts. Weights stay fp32; matmuls run in bf16 where fast."""
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_has_bf16() else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext, "fp32"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return (lambda: torch.autocast(device.type, dtype=dtype)), precision
