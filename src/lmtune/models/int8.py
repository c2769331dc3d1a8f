"""Weight-only int8 for CPU inference: each linear layer's weight stored as int8 with one scale per output
channel; activations stay bf16.

Decoding one token reads every weight once, so its speed is memory traffic: int8 halves it against bf16.
Measured on SmolLM2-135M (2 vCPUs, AMD EPYC with avx512_bf16): batch-1 decoding 38.5 vs 16.7 tokens/s for
bf16 weights, held-out perplexity +0.4% against fp32 (`lmtune bench` re-measures both). The matmul is
PyTorch's own int8-weight kernel (`torch._weight_int8pack_mm`, the one gpt-fast uses on CPU). torchao's
Int8WeightOnlyConfig was measured first: 10.1 tokens/s without torch.compile, which costs over a minute
of compiling per process here. With fp32 activations the kernel is slow (9.4 tokens/s), so int8 pairs
with bf16 activations only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The kernel serves a few rows at a time (decoding); a longer prompt's prefill runs faster as one bf16
# matmul on the dequantized weight (measured: 512 tokens 0.70 s that way, 1.2 s through the kernel).
KERNEL_MAX_ROWS = 16
# Its bf16 path returns wrong numbers or crashes when the input width is not a multiple of 16 (probed on
# torch 2.13 CPU); such layers keep their bf16 weight.
WIDTH_MULTIPLE = 32


class Int8Linear(nn.Module):
    """A linear layer whose weight is int8 rows times per-row bf16 scales (symmetric, round to nearest)."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(self.scales.dtype)
        if rows.shape[0] <= KERNEL_MAX_ROWS:
            out = torch._weight_int8pack_mm(rows.contiguous(), self.weight_int8, self.scales)
        else:
            out = F.linear(rows, self.weight_int8.to(rows.dtype) * self.scales[:, None])
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def quantize_int8(model: nn.Module) -> int:
    """Replace `model`'s linear layers (in place) by `Int8Linear`; returns how many. Weights of other kinds
    (embeddings, norms, GPT-2's Conv1D) stay as they are, in bf16."""
    model.to(torch.bfloat16)
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.in_features % WIDTH_MULTIPLE == 0:
                setattr(parent, name, Int8Linear(child))
                replaced += 1
    return replaced
