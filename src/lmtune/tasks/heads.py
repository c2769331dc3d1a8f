"""The output layer run only where it is read: an encoder's vocabulary logits at the masked positions alone,
for masked-LM training, evaluation and fill-mask (the output layer is the largest matmul of a small
encoder, and masked LM reads ~15% of its rows)."""

from __future__ import annotations

import torch


def _output_head(model) -> torch.nn.Module | None:
    """The module that turns hidden states into vocabulary logits (BERT's `cls`, RoBERTa's `lm_head`), looked
    up inside DDP's and peft's wrappers; None for other architectures and compiled models (a hook added per
    call would make torch.compile recompile)."""
    inner = getattr(model, "module", model)  # DDP
    if hasattr(inner, "_orig_mod"):
        return None
    if hasattr(inner, "get_base_model"):  # peft
        inner = inner.get_base_model()
    return next(
        (m for m in (getattr(inner, n, None) for n in ("cls", "lm_head")) if isinstance(m, torch.nn.Module)), None
    )


def masked_logits(model, inputs: dict[str, torch.Tensor], where: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits [k, vocab] at the k positions where `where` [batch, length] is true. The encoder runs on
    every token, the output layer (vocabulary x hidden: the largest matmul of a small encoder, 85% of whose
    rows masked LM never reads) only at those positions: a pre-hook hands the head the selected rows. The
    call still goes through the model's own forward, so DDP's and FSDP's hooks run as usual."""
    head = _output_head(model)
    handle = None
    if head is not None:

        def selected_rows(module, args):
            if args and torch.is_tensor(args[0]) and args[0].shape[:2] == where.shape:
                return (args[0][where], *args[1:])
            return None

        handle = head.register_forward_pre_hook(selected_rows)
    try:
        logits = model(**inputs).logits
    finally:
        if handle is not None:
            handle.remove()
    return logits[where] if logits.dim() == 3 else logits
