"""Where a run is: the loop's position, the best model so far, and how the data was cut into steps (saved in
every checkpoint; a resume must agree)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lmtune.errors import LmtuneError


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_done_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    best_metric: float | None = None  # of the selection metric (train.select_by), over the tuned model's evaluations
    best_step: int | None = None  # its step; the model of that step is in best/
    best_metrics: dict[str, float] = field(default_factory=dict)
    evaluated_step: int = 0  # step of the latest evaluation
    evals_without_improvement: int = 0
    base_metrics: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    base_reference: dict[str, float] = field(default_factory=dict)  # the base model on general text (eval.reference)
    stopped_early: bool = False
    planned_steps: int | None = None  # the steps a time budget planned (train.epochs auto): a resume keeps them
    plan: dict[str, int] = field(default_factory=dict)  # how the data was cut into steps (a resume must agree)


def check_plan(saved: dict[str, int], now: dict[str, int], checkpoint_dir: Path) -> None:
    """A checkpoint continues only with the batches it was cut into: the same global batch (per-process batch
    x processes: the number of processes may change), accumulation and training samples."""
    names = {
        "global_batch": "global batch (train.batch_size x processes)",
        "grad_accum": "train.grad_accum",
        "train_samples": "training samples (the data)",
    }
    changed = [f"{names[key]} {saved[key]} -> {now[key]}" for key in names if key in saved and saved[key] != now[key]]
    if changed:
        raise LmtuneError(
            f"cannot resume from {checkpoint_dir}: {'; '.join(changed)}. Resume with the settings the "
            "run was started with (per-process batch x processes unchanged), or start a new run "
            "(--overwrite, or another --output-dir)"
        )
