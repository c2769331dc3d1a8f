"""Cross-entropy over a large vocabulary without the memory traffic of the textbook version.

`F.cross_entropy(logits.float(), ...)` on an 8 x 256 batch of a 49k-token vocabulary writes 400 MB of fp32
log-probabilities, reads them back in the backward, fills a 400 MB zero gradient for `nll_loss` and casts
it to bf16: measured on a 2-vCPU EPYC, as long as the output layer's matmuls themselves (~2 s of an
11 s SmolLM2-135M step). Here the loss and its gradient come out of one pass over the logits, a few rows
at a time (fp32 work that stays in cache), and the gradient is written over the logits, which nothing
else needs once the loss is known. The backward is then one multiply."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
# fp32 working rows per chunk: small enough to stay in cache on a CPU; on a GPU one chunk is plenty.
_CHUNK_BYTES = {"cpu": 8 << 20}
_DEFAULT_CHUNK_BYTES = 1 << 30


class _CrossEntropyInPlace(torch.autograd.Function):
    """Mean cross-entropy of rows `logits` [N, V] against `targets` [N] (IGNORE_INDEX skipped). The forward
    overwrites `logits` with d(loss)/d(logits); the caller must not use the logits afterwards."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        vocab = logits.shape[1]
        keep = targets != IGNORE_INDEX
        kept = keep.nonzero().squeeze(1)  # masked LM: only its masked rows come here; causal LM: nearly all
        logits.index_fill_(0, (~keep).nonzero().squeeze(1), 0)  # ignored rows get no gradient
        scale = 1.0 / max(len(kept), 1)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        step = max(1, min(len(kept), _CHUNK_BYTES.get(logits.device.type, _DEFAULT_CHUNK_BYTES) // (vocab * 4)))
        # Buffers reused by every chunk: a fresh multi-MB tensor per chunk costs its page faults each time.
        work = torch.empty(step, vocab, dtype=torch.float32, device=logits.device)
        low = torch.empty(step, vocab, dtype=logits.dtype, device=logits.device)
        for start in range(0, len(kept), step):
            rows = kept[start : start + step]
            n = len(rows)
            target = targets[rows][:, None]
            x = work[:n]
            x.copy_(torch.index_select(logits, 0, rows, out=low[:n]))
            picked = x.gather(1, target).squeeze(1)
            peak = x.amax(dim=-1, keepdim=True)
            x.sub_(peak).exp_()
            sums = x.sum(dim=-1, keepdim=True)
            total += (peak.squeeze(1) + sums.log().squeeze(1) - picked).sum()  # logsumexp - the target's logit
            # the gradient of the mean: (softmax - one_hot(target)) / count
            x.mul_(scale / sums)
            x.scatter_add_(1, target, torch.full_like(target, -scale, dtype=x.dtype))
            logits.index_copy_(0, rows, low[:n].copy_(x))
        ctx.save_for_backward(logits)
        return total * scale

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad.mul_(grad_loss.to(grad.dtype)), None  # in place: the buffer serves no one else


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, consume_logits: bool = False) -> torch.Tensor:
    """Mean cross-entropy of `logits` [..., V] against `targets` [...], IGNORE_INDEX skipped, fp32 math.

    `consume_logits=True` (training, when nothing else reads the logits): the fused pass above, which
    overwrites them with their gradient. fp16 logits keep the textbook path: a gradient stored before the
    loss scaler multiplies it would underflow in fp16."""
    logits = logits.reshape(-1, logits.shape[-1])
    targets = targets.reshape(-1)
    if consume_logits and logits.requires_grad and torch.is_grad_enabled() and logits.dtype != torch.float16:
        return _CrossEntropyInPlace.apply(logits, targets)
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, consume_logits: bool = False) -> torch.Tensor:
    """Next-token loss: position t predicts labels[t + 1] (what Hugging Face causal LMs compute from `labels`),
    the mean over the predicted tokens. Shifting the labels rather than the logits keeps the logits whole."""
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return cross_entropy(logits, targets, consume_logits)


def causal_lm_training_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training loss of a causal LM batch: the model's logits (asked without `labels`, so it computes no
    loss of its own) consumed by the fused cross-entropy."""
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    return causal_lm_loss(model(**inputs).logits, batch["labels"], consume_logits=True)
