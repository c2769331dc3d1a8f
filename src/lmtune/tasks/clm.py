"""Causal language modelling: predict each next token of packed blocks."""
from __future__ import annotations

import math

import torch

from lmtune.tasks.common import default_loss as loss  # noqa: F401  (the model's own shifted CE)
from lmtune.tasks.common import eval_batches, pad_batch



def make_collator(tokenizer, config=None, train: bool = True):
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def collate(examples):
        return pad_batch([ex["input_ids"] for ex in examples], pad_id)

    return collate


@torch.inference_mode()
def evaluate(model, dataset, tokenizer, config, autocast, batch_size: int = 8, max_batches: int | None = None):
    """Token-weighted mean loss over the split (each batch's mean weighted by its predicted tokens)."""
    model.eval()
    total, count = 0.0, 0
    for batch in eval_batches(dataset, make_collator(tokenizer), batch_size, max_batches):
        n = int((batch["labels"][:, 1:] != -100).sum())
        with autocast():
            out = model(**batch)
        total += float(out.loss) * n
        count += n
    loss_value = total / max(count, 1)
    return {"val_loss": loss_value, "val_perplexity": math.exp(min(loss_value, 50))}
