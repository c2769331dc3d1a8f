"""`eval.reference`: what a run traded for the domain. General text (not the user's) scored by the base model
before training and by the tuned model in final/ after it, with the objective's own metrics (`ref_loss`,
`ref_perplexity`, ...), so the report shows the domain gained beside the general language lost."""

from __future__ import annotations

import logging
from typing import Any

from lmtune.data.general import REFERENCE, general_blocks
from lmtune.errors import LmtuneError
from lmtune.infer import load

log = logging.getLogger("lmtune")


def reference_split(run) -> Any | None:
    """The reference text packed like the run's own (a `datasets.Dataset`), or None where it does not apply
    (objectives that do not model text, `eval.reference: null`)."""
    from datasets import Dataset

    config = run.config
    if config.eval.reference is None or not run.objective.reference_metric:
        return None
    source = REFERENCE if config.eval.reference == "auto" else config.eval.reference
    try:
        blocks = general_blocks(
            source,
            run.prepared.tokenizer,
            run.objective.framing(run.prepared.tokenizer),
            config.data.block_size,
            config.eval.reference_tokens,
        )
    except LmtuneError as err:
        raise LmtuneError(f"eval.reference: {err}") from None
    return Dataset.from_dict({"input_ids": [block.tolist() for block in blocks]})


def reference_metrics(run, model, tokenizer, split) -> dict[str, float]:
    """The objective's validation metrics on the reference split, named `ref_*` instead of `val_*`."""
    tc = run.config.train
    metrics = run.objective.evaluate(model, split, tokenizer, run.config, run.autocast, batch_size=tc.batch_size)
    if hasattr(run.model, "train"):
        run.model.train()
    return {
        "ref_" + key.removeprefix("val_"): value for key, value in metrics.items() if isinstance(value, (int, float))
    }


def tuned_reference_metrics(run, final_dir, split) -> dict[str, float]:
    """final/ (the model the user gets) scored on the reference split, in fp32 as every measurement is."""
    loaded = load(str(final_dir), dtype="fp32", device=str(run.cluster.device))
    return reference_metrics(run, loaded.model, loaded.tokenizer, split)
