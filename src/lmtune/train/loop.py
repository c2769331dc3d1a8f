"""The training loop: plain PyTorch, readable top to bottom.

prepare data -> build model -> AdamW + schedule -> (resume) -> evaluate the base -> steps with gradient
accumulation, clipping, bf16 autocast -> periodic log / eval / checkpoint / early stop -> final model."""
from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator
import os
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lmtune.config import RunConfig, data_inputs, save_config
from lmtune.data.prepare import Prepared
from lmtune.errors import Interrupted, LmtuneError
from lmtune.hardware import keep_freed_memory
from lmtune.models.load import check_block_size, load_model
from lmtune.models.lora import apply_lora
from lmtune.locks import own_folder
from lmtune.outputs import RUN_ENTRIES, check_output_dir, remove_own, run_has_model
from lmtune.tasks import get_objective, ignored_keys
from lmtune.train import checkpoint
from lmtune.train.data import prepare_data
from lmtune.train.profile import StepPhases
from lmtune.train.distributed import Cluster
from lmtune.train.plots import plot_run
from lmtune.train.precision import autocast_for
from lmtune.train.tracking import Tracker, check_trackers, close_trackers, log_artifacts, log_record, open_trackers

log = logging.getLogger("lmtune")


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_done_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    best_metric: float | None = None  # of train.early_stopping_metric, over the tuned model's evaluations
    best_step: int | None = None  # its step; the model of that step is in best/
    best_metrics: dict[str, float] = field(default_factory=dict)
    evaluated_step: int = 0  # step of the latest evaluation
    evals_without_improvement: int = 0
    base_metrics: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    plan: dict[str, int] = field(default_factory=dict)  # how the data was cut into steps (a resume must agree)


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: RunConfig, prepared: Prepared):
    labels = prepared.stats.get("labels")
    name = config.model.init_from or config.model.name
    quantized: dict[str, Any] = {}
    if config.model.quantize is not None:  # QLoRA: the base is loaded in 4 bits straight onto the training device
        if config.train.distributed == "fsdp":
            raise LmtuneError(f"model.quantize {config.model.quantize} (QLoRA) does not work with train.distributed "
                              "fsdp (4-bit weights cannot be sharded here); use ddp (the default), where each "
                              "process holds the whole 4-bit base")
        # the device the loop trains on (under torchrun the process's own GPU, set before this)
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        precision = autocast_for(config.train.precision, device)[1]
        compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        quantized = {"quantize": config.model.quantize, "compute_dtype": compute_dtype, "device": device}
    model = load_model(config.objective, name, prepared.tokenizer, dropout=config.model.dropout, labels=labels,
                       mlm_head_init=config.model.mlm_head_init, seed=config.train.seed, impl=config.model.impl,
                       **quantized)
    if config.model.lora is not None:
        model = apply_lora(model, config.model.lora, get_objective(config.objective))
    if config.model.freeze_encoder:
        # Train only what sits on top of the encoder (BERT's pooler and the classifier): a linear probe.
        for name_, param in model.base_model.named_parameters():
            param.requires_grad = "pooler" in name_
    return model


