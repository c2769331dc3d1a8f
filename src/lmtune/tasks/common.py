"""Pieces the objectives share: padding a batch, and iterating a split in fixed order."""

from __future__ import annotations

import torch


def pad_id(tokenizer) -> int:
    """The id padding uses (EOS when the tokenizer has no pad token: padding is masked everywhere)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def pad_batch(sequences: list[list[int]], pad_id: int, label_pad: int = -100) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence; padding is masked out of attention and of the labels."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[i, : len(seq)] = 1
    labels = input_ids.masked_fill(attention == 0, label_pad)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def eval_batches(dataset, collator, batch_size: int, max_batches: int | None = None):
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator)
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        yield batch


def default_loss(model, batch, state=None) -> torch.Tensor:
    return model(**batch).loss
