"""Pieces the objectives share: padding a batch, and iterating a split in fixed order."""

from __future__ import annotations

import torch

# The chat template of models without one of their own (GPT-2, the from-scratch presets): role markers as plain
# text, each turn ended by the tokenizer's EOS, which generation stops at. Chat training saves it with the model.
DEFAULT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


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


def length_grouped_batches(
    lengths: list[int], batch_size: int, generator: torch.Generator, group: int = 50
) -> list[list[int]]:
    """One epoch's batches of sample indices: random groups of `group` batches, each sorted by length and cut
    into batches (little padding), then all batches shuffled (order still random)."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = []
    span = batch_size * group
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]
