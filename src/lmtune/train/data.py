"""Data for a run: the objective's splits with the model's tokenizer, prepared once and cached."""

from __future__ import annotations

from pathlib import Path

from lmtune.config import RunConfig
from lmtune.data.prepare import Prepared, prepare
from lmtune.models.load import load_tokenizer
from lmtune.tasks import get_objective


def prepare_data(config: RunConfig, out_dir: Path, tokenizer=None, quiet: bool = False) -> Prepared:
    """`lmtune prepare` and the first step of `lmtune train`. `tokenizer`: use this one (evaluation of a
    loaded model) instead of the recipe's."""

    def tokenizer_fn():
        return tokenizer or load_tokenizer(config.tokenizer.name, config.model.init_from or config.model.name)

    return prepare(config, out_dir, get_objective(config.objective).write_splits, tokenizer_fn, quiet=quiet)