def make_optimizer(model, config: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    # No weight decay on biases and norm weights (1-D tensors), as in GPT-2/BERT training.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel is several times faster than the default foreach one on CPU too.
    return torch.optim.AdamW(groups, lr=config.train.lr, fused=device.type in ("cpu", "cuda"))


def make_scheduler(optimizer, config: RunConfig, total_steps: int):
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[config.train.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=config.train.warmup_steps, num_training_steps=total_steps)


def epoch_batches(objective, dataset, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Index lists of one epoch's micro-batches; a fixed function of (seed, epoch) so resume is exact."""
    return objective.batch_order(dataset, batch_size, torch.Generator().manual_seed(seed * 1000 + epoch))


def rows(dataset, indices: list[int]) -> list[dict[str, Any]]:
    columns = dataset[indices]
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


class _Rows(torch.utils.data.Dataset):
    """The training split as a DataLoader reads it: one `rows` call per batch (`__getitems__`)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        return rows(self.dataset, indices)


def host_batches(dataset, collate, index_lists: list[list[int]], workers: int, pin: bool) -> Iterator[dict]:
    """The collated batches of `index_lists`, in order. workers 0: collated on the training thread when
    asked for (exactly where the loop used to collate, so random draws keep their order); else by
    DataLoader worker processes, ahead of the step that needs them."""
    if workers == 0:
        return (collate(rows(dataset, indices)) for indices in index_lists)
    return iter(torch.utils.data.DataLoader(_Rows(dataset), batch_sampler=index_lists, collate_fn=collate,
                                            num_workers=workers, pin_memory=pin, prefetch_factor=2))


class MetricsLog:
    """metrics.jsonl in the run folder: one JSON object per log or evaluation event, each also sent to the
    experiment trackers (train.report_to)."""

    def __init__(self, path: Path, keep_until_step: int | None = None, trackers: list[Tracker] | None = None):
        """`keep_until_step`: resume; events after the checkpoint go, and so does a line torn by a kill.
        None: a fresh run starts a fresh file."""
        self.path = path
        self.trackers = trackers if trackers is not None else []
        if keep_until_step is None:
            path.unlink(missing_ok=True)
        elif path.exists():
            kept, torn = [], 0
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    torn += 1
                    continue
                if isinstance(record, dict) and record.get("step", 0) <= keep_until_step:
                    kept.append(line)
            if torn:
                log.info("metrics.jsonl: dropped %d unreadable line(s) (a write cut off by a kill)", torn)
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        log_record(self.trackers, record)


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM during training: finish the current step, save a checkpoint, exit.
    Handled at step boundaries, so the checkpoint equals a periodic one and resume is exact; a second
    signal never interrupts the save; a third aborts at once (the last complete checkpoint stays)."""

    def __init__(self):
        self.signum: int | None = None
        self.count = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            # Stopping on a signal: the process is on its way out, and a late second Ctrl-C must not
            # turn the clean exit (status 130/143, resume line) into a traceback or a kill.
            signal.signal(signum, signal.SIG_IGN if self.signum is not None else handler)

    def _handle(self, signum, frame) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
            sys.stderr.write(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then "
                             "stopping (press Ctrl-C twice more to abort without saving)\n")
        elif self.count >= 3:
            raise KeyboardInterrupt
        else:
            sys.stderr.write("still saving the checkpoint; press Ctrl-C once more to abort without it\n")


def _improved(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


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
            raise LmtuneError(f"cannot resume {out} with other settings: {'; '.join(conflicts)}. Resume with the "
                              f"run's own settings (lmtune train {out / 'config.yaml'} --resume), or start a new "
                              "run (--overwrite, or another --output-dir)")
    elif run_has_model(out):
        if not overwrite:
            raise LmtuneError(f"{out} already holds a run; pass --resume to continue it, --overwrite to replace "
                              "it, or choose another output_dir")
        log.info("replacing the run in %s (--overwrite)", out.resolve())
        remove_own(out, RUN_ENTRIES)


# What defines a run's data and steps: a resume must not change them (the saved position in the epoch,
# the batches and the optimizer state would no longer fit). Steps, epochs and the time budget may grow.
RESUME_KEYS = ("objective", "model.name", "model.init_from", "model.impl", "model.lora", "model.quantize",
               "tokenizer", "data", "train.grad_accum", "train.seed", "tasks", "sft")


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
        changed += [f"{name} {old_flat.get(name)!r} -> {new_flat.get(name)!r}"
                    for name in dict.fromkeys([*old_flat, *new_flat]) if old_flat.get(name) != new_flat.get(name)]
    return changed


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
                held.enter_context(own_folder(out, "run", "train",
                                              keep=lambda: (out / "metrics.jsonl").exists() or run_has_model(out)))
                claim_run_dir(config, resume, overwrite)
            cluster.barrier()
            return _train_tracked(config, out, resume, progress, cluster)
    except BaseException as err:
        if cluster.lost_a_peer(err):
            raise LmtuneError("lost contact with another training process (it crashed or was killed); "
                              "the last checkpoint is kept: continue with --resume") from None
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


class _NoLog:
    def write(self, record: dict[str, Any]) -> None:
        pass


def thread_count(threads: int | None, world: int) -> int:
    """CPU threads per process: train.threads, but never more than the cores (more only slows every op)."""
    cores = os.cpu_count() or 1
    if threads is not None and threads > cores:
        log.warning("warning: train.threads %d is more than the %d CPU cores here (it would run many times "
                    "slower); using %d", threads, cores, cores)
        threads = cores
    return threads or max(1, cores // world)


def _train(config: RunConfig, out: Path, resume: bool, progress: bool, cluster: Cluster,
           trackers: list[Tracker]) -> dict[str, Any]:
    tc = config.train
    torch.set_num_threads(thread_count(tc.threads, cluster.world))
    set_seed(tc.seed)
    device = cluster.device
    if device.type == "cpu":
        keep_freed_memory()  # every step re-allocates the same large tensors: reuse their pages
    autocast, precision = autocast_for(tc.precision, device)
    main = cluster.main

    objective = get_objective(config.objective)
    if main:
        for warning in ignored_keys(config):
            log.warning("warning: %s", warning)
    if not main:  # the main process prepares (and caches) the data; the others read what it wrote
        cluster.barrier()
    prepared = prepare_data(config, out / "data", quiet=not main)
    if main:
        cluster.barrier()
    tokenizer, train_set, val_set = prepared.tokenizer, prepared.dataset["train"], prepared.dataset.get("validation", [])
    model = build_model(config, prepared).to(device)
    last = None
    if resume:
        if main:
            checkpoint.clean_leftovers(out)
        last = checkpoint.latest(out)
        if last is None:
            log.info("no checkpoint in %s; starting from the beginning", out)
        elif not checkpoint.is_sharded(last):
            checkpoint.load_weights(model, last)  # before sharding: every process loads the whole model
        # A sharded (FSDP, DCP) checkpoint's weights are read with its optimizer state, below: into this
        # process's shards, whatever the number of processes that wrote them.
    model = cluster.wrap(model, tc.activation_checkpointing, tc.cpu_offload)
    parameters = {"total": sum(p.numel() for p in model.parameters()),
                  "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    optimizer = make_optimizer(model, config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # fp16 needs loss scaling; bf16 not
    if tc.compile:
        model = torch.compile(model)
    global_batch = tc.batch_size * cluster.world
    batches_per_epoch = (len(train_set) // global_batch) if cluster.active else math.ceil(len(train_set) / global_batch)
    if batches_per_epoch == 0:
        raise LmtuneError(f"{len(train_set)} training samples do not fill one global batch of {global_batch} "
                          f"({cluster.world} processes x train.batch_size {tc.batch_size}); lower train.batch_size")
    steps_per_epoch = max(1, batches_per_epoch // tc.grad_accum)
    total_steps = tc.max_steps or max(1, math.ceil(tc.epochs * steps_per_epoch))
    scheduler = make_scheduler(optimizer, config, total_steps)
    collate = objective.make_collator(tokenizer, config)
    loss_fn = objective.make_loss(config, train_set)
    mode = objective.metric_mode(tc.early_stopping_metric)
    eval_every = _eval_interval(tc.eval_every, total_steps)
    patience = (4 if len(val_set) else None) if tc.early_stopping_patience == "auto" else tc.early_stopping_patience

    def save_checkpoint() -> Path:
        """FSDP: every process writes its own shard (DCP), the main one the rest. Otherwise the main process
        writes it all. The others wait until the checkpoint is in place."""
        path = out / "checkpoints" / f"step-{state.step}"
        if cluster.sharded:
            path = checkpoint.save_sharded(out, cluster, cluster.unwrap(model), tokenizer, optimizer, scheduler,
                                           asdict(state), keep=tc.keep_checkpoints)
        elif main:
            path = checkpoint.save(out, cluster.unwrap(model), tokenizer, optimizer, scheduler, asdict(state),
                                   keep=tc.keep_checkpoints)
        cluster.barrier()
        return path

    def save_best() -> None:
        model_state = cluster.full_state_dict(model)
        if main:
            checkpoint.save_model(out / "best", cluster.unwrap(model), tokenizer, model_state)
        cluster.barrier()

    plan = {"global_batch": global_batch, "grad_accum": tc.grad_accum, "train_samples": len(train_set)}
    state = TrainState(plan=plan)
    if last is not None:
        saved = checkpoint.load_trainer_state(last, optimizer, scheduler,
                                              lambda state_dict: cluster.load_optimizer_state(model, optimizer, state_dict),
                                              model=cluster.unwrap(model))
        state = TrainState(**saved)
        _check_plan(state.plan, plan, last)
        state.plan = plan
        log.info("resuming from %s (step %d of %d)", last, state.step, total_steps)
    if main:
        save_config(config, out / "config.yaml")  # after the resume checks: a refused resume keeps the run's own
    metrics_log = (MetricsLog(out / "metrics.jsonl", keep_until_step=state.step if last else None, trackers=trackers)
                   if main else _NoLog())

    def run_eval() -> dict[str, float]:
        # Every process evaluates the whole validation split with the same weights (FSDP needs them all
        # in the forward pass), so every process takes the same early-stopping and best-model decisions.
        if len(val_set) == 0:
            return {}
        metrics = objective.evaluate(cluster.unwrap(model), val_set, tokenizer, config, autocast,
                                     batch_size=tc.batch_size, max_batches=tc.eval_max_batches)
        model.train()
        return metrics

    log.info("training %s on %s (%s), %d steps, %d train / %d validation samples", config.objective,
             f"{cluster.world} x {device.type} ({cluster.strategy})" if cluster.active else device, precision,
             total_steps, len(train_set), len(val_set))
    log.info("global batch: %d = %d per device x %d device(s) x %d accumulation step(s)",
             global_batch * tc.grad_accum, tc.batch_size, cluster.world, tc.grad_accum)
    if len(val_set) == 0:
        log.warning("warning: no validation split (the corpus is too small for data.val_fraction %.2f, or it is "
                    "0): held-out metrics cannot be tracked, and final/ is the last model", config.data.val_fraction)
    if main:
        for warning in plan_warnings(config, model, prepared.stats.get("train tokens") or 0, len(train_set),
                                     total_steps):
            log.warning("warning: %s", warning)
    # e.g. classification: the majority class and TF-IDF + logistic regression on the same split
    baselines = objective.baselines(train_set, val_set, prepared.stats.get("labels") or []) if main else {}
    if state.step == 0:
        for name, metrics in baselines.items():
            metrics_log.write({"step": 0, "event": "baseline", "model": name, **metrics})
        state.base_metrics = run_eval()
        state.last_metrics = dict(state.base_metrics)
        metrics_log.write({"step": 0, "event": "eval", "model": "base", **state.base_metrics})

    bar = tqdm(total=total_steps, initial=state.step, desc="train", unit="step", disable=not (progress and main),
               dynamic_ncols=True)
    model.train()
    started = time.perf_counter()
    last_save = started
    tokens_seen = 0  # non-padding tokens trained on, all processes together
    deadline = started + tc.max_minutes * 60 if tc.max_minutes else math.inf
    window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
    window_micro = 0
    first_step = state.step
    phases = StepPhases(tc.profile, device)
    workers = tc.num_workers
    if workers and objective.random_collate:  # its draws come from the checkpointed RNG of this process
        log.info("collating on the training thread: %s batches draw random numbers (train.num_workers ignored, so "
                 "that resume stays exact)", objective.name)
        workers = 0
    with StopSignals() as stop:
        while state.step < total_steps and not state.stopped_early:
            batches = epoch_batches(objective, train_set, global_batch, tc.seed, state.epoch)
            if cluster.active:  # every process needs a full share: a short last batch is left out
                batches = [b for b in batches if len(b) == global_batch]
            usable = len(batches) - len(batches) % tc.grad_accum or len(batches)
            if not usable:
                raise LmtuneError(f"no full batch of {global_batch} in the training split; lower train.batch_size")
            if state.batches_done_in_epoch >= usable:  # never spin on an epoch that has nothing left
                state.epoch, state.batches_done_in_epoch = state.epoch + 1, 0
                continue
            # This process's share of the rest of the epoch (all of it, unless resumed mid-epoch), collated in order.
            stream = host_batches(train_set, collate, [cluster.shard(b, tc.batch_size)
                                                       for b in batches[state.batches_done_in_epoch:usable]],
                                  workers, device.type == "cuda")
            while state.batches_done_in_epoch < usable and state.step < total_steps and not state.stopped_early:
                micro = batches[state.batches_done_in_epoch : state.batches_done_in_epoch + tc.grad_accum]
                # The loss stays on the device until the step's one exchange below: no host sync per micro-batch.
                step_loss, step_tokens = torch.zeros((), device=device), 0
                step_started = time.perf_counter()
                phases.start()
                for i, _ in enumerate(micro):
                    host_batch = next(stream)
                    step_tokens += int(host_batch["attention_mask"].sum())  # counted on the host: no sync
                    batch = {k: _to_device(v, device) for k, v in host_batch.items()}
                    phases.mark("data")
                    with cluster.no_sync(model, sync=i == len(micro) - 1), autocast():
                        loss = loss_fn(model, batch)
                        phases.mark("forward")
                        scaler.scale(loss / len(micro)).backward()
                        phases.mark("backward")
                    step_loss += loss.detach().float()
                scaler.unscale_(optimizer)
                grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
                             if tc.max_grad_norm else None)
                # fp16: an infinite gradient is the loss scaler's business (it skips the step, lowers the scale).
                finite = torch.isfinite(step_loss)
                if grad_norm is not None and not scaler.is_enabled():
                    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor, reduced over the shards
                        grad_norm = grad_norm.full_tensor()
                    finite = finite & torch.isfinite(grad_norm)
                # One small exchange a step (the step's only host sync) keeps the processes in agreement:
                # the mean loss, whether any diverged, was signalled, or ran out of time.
                now = time.perf_counter()
                save_due = bool(tc.save_every_minutes) and now - last_save >= (tc.save_every_minutes or 0) * 60
                loss_sum, tokens, not_finite, signalled, late, save_due = cluster.agree(
                    [torch.where(finite, step_loss, 0.0), step_tokens, ~finite, stop.signum is not None,
                     now > deadline, save_due])
                if not_finite:
                    bar.close()
                    own_loss = float(step_loss)  # nan (or inf), unless another process was the one that diverged
                    raise LmtuneError(_divergence_message(state.step + 1, own_loss if not math.isfinite(own_loss)
                                                          else float("nan"), tc.lr, checkpoint.latest(out)))
                window_loss += loss_sum / cluster.world
                window_micro += len(micro)
                window_tokens += int(tokens)
                tokens_seen += int(tokens)
                phases.mark("other")  # clipping, the exchange between processes
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if tc.compile and state.step == first_step:
                    log.info("torch.compile: the first step took %.1f s (compiling)", time.perf_counter() - step_started)
                optimizer.zero_grad(set_to_none=True)
                phases.mark("optimizer")
                state.step += 1
                state.batches_done_in_epoch += len(micro)
                bar.update(1)

                if state.step % tc.log_every == 0 or state.step == total_steps:
                    elapsed = time.perf_counter() - window_start
                    record = {"step": state.step, "event": "train", "epoch": state.epoch,
                              "train_loss": window_loss / max(window_micro, 1), "lr": scheduler.get_last_lr()[0],
                              "tokens_per_s": window_tokens / max(elapsed, 1e-9)}
                    metrics_log.write(record)
                    bar.set_postfix(loss=f"{record['train_loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                    window_loss, window_tokens, window_micro, window_start = 0.0, 0, 0, time.perf_counter()

                if eval_every and state.step % eval_every == 0 and state.step < total_steps:
                    _evaluate_and_track(state, run_eval(), tc.early_stopping_metric, mode, patience, metrics_log,
                                        save_best)
                    if state.stopped_early:
                        log.info("early stopping at step %d: no improvement in %s for %d evaluations",
                                 state.step, tc.early_stopping_metric, state.evals_without_improvement)
                if state.batches_done_in_epoch >= usable:  # the epoch's end belongs to this step's state
                    state.epoch += 1
                    state.batches_done_in_epoch = 0
                due_by_steps = tc.save_every and state.step % tc.save_every == 0
                if (due_by_steps or save_due or signalled) and state.step < total_steps:
                    path = save_checkpoint()
                    last_save = time.perf_counter()
                    if signalled:
                        bar.close()
                        signum = stop.signum or signal.SIGTERM  # another process may have been the one signalled
                        raise Interrupted(f"stopped by {signal.Signals(signum).name} at step {state.step}; "
                                          f"saved {path} (continue with --resume)", signum)
                if late:
                    log.info("time limit of %.1f minutes reached at step %d", tc.max_minutes, state.step)
                    total_steps = state.step
                if state.batches_done_in_epoch == 0:
                    break  # a new epoch: recompute its batch order
        bar.close()
        train_seconds = time.perf_counter() - started
        if phases.enabled:
            log.info("where the step time went: %s", ", ".join(f"{phase} {share:.0%}"
                                                               for phase, share in phases.shares().items()))

        # The run may have just been evaluated (early stopping): that evaluation is the last one.
        evaluated_now = state.step > 0 and state.evaluated_step == state.step
        last_metrics = state.last_metrics if evaluated_now else run_eval()
        if last_metrics and not evaluated_now:
            metrics_log.write({"step": state.step, "event": "eval", "model": "last", **last_metrics})
            _evaluate_and_track(state, last_metrics, tc.early_stopping_metric, mode, None, None, lambda: None)
        save_checkpoint()
        model_state = cluster.full_state_dict(model)
        final_dir = out / "final"
        if main:
            final_model = cluster.unwrap(model)
            if model_state is not None and checkpoint.is_peft(final_model):
                # FSDP + LoRA: sharded adapters can be neither saved alone nor merged in place; an unsharded
                # copy takes the gathered weights and is saved and merged as in a one-process run.
                final_model = build_model(config, prepared)
                final_model.load_state_dict(model_state)
                model_state = None
            final_dir = _save_final_model(out, final_model, tokenizer, state, tc.keep, model_state)
            objective.save_metadata(final_dir, prepared)  # e.g. SFT task prefixes, for `lmtune generate --task`
        cluster.barrier()
    kept_best = tc.keep == "best" and state.best_step is not None
    summary = {"run": str(out), "final_model": str(final_dir), "steps": state.step, "precision": precision,
               "train_seconds": train_seconds, "train_tokens": tokens_seen, "keep": tc.keep,
               "processes": cluster.world, "global_batch": global_batch * tc.grad_accum, "parameters": parameters,
               "baselines": baselines, "base": state.base_metrics,
               "final": state.best_metrics if kept_best else state.last_metrics,
               "best": state.best_metrics, "best_step": state.best_step, "last": state.last_metrics,
               "selection_metric": tc.early_stopping_metric, "selection_mode": mode,
               "beats_base": _beats_base(state, tc.early_stopping_metric, mode), "plots": [],
               "stopped_early": state.stopped_early, "step_phases": phases.shares(),
               "data": {k: v for k, v in prepared.stats.items() if not isinstance(v, dict)}}
    if main:
        summary["plots"] = [str(p) for p in plot_run(out)]
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _check_plan(saved: dict[str, int], now: dict[str, int], checkpoint_dir: Path) -> None:
    """A checkpoint continues only with the batches it was cut into: the same global batch (per-process batch
    x processes: the number of processes may change), accumulation and training samples."""
    names = {"global_batch": "global batch (train.batch_size x processes)", "grad_accum": "train.grad_accum",
             "train_samples": "training samples (the data)"}
    changed = [f"{names[key]} {saved[key]} -> {now[key]}" for key in names
               if key in saved and saved[key] != now[key]]
    if changed:
        raise LmtuneError(f"cannot resume from {checkpoint_dir}: {'; '.join(changed)}. Resume with the settings the "
                          "run was started with (per-process batch x processes unchanged), or start a new run "
                          "(--overwrite, or another --output-dir)")


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Pinned host memory and a non-blocking copy on GPUs: the copy overlaps the previous step's work."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def _divergence_message(step: int, loss: float, lr: float, last: Path | None) -> str:
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved before it"
    lower = lr / 10 if lr / 10 <= 1e-3 else 1e-4  # a sensible value, not a tenth of an absurd one
    return (f"training diverged at step {step}: the loss is {loss} (the learning rate {lr:g} is likely too high; "
            f"try --train.lr {lower:g}); {kept}; no final model was written")


def _evaluate_and_track(state: TrainState, metrics: dict[str, float], metric: str, mode: str,
                        patience: int | None, metrics_log: MetricsLog | None, save_best) -> None:
    """Record an evaluation of the tuned model; on a new best, keep that model (best/); count patience."""
    if not metrics:
        return
    state.last_metrics, state.evaluated_step = metrics, state.step
    if metrics_log is not None:
        metrics_log.write({"step": state.step, "event": "eval", "model": "tuned", **metrics})
    value = metrics.get(metric)
    if value is None:
        return
    if _improved(value, state.best_metric, mode):
        state.best_metric, state.best_step, state.best_metrics = value, state.step, dict(metrics)
        state.evals_without_improvement = 0
        save_best()
    else:
        state.evals_without_improvement += 1
        if patience is not None and state.evals_without_improvement >= patience:
            state.stopped_early = True


def _eval_interval(setting: int | str, total_steps: int) -> int:
    """'auto': about 15 evaluations per run (at least every step of a very short one)."""
    if setting == "auto":
        return max(1, math.ceil(total_steps / 15))
    return int(setting)


def _save_final_model(out: Path, model, tokenizer, state: TrainState, keep: str, model_state=None) -> Path:
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
            final_dir = checkpoint.promote(best_dir, out / "final")
        log.info("final/ holds the best model (step %d); the last one (step %d) is in last/",
                 state.best_step, state.step)
        return final_dir
    final_dir = checkpoint.save_final(out, model, tokenizer, model_state=model_state)
    if state.best_step == state.step or keep == "last" and state.best_step is None:
        shutil.rmtree(best_dir, ignore_errors=True)  # the same model as final/
    return final_dir


def _beats_base(state: TrainState, metric: str, mode: str) -> bool | None:
    base = state.base_metrics.get(metric)
    if base is None or state.best_metric is None:
        return None
    return _improved(state.best_metric, base, mode)


def setting_warnings(config: RunConfig, samples: int, total_steps: int) -> list[str]:
    """Settings that are legal but almost surely a mistake, said once before training."""
    tc, warnings = config.train, []
    if tc.warmup_steps >= total_steps > 1:
        warnings.append(f"train.warmup_steps {tc.warmup_steps} is not below the run's {total_steps} steps: the "
                        f"learning rate never reaches train.lr; try --train.warmup_steps {max(0, total_steps // 10)}")
    if tc.batch_size > samples:
        warnings.append(f"train.batch_size {tc.batch_size} is more than the {samples} training samples: every step "
                        f"takes all of them (a batch of {samples})")
    if tc.lr >= 0.1:
        warnings.append(f"train.lr {tc.lr:g} is far above what AdamW trains with (1e-5 to 1e-3): the run will "
                        "likely diverge")
    elif tc.lr == 0:
        warnings.append("train.lr 0: the weights will not change")
    return warnings


def plan_warnings(config: RunConfig, model, tokens: int, samples: int, total_steps: int) -> list[str]:
    """Before training: plans that usually end in a model worse than the base, with what to do instead."""
    warnings = setting_warnings(config, samples, total_steps)
    if tokens and tokens < config.data.block_size:
        warnings.append(f"the corpus has only {tokens:,} training tokens, less than one block of "
                        f"{config.data.block_size}: add text (there is too little to learn from or to hold out)")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    epochs = total_steps * min(config.train.batch_size, samples) * config.train.grad_accum / max(1, samples)
    if tokens and trainable > 10_000 * tokens and config.model.lora is None:
        warnings.append(f"a full fine-tune of {trainable / 1e6:.0f}M parameters on only {tokens:,} training tokens "
                        "tends to overfit at once; consider LoRA (--model.lora.r 8) or more text")
    if tokens and tokens < 50_000 and epochs > 3:
        warnings.append(f"{epochs:.0f} epochs over only {tokens:,} training tokens will likely overfit; try "
                        f"--train.epochs 2 and a lower --train.lr {config.train.lr / 3:.1e} (the best model is "
                        "kept either way)")
    return warnings
