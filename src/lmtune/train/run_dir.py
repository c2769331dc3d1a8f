"""The run folder before training: checked before any work, locked (one writer), emptied of an earlier
run's own files on --overwrite, and compared with the run's own recipe on --resume."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lmtune.config import RunConfig, data_inputs
from lmtune.errors import LmtuneError
from lmtune.models.resolve import check_block_size
from lmtune.outputs import RUN_ENTRIES, check_output_dir, remove_own, run_has_model
from lmtune.train.tracking import check_trackers

log = logging.getLogger("lmtune")


def prepare_run_dir(config: RunConfig, resume: bool, overwrite: bool) -> Path:
    """Check the run folder before any work: never lmtune's to write unless it is new, empty or lmtune's.
    The libraries of train.report_to's trackers are checked here too."""
    out = Path(config.output_dir)
    check_output_dir(out, data_inputs(config), kind="run")
    check_trackers(config.train.report_to)
    check_block_size(config.model.init_from or config.model.name, config.data.block_size)
    return out


def claim_run_dir(config: RunConfig, resume: bool, overwrite: bool) -> None:
    """With the run folder's lock held: refuse to continue a run with other settings, or to start over a run
    without --overwrite; with it, remove the earlier run's own files (and nothing else)."""
    out = Path(config.output_dir)
    if resume:
        conflicts = resume_conflicts(out, config)
        if conflicts:
            raise LmtuneError(
                f"cannot resume {out} with other settings: {'; '.join(conflicts)}. Resume with the "
                f"run's own settings (lmtune train {out / 'config.yaml'} --resume), or start a new "
                "run (--overwrite, or another --output-dir)"
            )
    elif run_has_model(out):
        if not overwrite:
            raise LmtuneError(
                f"{out} already holds a run; pass --resume to continue it, --overwrite to replace "
                "it, or choose another output_dir"
            )
        log.info("replacing the run in %s (--overwrite)", out.resolve())
        remove_own(out, RUN_ENTRIES)


# What defines a run's data and steps: a resume must not change them (the saved position in the epoch,
# the batches and the optimizer state would no longer fit). Steps, epochs and the time budget may grow.
RESUME_KEYS = (
    "objective",
    "model.name",
    "model.init_from",
    "model.impl",
    "model.lora",
    "model.quantize",
    "tokenizer",
    "data",
    "train.grad_accum",
    "train.seed",
    "tasks",
    "sft",
)


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}.{key}").items()}
    return {prefix: value}


def resume_conflicts(out: Path, config: RunConfig) -> list[str]:
    """Settings of `config` that differ from those the run in `out` was started with (its config.yaml)."""
    import yaml

    try:
        saved = yaml.safe_load((out / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []  # no record to compare with: the checkpoint's own plan is checked when it loads
    now = config.model_dump(mode="json")
    changed = []
    for key in RESUME_KEYS:
        old, new = saved, now
        for part in key.split("."):
            old = old.get(part) if isinstance(old, dict) else None
            new = new.get(part) if isinstance(new, dict) else None
        old_flat, new_flat = _flat(old, key), _flat(new, key)
        changed += [
            f"{name} {old_flat.get(name)!r} -> {new_flat.get(name)!r}"
            for name in dict.fromkeys([*old_flat, *new_flat])
            if old_flat.get(name) != new_flat.get(name)
        ]
    return changed


def check_recipe_targets_its_run(recipe: Path, output_dir: str) -> None:
    """A run's saved config.yaml copied with its folder still names the original folder: replacing or
    resuming through it would silently act on that other run. Ask which one is meant."""
    from lmtune.outputs import marker_kind

    folder = recipe.resolve().parent
    target = Path(output_dir).expanduser().resolve()
    if recipe.name == "config.yaml" and marker_kind(folder) == "run" and target != folder:
        raise LmtuneError(
            f"{recipe} is the saved recipe of the run in {folder}, but its output_dir names another "
            f"folder ({output_dir}); pass --output-dir {folder} to act on this run, or --output-dir "
            f"{output_dir} to act on that one"
        )
