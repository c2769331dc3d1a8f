"""Trial steps before training, undone afterwards. `train.lr: auto`: the learning rate measured, not guessed: a
few steps at each of three rates around the objective's usual one (a third of it, it, three times it), each
from the same starting weights and the same first batches, scored by the validation loss; the best rate trains
the run. `train.epochs: auto` with a time budget: what a step costs, to plan how many fit. The weights and the
random state are put back afterwards, so the run that follows is the run `train.lr: <chosen>` would give
(config.yaml records the choice; lr_probe.json the table)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import time
from typing import Any

import torch

from lmtune.train.batches import host_batches
from lmtune.train.profile import StepPhases
from lmtune.train.setup import Run, make_optimizer

log = logging.getLogger("lmtune")
FACTORS = (1 / 3, 1.0, 3.0)
EVAL_BATCHES = 16  # the probe's validation: enough to rank three rates, cheap next to the steps


def candidates(centre: float) -> list[float]:
    return [float(f"{centre * factor:.3g}") for factor in FACTORS]


def probe_steps(steps_per_epoch: int, planned_steps: int) -> int:
    """Steps per candidate: an epoch of a tiny corpus, at most a twentieth of the run each, 4 to 16."""
    return max(4, min(16, steps_per_epoch, planned_steps // 20))


def probe_learning_rate(run: Run, centre: float, steps: int, train_step) -> dict[str, Any]:
    """Train `steps` steps at each candidate rate from the run's current weights and score each on (a slice
    of) the validation split. Returns {"chosen", "table": [{lr, val_loss, seconds}], "steps", "step_seconds"}:
    the mean seconds an optimizer step took, for planning the run's steps."""
    table, step_times = [], []
    with _undone(run) as batches_for:
        batches = batches_for(steps)
        for lr in candidates(centre):
            seconds, diverged = _trial_steps(run, batches, lr, train_step)
            step_times.append(seconds / max(1, len(batches)))
            loss = math.inf if diverged else _validation_loss(run)
            table.append({"lr": lr, "val_loss": loss, "seconds": round(seconds, 1)})
            log.info("learning-rate probe: lr %g -> validation loss %.4f (%d steps)", lr, loss, len(batches))
    chosen = min(table, key=lambda row: (row["val_loss"], row["lr"]))["lr"]  # ties: the gentler rate
    return {"chosen": chosen, "table": table, "steps": len(batches), "step_seconds": sum(step_times) / len(step_times)}


def step_seconds(run: Run, train_step, steps: int = 2) -> float:
    """What one optimizer step costs here: the second of two trial steps at learning rate 0 (the first pays
    for allocations), undone afterwards."""
    with _undone(run) as batches_for:
        batches = batches_for(steps)
        _trial_steps(run, batches[:1], 0.0, train_step)
        seconds, _ = _trial_steps(run, batches[1:] or batches, 0.0, train_step)
    return seconds / max(1, len(batches[1:] or batches))


def _trial_steps(run: Run, batches: list[list[dict]], lr: float, train_step) -> tuple[float, bool]:
    """`batches` trained at a constant `lr` with an optimizer of their own; (seconds, whether it diverged)."""
    trial = dataclasses.replace(
        run,
        optimizer=make_optimizer(run.model, run.config, run.cluster.device, lr=lr),
        scaler=torch.amp.GradScaler(run.cluster.device.type, enabled=run.scaler.is_enabled()),
    )
    trial.scheduler = torch.optim.lr_scheduler.LambdaLR(trial.optimizer, lambda step: 1.0)
    run.model.train()
    began, diverged = time.perf_counter(), False
    for micro in batches:
        diverged = train_step(trial, micro, StepPhases(False, run.cluster.device), []).diverged or diverged
    return time.perf_counter() - began, diverged


@contextlib.contextmanager
def _undone(run: Run):
    """Whatever is trained inside is undone: the trainable weights and the random state come back. Yields a
    function giving the first N steps' batches of the run's first epoch."""
    trainable = {name: p for name, p in run.model.named_parameters() if p.requires_grad}
    start = {name: p.detach().clone() for name, p in trainable.items()}
    rng = (
        torch.get_rng_state(),
        random.getstate(),
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    )
    try:
        yield lambda steps: _first_batches(run, steps)
    finally:
        _restore(trainable, start, rng)
        run.model.train()


def _first_batches(run: Run, steps: int) -> list[list[dict]]:
    """The first `steps` steps' micro-batches of the run (this process's share; a tiny corpus's next epochs
    too), collated once."""
    tc = run.config.train
    order, epoch = [], 0
    while len(order) < steps * tc.grad_accum:
        order += run.epoch_order(epoch)
        epoch += 1
    order = order[: steps * tc.grad_accum]
    stream = list(
        host_batches(run.train_set, run.collate, [run.cluster.shard(b, tc.batch_size) for b in order], 0, False)
    )
    return [stream[i : i + tc.grad_accum] for i in range(0, len(stream), tc.grad_accum)]


def _validation_loss(run: Run) -> float:
    tc = run.config.train
    limit = min(tc.eval_max_batches or EVAL_BATCHES, EVAL_BATCHES)
    metrics = run.objective.evaluate(
        run.cluster.unwrap(run.model),
        run.val_set,
        run.prepared.tokenizer,
        run.config,
        run.autocast,
        batch_size=tc.batch_size,
        max_batches=limit,
    )
    return float(metrics["val_loss"])


def _restore(trainable: dict, start: dict, rng) -> None:
    with torch.no_grad():
        for name, p in trainable.items():
            p.copy_(start[name])
            p.grad = None
    torch.set_rng_state(rng[0])
    random.setstate(rng[1])
    if rng[2] is not None:
        torch.cuda.set_rng_state_all(rng[2])
