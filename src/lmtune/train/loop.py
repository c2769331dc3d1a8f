"""The training loop: plain PyTorch, readable top to bottom.

check and lock the run folder -> set up (data, model, AdamW + schedule, resume: train/setup.py) -> evaluate
the base -> steps (`train_step`: gradient accumulation, clipping, bf16 autocast, one exchange between
processes) -> periodic log / eval (best model kept) / checkpoint / early stop -> final model and summary."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lmtune.config import RunConfig
from lmtune.errors import Interrupted, LmtuneError
from lmtune.locks import own_folder
from lmtune.outputs import run_has_model
from lmtune.tasks import ignored_keys, selection_metric
from lmtune.train import checkpoint
from lmtune.train.advice import divergence_message, plan_warnings
from lmtune.train.batches import host_batches, to_device
from lmtune.train.distributed import Cluster
from lmtune.train.metrics_log import MetricsLog, NoLog
from lmtune.train.plots import plot_run
from lmtune.train.probe import measured_settings
from lmtune.train.profile import StepPhases
from lmtune.train.reference import reference_metrics, reference_split, tuned_reference_metrics
from lmtune.train.run_dir import claim_run_dir, prepare_run_dir
from lmtune.train.selection import beats_base, eval_interval, keep_better_baseline, track_evaluation
from lmtune.train.setup import Run, setup_run
from lmtune.train.signals import StopSignals
from lmtune.train.tracking import Tracker, close_trackers, log_artifacts, open_trackers

log = logging.getLogger("lmtune")


def train(config: RunConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run the recipe; returns a summary (base and final metrics, paths). Under torchrun every process
    calls this; the main one checks, locks and writes the run folder, and all of them train."""
    out = Path(config.output_dir)
    cluster = Cluster.from_env(config.train.distributed)
    try:
        with contextlib.ExitStack() as held:
            if cluster.main:
                prepare_run_dir(config, resume, overwrite)
                # One writer per run folder; a run that fails before training began leaves no folder behind.
                held.enter_context(
                    own_folder(out, "run", "train", keep=lambda: (out / "metrics.jsonl").exists() or run_has_model(out))
                )
                claim_run_dir(config, resume, overwrite)
            cluster.barrier()
            return _train_tracked(config, out, resume, progress, cluster)
    except BaseException as err:
        if cluster.lost_a_peer(err):
            raise LmtuneError(
                "lost contact with another training process (it crashed or was killed); "
                "the last checkpoint is kept: continue with --resume"
            ) from None
        raise
    finally:
        cluster.close()


def _train_tracked(config: RunConfig, out: Path, resume: bool, progress: bool, cluster: Cluster) -> dict[str, Any]:
    """_train with train.report_to's trackers open around it (main process)."""
    trackers: list[Tracker] = []
    if cluster.main:
        # train.report_to: the trackers start (the recipe logged) before any training work
        trackers = open_trackers(config.train.report_to, out, config.model_dump(mode="json"))
    status = "failed"
    try:
        summary = _train(config, out, resume, progress, cluster, trackers)
        log_artifacts(trackers, summary["plots"])
        status = "finished"
        return summary
    except (KeyboardInterrupt, Interrupted):
        status = "killed"
        raise
    finally:
        close_trackers(trackers, status)


