"""`lmtune eval`: any model on any text, with the same metrics training reports."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from lmtune.config import RunConfig
from lmtune.data.prepare import is_prepared, load_prepared
from lmtune.infer import LoadedModel, load
from lmtune.models.resolve import context_length_of
from lmtune.train.data import prepare_data
from lmtune.train.precision import autocast_for


def evaluate_model(
    model: str,
    data: str,
    block_size: int = 512,
    text_column: str = "text",
    label_column: str = "label",
    max_batches: int | None = None,
    batch_size: int = 8,
    config: RunConfig | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    # A measurement: in fp32, whatever inference elsewhere would pick (lmtune eval = the training loop's numbers).
    loaded = model if isinstance(model, LoadedModel) else load(str(model), dtype="fp32")
    objective = loaded.objective
    limit = context_length_of(loaded.model.config)
    block_size = min(block_size, limit) if limit else block_size
    if is_prepared(Path(data)):
        split = load_prepared(Path(data)).dataset
        dataset = split.get("validation") or split["train"]
        run_config = config or RunConfig(objective=objective.name)
    else:
        run_config = config or RunConfig.model_validate(
            {
                "objective": objective.name,
                "data": {
                    "train": data,
                    "block_size": block_size,
                    "val_fraction": 0.0,
                    "text_column": text_column,
                    "label_column": label_column,
                },
            }
        )
        if "classify" in loaded.capabilities:
            run_config.data.keep_labels = loaded.labels  # rows with other labels cannot be scored
        with tempfile.TemporaryDirectory(prefix="lmtune-eval-") as tmp:
            prepared = prepare_data(run_config, Path(tmp) / "data", tokenizer=loaded.tokenizer, quiet=True)
            train_split = prepared.dataset["train"]
            dataset = type(train_split).from_dict(train_split.to_dict())  # in memory: the folder goes away
    device = next(loaded.model.parameters()).device if hasattr(loaded.model, "parameters") else torch.device("cpu")
    autocast, _ = autocast_for(precision, device)
    return objective.evaluate(
        loaded.model, dataset, loaded.tokenizer, run_config, autocast, batch_size=batch_size, max_batches=max_batches
    )
