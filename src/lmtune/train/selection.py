"""The best model, not the last one: each evaluation of the tuned model is compared with the best so far
(kept in best/), patience is counted for early stopping, and final/ gets the best (last/ keeps the other)."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

from lmtune.outputs import replace_dir, swap_in
from lmtune.train import checkpoint
from lmtune.train.state import TrainState

log = logging.getLogger("lmtune")


def improved(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


def track_evaluation(
    state: TrainState, metrics: dict[str, float], metric: str, mode: str, patience: int | None, metrics_log, save_best
) -> None:
    """Record an evaluation of the tuned model; on a new best, keep that model (best/); count patience."""
    if not metrics:
        return
    state.last_metrics, state.evaluated_step = metrics, state.step
    if metrics_log is not None:
        metrics_log.write({"step": state.step, "event": "eval", "model": "tuned", **metrics})
    value = metrics.get(metric)
    if value is None:
        return
    if improved(value, state.best_metric, mode):
        state.best_metric, state.best_step, state.best_metrics = value, state.step, dict(metrics)
        state.evals_without_improvement = 0
        save_best()
    else:
        state.evals_without_improvement += 1
        if patience is not None and state.evals_without_improvement >= patience:
            state.stopped_early = True


def eval_interval(setting: int | str, total_steps: int, steps_per_epoch: int | None = None) -> int:
    """'auto': twice an epoch, so the best point of a small corpus (a few steps an epoch) is not missed, but
    between 15 and 40 evaluations a run (at least every step of a very short one)."""
    if setting != "auto":
        return int(setting)
    fewest, most = math.ceil(total_steps / 40), math.ceil(total_steps / 15)
    twice_an_epoch = math.ceil((steps_per_epoch or total_steps) / 2)
    return max(1, min(max(twice_an_epoch, fewest), most))


def save_final_model(out: Path, model, tokenizer, state: TrainState, keep: str, model_state=None) -> Path:
    """final/ holds the best evaluated model (or the last, with train.keep: last); when the two differ,
    the other one stays beside it (last/ or best/), so nothing trained is thrown away. `model_state`: the
    gathered weights of a sharded (FSDP) model."""
    best_dir = out / "best"
    if keep == "best" and state.best_step is not None and state.best_step != state.step and best_dir.exists():
        checkpoint.save_final(out, model, tokenizer, name="last", model_state=model_state)
        if checkpoint.is_adapter(best_dir):  # LoRA: best/ holds the adapter; final/ gets it merged
            checkpoint.load_weights(model, best_dir)
            final_dir = checkpoint.save_final(out, model, tokenizer)
            shutil.rmtree(best_dir, ignore_errors=True)
        else:
            final_dir = swap_in(best_dir, out / "final")
        log.info(
            "final/ holds the best model (step %d); the last one (step %d) is in last/", state.best_step, state.step
        )
        return final_dir
    final_dir = checkpoint.save_final(out, model, tokenizer, model_state=model_state)
    if state.best_step == state.step or keep == "last" and state.best_step is None:
        shutil.rmtree(best_dir, ignore_errors=True)  # the same model as final/
    return final_dir


def beats_base(state: TrainState, metric: str, mode: str) -> bool | None:
    base = state.base_metrics.get(metric)
    if base is None or state.best_metric is None:
        return None
    return improved(state.best_metric, base, mode)


def keep_better_baseline(out: Path, baselines: dict, final: dict, metric: str, mode: str) -> dict | None:
    """A baseline that can be saved as a model and beats the fine-tuned one on the selection metric (a tuned
    TF-IDF classifier on long documents, say) is written to `baseline/`, so the better model is at hand; what
    it is, where, and its score. None when the fine-tuned model is at least as good."""
    ours = final.get(metric)
    candidates = [
        (name, b) for name, b in baselines.items() if b.save is not None and b.metrics.get(metric) is not None
    ]
    if ours is None or not candidates:
        return None
    name, best = min(candidates, key=lambda c: -c[1].metrics[metric] if mode == "max" else c[1].metrics[metric])
    if not improved(best.metrics[metric], ours, mode):
        return None
    folder = replace_dir(out / "baseline", best.save)
    log.info(
        "the %s baseline beats the fine-tuned model on %s (%.4f vs %.4f): saved as a model in %s",
        name,
        metric,
        best.metrics[metric],
        ours,
        folder,
    )
    return {"name": name, "path": str(folder), metric: best.metrics[metric]}