def _train(
    config: RunConfig, out: Path, resume: bool, progress: bool, cluster: Cluster, trackers: list[Tracker]
) -> dict[str, Any]:
    tc, main = config.train, cluster.main
    if main:
        for warning in ignored_keys(config):
            log.warning("warning: %s", warning)
    run = setup_run(config, out, resume, cluster)
    state = run.state
    metrics_log = (
        MetricsLog(out / "metrics.jsonl", keep_until_step=state.step if run.resumed_from else None, trackers=trackers)
        if main
        else NoLog()
    )
    budget_started = time.perf_counter()  # train.max_minutes counts from here
    baselines = _measure_the_start(run, metrics_log, budget_started)
    _announce(run)
    metric = selection_metric(config)
    mode = run.objective.metric_mode(metric)
    every = eval_interval(tc.eval_every, run.total_steps, run.steps_per_epoch)
    patience = (4 if len(run.val_set) else None) if tc.early_stopping_patience == "auto" else tc.early_stopping_patience

    bar = tqdm(
        total=run.total_steps,
        initial=state.step,
        desc="train",
        unit="step",
        disable=not (progress and main),
        dynamic_ncols=True,
    )
    run.model.train()
    started = last_save = time.perf_counter()
    deadline = budget_started + tc.max_minutes * 60 if tc.max_minutes else math.inf
    window, tokens_seen, slots_seen = _Window(), 0, 0  # tokens trained on (all processes), and with padding
    phases = StepPhases(tc.profile, run.cluster.device)
    with StopSignals() as stop:
        for micro, epoch_length in _steps(run):
            now = time.perf_counter()
            save_due = bool(tc.save_every_minutes) and now - last_save >= (tc.save_every_minutes or 0) * 60
            step = train_step(run, micro, phases, [stop.signum is not None, now > deadline, save_due])
            if step.diverged:
                bar.close()
                raise LmtuneError(divergence_message(state.step + 1, step.own_loss, tc.lr, checkpoint.latest(out)))
            if tc.compile and tokens_seen == 0:
                log.info("torch.compile: the first step took %.1f s (compiling)", time.perf_counter() - now)
            signalled, late, save_due = step.flags
            state.step += 1
            state.batches_done_in_epoch += len(micro)
            tokens_seen, slots_seen = tokens_seen + step.tokens, slots_seen + step.slots
            bar.update(1)
            window.add(step.loss, len(micro), step.tokens, step.slots)
            if state.step % tc.log_every == 0 or state.step == run.total_steps:
                record = window.record(state, run.scheduler.get_last_lr()[0])
                metrics_log.write(record)
                bar.set_postfix(loss=f"{record['train_loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            if every and state.step % every == 0 and state.step < run.total_steps:
                track_evaluation(state, run.evaluate(), metric, mode, patience, metrics_log, run.save_best)
                if state.stopped_early:
                    log.info(
                        "early stopping at step %d: no improvement in %s for %d evaluations",
                        state.step,
                        metric,
                        state.evals_without_improvement,
                    )
            if state.batches_done_in_epoch >= epoch_length:  # the epoch's end belongs to this step's state
                state.epoch, state.batches_done_in_epoch = state.epoch + 1, 0
            due_by_steps = tc.save_every and state.step % tc.save_every == 0
            if (due_by_steps or save_due or signalled) and state.step < run.total_steps:
                path = run.save_checkpoint()
                last_save = time.perf_counter()
                if signalled:
                    bar.close()
                    signum = stop.signum or signal.SIGTERM  # another process may have been the one signalled
                    raise Interrupted(
                        f"stopped by {signal.Signals(signum).name} at step {state.step}; "
                        f"saved {path} (continue with --resume)",
                        signum,
                    )
            if late:
                log.info("time limit of %.1f minutes reached at step %d", tc.max_minutes, state.step)
                run.total_steps = state.step
        bar.close()
        train_seconds = time.perf_counter() - started
        if phases.enabled:
            log.info(
                "where the step time went: %s",
                ", ".join(f"{phase} {share:.0%}" for phase, share in phases.shares().items()),
            )
        # The run may have just been evaluated (early stopping): that evaluation is the last one.
        if not (state.step > 0 and state.evaluated_step == state.step):
            last_metrics = run.evaluate()
            if last_metrics:
                metrics_log.write({"step": state.step, "event": "eval", "model": "last", **last_metrics})
                track_evaluation(state, last_metrics, metric, mode, None, None, lambda: None)
        run.save_checkpoint()
        final_dir = run.save_final()
    summary = _summary(run, final_dir, train_seconds, tokens_seen, baselines, mode, phases)
    summary["padding_share"] = 1 - tokens_seen / slots_seen if slots_seen else 0.0
    if main:
        _measure_the_end(run, summary, baselines, metrics_log, metric, mode)
        summary["plots"] = [str(p) for p in plot_run(out)]
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@dataclass
class StepOutcome:
    loss: float  # mean of the step's micro-batch losses, over all processes
    tokens: int  # non-padding tokens of the step, all processes together
    slots: int  # the same with the padding
    diverged: bool  # a loss or gradient was NaN/inf on some process: no update was made
    own_loss: float  # this process's loss (nan or inf when it was the one that diverged)
    flags: list[bool]  # the caller's flags, true when true on any process


def train_step(run: Run, micro: list[dict], phases: StepPhases, flags: list[bool]) -> StepOutcome:
    """One optimizer step over the micro-batches `micro` (host batches): forward and backward for each (the
    gradients synchronised between processes on the last only), clipping, one small exchange that keeps the
    processes in agreement (the mean loss, whether any diverged, and `flags`: signalled, out of time, ...),
    then the update, unless any process saw a NaN or infinite loss or gradient."""
    model, device, scaler, cluster = run.model, run.cluster.device, run.scaler, run.cluster
    # The loss stays on the device until the step's one exchange below: no host sync per micro-batch.
    step_loss, step_tokens, step_slots = torch.zeros((), device=device), 0, 0
    phases.start()
    for i, host_batch in enumerate(micro):
        step_tokens += int(host_batch["attention_mask"].sum())  # counted on the host: no sync
        step_slots += host_batch["attention_mask"].numel()  # with the padding
        batch = {k: to_device(v, device) for k, v in host_batch.items()}
        phases.mark("data")
        with cluster.no_sync(model, sync=i == len(micro) - 1), run.autocast():
            loss = run.loss_fn(model, batch)
            phases.mark("forward")
            scaler.scale(loss / len(micro)).backward()
            phases.mark("backward")
        step_loss += loss.detach().float()
    scaler.unscale_(run.optimizer)
    max_norm = run.config.train.max_grad_norm
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm) if max_norm else None
    # fp16: an infinite gradient is the loss scaler's business (it skips the step, lowers the scale).
    finite = torch.isfinite(step_loss)
    if grad_norm is not None and not scaler.is_enabled():
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor, reduced over the shards
            grad_norm = grad_norm.full_tensor()
        finite = finite & torch.isfinite(grad_norm)
    loss_sum, tokens, slots, not_finite, *agreed = cluster.agree(
        [torch.where(finite, step_loss, 0.0), step_tokens, step_slots, ~finite, *flags]
    )
    phases.mark("other")  # clipping, the exchange between processes
    if not not_finite:
        scaler.step(run.optimizer)
        scaler.update()
        run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    phases.mark("optimizer")
    own = float(step_loss)
    return StepOutcome(
        float(loss_sum) / cluster.world / len(micro),
        int(tokens),
        int(slots),
        bool(not_finite),
        own if not math.isfinite(own) else float("nan"),
        [bool(flag) for flag in agreed],
    )


