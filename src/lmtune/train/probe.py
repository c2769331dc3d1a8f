"""Trial steps before training, undone afterwards. `train.lr: auto`: the learning rate measured, not guessed: a
few steps at each of three rates around the objective's usual one (a third of it, it, three times it), each
from the same starting weights and the same first batches, scored by the validation loss (a fourth beyond the
best when that is the highest or the lowest). A few steps favour rates too high for a whole run (short-horizon
bias: the fastest start is not the best finish), so the run takes the next gentler rate tried below the
probe's best (measured: on 700 reviews, MiniLM's probe best 3e-4 gave 0.67 validation accuracy, 1e-4 gave
0.80). With a time budget the probe takes at most a fifth of it. `train.epochs: auto` with a time budget:
what a step costs, to plan how many fit. The weights and the random state are put back afterwards, so the
run that follows is the run `train.lr: <chosen>` would give (config.yaml records the choice; lr_probe.json
the table)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import time
from typing import Any

import torch

from lmtune.config import save_config
from lmtune.train.batches import host_batches
from lmtune.train.budget import describe_plan, steps_within
from lmtune.train.profile import StepPhases
from lmtune.train.setup import Run, make_optimizer, make_scheduler, probe_centre

log = logging.getLogger("lmtune")
FACTORS = (1 / 3, 1.0, 3.0)
EVAL_BATCHES = 16  # the probe's validation: enough to rank three rates, cheap next to the steps
BUDGET_SHARE = 0.2  # of the minutes left, at most this for the probe (of four rates at worst)
FEWEST_STEPS = 3  # fewer steps a rate cannot rank rates: the objective's usual rate is used


def candidates(centre: float) -> list[float]:
    return [float(f"{centre * factor:.3g}") for factor in FACTORS]


def probe_steps(steps_per_epoch: int, planned_steps: int, affordable: int | None = None) -> int:
    """Steps per candidate: an epoch of a tiny corpus, at most a twentieth of the run each, 4 to 16; and no
    more than the time budget affords (which may leave fewer than FEWEST_STEPS: no probe)."""
    steps = max(4, min(16, steps_per_epoch, planned_steps // 20))
    return steps if affordable is None else min(steps, affordable)


def choose(table: list[dict[str, Any]]) -> float:
    """The next gentler rate tried below the best validation loss (the best itself when it is the gentlest):
    a few steps reward rates that are too high for the whole run."""
    rates = sorted(row["lr"] for row in table)
    best = min(table, key=lambda row: (row["val_loss"], row["lr"]))["lr"]  # ties: the gentler rate
    return rates[max(0, rates.index(best) - 1)]


def probe_learning_rate(run: Run, centre: float, steps: int, train_step) -> dict[str, Any]:
    """Train `steps` steps at each candidate rate from the run's current weights and score each on (a slice
    of) the validation split. Returns {"chosen", "best", "table": [{lr, val_loss, seconds}], "steps",
    "step_seconds"}: the mean seconds an optimizer step took, for planning the run's steps."""
    table, step_times = [], []

    def trial(lr: float) -> None:
        seconds, diverged = _trial_steps(run, batches, lr, train_step)
        step_times.append(seconds / max(1, len(batches)))
        loss = math.inf if diverged else _validation_loss(run)
        table.append({"lr": lr, "val_loss": loss, "seconds": round(seconds, 1)})
        log.info("learning-rate probe: lr %g -> validation loss %.4f (%d steps)", lr, loss, len(batches))

    def best() -> float:
        return min(table, key=lambda row: (row["val_loss"], row["lr"]))["lr"]  # ties: the gentler rate

    with _undone(run) as batches_for:
        batches = batches_for(steps)
        grid = candidates(centre)
        for lr in grid:
            trial(lr)
        if best() in (grid[0], grid[-1]):  # the best at an edge: one more step beyond it, the same factor
            trial(float(f"{best() * (3.0 if best() == grid[-1] else 1 / 3):.3g}"))
    return {
        "chosen": choose(table),
        "best": best(),
        "table": table,
        "steps": len(batches),
        "step_seconds": sum(step_times) / len(step_times),
    }


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


