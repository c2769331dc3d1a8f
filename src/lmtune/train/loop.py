"""The training loop: plain PyTorch, readable top to bottom.

prepare data -> build model -> AdamW + schedule -> (resume) -> evaluate the base -> steps with gradient
accumulation, clipping, bf16 autocast -> periodic log / eval / checkpoint / early stop -> final model."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmtune.config import RunConfig, save_config
from lmtune.data.prepare import Prepared, prepare
from lmtune.errors import LmtuneError
from lmtune.tasks import get_task
from lmtune.train import checkpoint

log = logging.getLogger("lmtune")


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_done_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    best_metric: float | None = None
    evals_without_improvement: int = 0
    base_metrics: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def cpu_has_bf16() -> bool:
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def autocast_for(precision: str, device: torch.device):
    """A no-argument factory of autocast contexts. Weights stay fp32; matmuls run in bf16 where fast."""
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_has_bf16() else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext, "fp32"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return (lambda: torch.autocast(device.type, dtype=dtype)), precision


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: RunConfig, prepared: Prepared):
    from lmtune.models.load import load_model

    labels = prepared.stats.get("labels")
    name = config.model.init_from or config.model.name
    model = load_model(config.objective, name, prepared.tokenizer, dropout=config.model.dropout, labels=labels,
                       mlm_head_init=config.model.mlm_head_init, seed=config.train.seed, impl=config.model.impl)
    if config.model.lora is not None:
        from lmtune.models.lora import apply_lora

        model = apply_lora(model, config.model.lora, config.objective)
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


def epoch_batches(task, dataset, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Index lists of one epoch's micro-batches; a fixed function of (seed, epoch) so resume is exact."""
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    order_fn = getattr(task, "batch_order", None)
    if order_fn is not None:
        return order_fn(dataset, batch_size, generator)
    order = torch.randperm(len(dataset), generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def rows(dataset, indices: list[int]) -> list[dict[str, Any]]:
    columns = dataset[indices]
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


class MetricsLog:
    """metrics.jsonl in the run folder: one JSON object per log or evaluation event."""

    def __init__(self, path: Path, truncate_after_step: int | None = None):
        self.path = path
        if truncate_after_step is not None and path.exists():  # resume: drop events after the checkpoint
            kept = [line for line in path.read_text().splitlines() if json.loads(line).get("step", 0) <= truncate_after_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


def _improved(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


def train(config: RunConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the recipe; returns a summary (base and final metrics, paths)."""
    tc = config.train
    out = Path(config.output_dir)
    if out.exists() and not resume and checkpoint.latest(out) is not None:
        raise LmtuneError(f"{out} already holds a run; pass --resume to continue it or choose another output_dir")
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    torch.set_num_threads(tc.threads or os.cpu_count() or 1)
    set_seed(tc.seed)
    device = pick_device()
    autocast, precision = autocast_for(tc.precision, device)

    task = get_task(config.objective)
    prepared = prepare(config, out / "data")
    tokenizer, train_set, val_set = prepared.tokenizer, prepared.dataset["train"], prepared.dataset.get("validation", [])
    model = build_model(config, prepared).to(device)
    optimizer = make_optimizer(model, config, device)
    batches_per_epoch = math.ceil(len(train_set) / tc.batch_size)
    steps_per_epoch = max(1, batches_per_epoch // tc.grad_accum)
    total_steps = tc.max_steps or max(1, math.ceil(tc.epochs * steps_per_epoch))
    scheduler = make_scheduler(optimizer, config, total_steps)
    collate = task.make_collator(tokenizer, config, train=True)
    loss_fn = task.make_loss(config, train_set) if hasattr(task, "make_loss") else task.loss
    mode = "min" if any(word in tc.early_stopping_metric for word in ("loss", "perplexity")) else "max"

    state = TrainState()
    last = checkpoint.latest(out) if resume else None
    if resume and last is None:
        log.info("no checkpoint in %s; starting from the beginning", out)
    if last is not None:
        state = TrainState(**checkpoint.load_training_state(last, model, optimizer, scheduler, device))
        log.info("resumed from %s (step %d)", last, state.step)
    metrics_log = MetricsLog(out / "metrics.jsonl", truncate_after_step=state.step if last else 0)

    def run_eval() -> dict[str, float]:
        if len(val_set) == 0:
            return {}
        metrics = task.evaluate(model, val_set, tokenizer, config, autocast, batch_size=tc.batch_size,
                                max_batches=tc.eval_max_batches)
        model.train()
        return metrics

    log.info("training %s on %s (%s), %d steps, %d train / %d validation samples", config.objective, device,
             precision, total_steps, len(train_set), len(val_set))
    if state.step == 0:
        state.base_metrics = run_eval()
        state.last_metrics = dict(state.base_metrics)
        metrics_log.write({"step": 0, "event": "eval", "model": "base", **state.base_metrics})

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=state.step, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    model.train()
    started = time.perf_counter()
    tokens_seen = 0  # non-padding tokens trained on in this process
    deadline = started + tc.max_minutes * 60 if tc.max_minutes else math.inf
    window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
    window_micro = 0
    try:
        while state.step < total_steps and not state.stopped_early:
            batches = epoch_batches(task, train_set, tc.batch_size, tc.seed, state.epoch)
            usable = len(batches) - len(batches) % tc.grad_accum or len(batches)
            while state.batches_done_in_epoch < usable and state.step < total_steps and not state.stopped_early:
                micro = batches[state.batches_done_in_epoch : state.batches_done_in_epoch + tc.grad_accum]
                for indices in micro:
                    batch = {k: v.to(device) for k, v in collate(rows(train_set, indices)).items()}
                    with autocast():
                        loss = loss_fn(model, batch, state)
                    (loss / len(micro)).backward()
                    window_loss += float(loss.detach())
                    window_micro += 1
                    window_tokens += int(batch["attention_mask"].sum())
                    tokens_seen += int(batch["attention_mask"].sum())
                if tc.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
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

                if tc.eval_every and state.step % tc.eval_every == 0 and state.step < total_steps:
                    _evaluate_and_track(state, run_eval(), tc, mode, metrics_log)
                    if state.stopped_early:
                        log.info("early stopping at step %d: no improvement in %s for %d evaluations",
                                 state.step, tc.early_stopping_metric, state.evals_without_improvement)
                if tc.save_every and state.step % tc.save_every == 0 and state.step < total_steps:
                    checkpoint.save(out, model, tokenizer, optimizer, scheduler, asdict(state))
                if time.perf_counter() > deadline:
                    log.info("time limit of %.1f minutes reached at step %d", tc.max_minutes, state.step)
                    total_steps = state.step
            if state.batches_done_in_epoch >= usable:
                state.epoch += 1
                state.batches_done_in_epoch = 0
    except KeyboardInterrupt:
        bar.close()
        path = checkpoint.save(out, model, tokenizer, optimizer, scheduler, asdict(state))
        raise LmtuneError(f"interrupted at step {state.step}; saved {path} (continue with --resume)") from None
    bar.close()
    train_seconds = time.perf_counter() - started

    final = run_eval()
    if final:
        state.last_metrics = final
        metrics_log.write({"step": state.step, "event": "eval", "model": "final", **final})
    checkpoint.save(out, model, tokenizer, optimizer, scheduler, asdict(state))
    final_dir = checkpoint.save_final(out, model, tokenizer)
    if hasattr(task, "metadata"):  # e.g. SFT task prefixes and template, for `lmtune generate --task`
        (final_dir / task.METADATA_FILE).write_text(json.dumps(task.metadata(prepared), indent=2))
    from lmtune.train.plots import plot_run

    plots = plot_run(out)
    summary = {"run": str(out), "final_model": str(final_dir), "steps": state.step, "precision": precision,
               "train_seconds": train_seconds, "train_tokens": tokens_seen,
               "base": state.base_metrics, "final": state.last_metrics, "plots": [str(p) for p in plots],
               "stopped_early": state.stopped_early, "data": {k: v for k, v in prepared.stats.items()
                                                              if not isinstance(v, dict)}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _evaluate_and_track(state: TrainState, metrics: dict[str, float], tc, mode: str, metrics_log) -> None:
    if not metrics:
        return
    state.last_metrics = metrics
    metrics_log.write({"step": state.step, "event": "eval", "model": "tuned", **metrics})
    value = metrics.get(tc.early_stopping_metric)
    if value is None:
        return
    if _improved(value, state.best_metric, mode):
        state.best_metric = value
        state.evals_without_improvement = 0
    else:
        state.evals_without_improvement += 1
        if tc.early_stopping_patience is not None and state.evals_without_improvement >= tc.early_stopping_patience:
            state.stopped_early = True