def _steps(run: Run) -> Iterator[tuple[list[dict], int]]:
    """Each step's micro-batches (collated, this process's share) and its epoch's length in micro-batches, from
    where the run stands to its end: epoch after epoch, a resumed one from its saved position. The loop
    moves the position on (and to the next epoch at an epoch's end)."""
    tc, state = run.config.train, run.state
    workers = tc.num_workers
    if workers and run.objective.random_collate:  # its draws come from the checkpointed RNG of this process
        log.info(
            "collating on the training thread: %s batches draw random numbers (train.num_workers ignored, so "
            "that resume stays exact)",
            run.objective.name,
        )
        workers = 0
    while state.step < run.total_steps and not state.stopped_early:
        usable = run.epoch_order(state.epoch)
        if state.batches_done_in_epoch >= len(usable):  # never spin on an epoch that has nothing left
            state.epoch, state.batches_done_in_epoch = state.epoch + 1, 0
            continue
        epoch, start = state.epoch, state.batches_done_in_epoch
        stream = host_batches(
            run.train_set,
            run.collate,
            [run.cluster.shard(b, tc.batch_size) for b in usable[start:]],
            workers,
            run.cluster.device.type == "cuda",
        )
        for first in range(start, len(usable), tc.grad_accum):
            if state.step >= run.total_steps or state.stopped_early or state.epoch != epoch:
                break
            yield [next(stream) for _ in usable[first : first + tc.grad_accum]], len(usable)


class _Window:
    """The training loss and throughput since the last metrics.jsonl line."""

    def __init__(self):
        self.loss, self.micro, self.tokens, self.slots, self.start = 0.0, 0, 0, 0, time.perf_counter()

    def add(self, loss: float, micro: int, tokens: int, slots: int) -> None:
        self.loss += loss * micro
        self.micro += micro
        self.tokens += tokens
        self.slots += slots

    def record(self, state, lr: float) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.start
        record = {
            "step": state.step,
            "event": "train",
            "epoch": state.epoch,
            "train_loss": self.loss / max(self.micro, 1),
            "lr": lr,
            "tokens_per_s": self.tokens / max(elapsed, 1e-9),
            "padding": 1 - self.tokens / max(self.slots, 1),  # the share of computed positions that were padding
        }
        self.__init__()
        return record