def measured_settings(run: Run, eval_seconds: float, budget_started: float, metrics_log, train_step) -> None:
    """A fresh run's settings measured here rather than guessed: the learning rate (train.lr auto: probed,
    recorded in config.yaml and lr_probe.json) and the steps that fit the time budget (train.epochs auto with
    train.max_minutes); the optimizer and schedule are made again with them. `eval_seconds`: what evaluating
    the base model took."""
    tc, cluster = run.config.train, run.cluster
    budgeted = tc.epochs == "auto" and bool(tc.max_minutes) and not tc.max_steps
    if tc.lr != "auto" and not budgeted:
        return

    def seconds_left() -> float:
        return tc.max_minutes * 60 - (time.perf_counter() - budget_started) - eval_seconds  # the last evaluation

    step_cost = None
    if budgeted:  # what a step costs decides how long a probe the budget affords
        step_cost = cluster.agree([step_seconds(run, train_step), eval_seconds], op="max")[0]
    if tc.lr == "auto":
        probed = _probe(run, step_cost, eval_seconds, seconds_left() if budgeted else None, metrics_log, train_step)
        step_cost = probed or step_cost  # more steps timed than step_seconds' one
    if budgeted:
        # The processes plan alike: each takes the slowest step and evaluation any of them measured.
        step_cost, eval_seconds = cluster.agree([step_cost, eval_seconds], op="max")
        run.total_steps = run.state.planned_steps = steps_within(
            seconds_left(), step_cost, eval_seconds, run.steps_per_epoch, tc.eval_every
        )
        log.info(describe_plan(run.total_steps, run.steps_per_epoch, seconds_left() / 60))
    run.optimizer = make_optimizer(run.model, run.config, cluster.device)
    run.scheduler = make_scheduler(run.optimizer, run.config, run.total_steps)
    if cluster.main:
        save_config(run.config, run.out / "config.yaml")  # the chosen rate: rerunning it skips the probe


def _probe(run: Run, step_cost, eval_seconds: float, seconds_left, metrics_log, train_step) -> float | None:
    """train.lr auto: the probe, as long as the budget (if any) affords; sets run.config.train.lr. Returns
    the seconds a probe step took (None: no probe)."""
    tc = run.config.train
    centre = probe_centre(run.config, run.parameters["total"])
    if len(run.val_set) == 0:
        log.warning("warning: train.lr auto: no validation split to probe learning rates on; using %g", centre)
        tc.lr = centre
        return None
    affordable = None
    if seconds_left is not None:
        val_batches = math.ceil(len(run.val_set) / tc.batch_size)
        probe_eval = eval_seconds * min(1.0, EVAL_BATCHES / max(1, val_batches))
        affordable = int((BUDGET_SHARE * seconds_left / 4 - probe_eval) / step_cost)
    steps = probe_steps(run.steps_per_epoch, run.total_steps, affordable)
    if steps < FEWEST_STEPS:
        log.info(
            "train.lr auto: the time budget affords no learning-rate probe (a step takes %.1f s); using %g "
            "(--minutes more probes it, --train.lr sets it)",
            step_cost,
            centre,
        )
        tc.lr = centre
        return None
    found = probe_learning_rate(run, centre, steps, train_step)
    tc.lr = found["chosen"]
    record_probe(run, found, metrics_log)
    return found["step_seconds"]


def record_probe(run: Run, found: dict[str, Any], metrics_log) -> None:
    rows = ", ".join(f"{row['lr']:g} -> {row['val_loss']:.4f}" for row in found["table"])
    log.info(
        "learning rate %g chosen by the probe (%d steps each; validation loss: %s; the next gentler rate below "
        "the best, %g, as a few steps favour rates too high for a whole run)",
        found["chosen"],
        found["steps"],
        rows,
        found["best"],
    )
    if run.cluster.main:
        (run.out / "lr_probe.json").write_text(json.dumps(found, indent=2))
        metrics_log.write(
            {
                "step": 0,
                "event": "lr_probe",
                "lr": found["chosen"],
                **{f"probe/{row['lr']:g}/val_loss": row["val_loss"] for row in found["table"]},
            }
        )
