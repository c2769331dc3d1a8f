"""One module per training objective. Each provides what the generic loop needs:

- `make_collator(tokenizer, config, train)`: list of examples -> batch of tensors
- `evaluate(model, dataset, tokenizer, config, autocast)`: validation metrics (keys start with `val_`)
- `loss(model, batch, state)`: the training loss (defaults to the model's own loss on `labels`)
- `prepare_splits(config, tokenizer)` (optional): tokenized columns for each split; default is packing
"""
from __future__ import annotations

import importlib

OBJECTIVES = {"clm": "clm", "mlm": "mlm", "classify": "classify", "sft": "sft"}


def get_task(objective: str):
    return importlib.import_module(f"lmtune.tasks.{OBJECTIVES[objective]}")
