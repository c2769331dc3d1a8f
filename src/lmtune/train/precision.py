"""Which number format a run computes in, decided by what the hardware does fast."""

from __future__ import annotations

import contextlib

import torch

from lmtune.hardware import cpu_has_bf16


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
