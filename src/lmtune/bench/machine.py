"""The machine the bench runs on: its measured peak matmul throughput (the roofline MFU is
reported against), the FLOPs of a training token, and the CPU's name."""

from __future__ import annotations

import time
from pathlib import Path

import torch


def peak_matmul(dtype: torch.dtype, n: int = 2048, seconds: float = 1.5) -> float:
    """Measured GFLOP/s of large square matmuls (the roofline MFU is reported against)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def train_flops_per_token(model, seq: int) -> float:
    """6 x parameters in matmuls (embedding lookups excluded, tied output layer included) + attention."""
    cfg = model.config
    params = sum(
        p.numel()
        for n, p in model.named_parameters()
        if p.ndim == 2 and "wpe" not in n and "position" not in n and "token_type" not in n
    )
    layers = getattr(cfg, "n_layer", None) or cfg.num_hidden_layers
    width = getattr(cfg, "n_embd", None) or cfg.hidden_size
    return 6 * params + 12 * layers * seq * width


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