def _measure_the_start(run: Run, metrics_log, budget_started: float) -> dict:
    """Before the first step of a fresh run: the baselines (e.g. classification's majority class and TF-IDF),
    the base model on validation and on general text, then the measured choices (learning rate, steps).
    Returns the baselines (a resumed run has them in its metrics.jsonl already, and needs them not again)."""
    state, main = run.state, run.cluster.main
    baselines = (
        run.objective.baselines(run.train_set, run.val_set, run.prepared.stats.get("labels") or []) if main else {}
    )
    if state.step > 0:
        return baselines
    for name, baseline in baselines.items():
        metrics_log.write({"step": 0, "event": "baseline", "model": name, **baseline.metrics})
    began = time.perf_counter()
    state.base_metrics = run.evaluate()
    eval_seconds = time.perf_counter() - began
    state.last_metrics = dict(state.base_metrics)
    metrics_log.write({"step": 0, "event": "eval", "model": "base", **state.base_metrics})
    reference = reference_split(run)
    if reference is not None:
        state.base_reference = reference_metrics(run, run.cluster.unwrap(run.model), run.prepared.tokenizer, reference)
        metrics_log.write({"step": 0, "event": "reference", "model": "base", **state.base_reference})
    measured_settings(run, eval_seconds, budget_started, metrics_log, train_step)
    return baselines


def _measure_the_end(run: Run, summary: dict, baselines: dict, metrics_log, metric: str, mode: str) -> None:
    """After the final model is saved (main process): a baseline that beat it kept as a model of its own, and
    final/ on the general text the base was scored on."""
    summary["baseline_model"] = keep_better_baseline(run.out, baselines, summary["final"], metric, mode)
    if run.state.base_reference:
        tuned = tuned_reference_metrics(run, summary["final_model"], reference_split(run))
        metrics_log.write({"step": run.state.step, "event": "reference", "model": "final", **tuned})
        summary["reference"] = {"base": run.state.base_reference, "final": tuned}


def _announce(run: Run) -> None:
    """What is about to happen, and the plan's likely problems, before the first step."""
    cluster, tc, device = run.cluster, run.config.train, run.cluster.device
    log.info(
        "training %s on %s (%s), %d steps, %d train / %d validation samples",
        run.objective.name,
        f"{cluster.world} x {device.type} ({cluster.strategy})" if cluster.active else device,
        run.precision,
        run.total_steps,
        len(run.train_set),
        len(run.val_set),
    )
    log.info(
        "global batch: %d = %d per device x %d device(s) x %d accumulation step(s)",
        run.global_batch * tc.grad_accum,
        tc.batch_size,
        cluster.world,
        tc.grad_accum,
    )
    if len(run.val_set) == 0:
        log.warning(
            "warning: no validation split (the corpus is too small for data.val_fraction %.2f, or it is "
            "0): held-out metrics cannot be tracked, and final/ is the last model",
            run.config.data.val_fraction,
        )
    if cluster.main:
        for warning in plan_warnings(
            run.config,
            run.model,
            run.prepared.stats.get("train tokens") or 0,
            len(run.train_set),
            run.total_steps,
            validated=len(run.val_set) > 0,
        ):
            log.warning("warning: %s", warning)


def _summary(
    run: Run, final_dir: Path, train_seconds: float, tokens_seen: int, baselines: dict, mode: str, phases: StepPhases
) -> dict[str, Any]:
    tc, state = run.config.train, run.state
    kept_best = tc.keep == "best" and state.best_step is not None
    return {
        "run": str(run.out),
        "final_model": str(final_dir),
        "steps": state.step,
        "precision": run.precision,
        "planned_steps": state.planned_steps,
        "train_seconds": train_seconds,
        "train_tokens": tokens_seen,
        "keep": tc.keep,
        "processes": run.cluster.world,
        "global_batch": run.global_batch * tc.grad_accum,
        "parameters": run.parameters,
        "baselines": {name: b.metrics for name, b in baselines.items()},
        "base": state.base_metrics,
        "final": state.best_metrics if kept_best else state.last_metrics,
        "best": state.best_metrics,
        "best_step": state.best_step,
        "last": state.last_metrics,
        "selection_metric": selection_metric(run.config),
        "selection_mode": mode,
        "lr": tc.lr,
        "beats_base": beats_base(state, selection_metric(run.config), mode),
        "plots": [],
        "stopped_early": state.stopped_early,
        "step_phases": phases.shares(),
        "data": {k: v for k, v in run.prepared.stats.items() if not isinstance(v, dict)},
    }
