"""What a run trains with, set up once before the loop: the prepared data, the model (pretrained or fresh,
LoRA or QLoRA, as the objective's own keys want it), AdamW and the learning-rate schedule, the number
format and threads, and, on --resume, where the run stands. `Run` holds them, with the few things the loop
asks of them: evaluate, save a checkpoint, keep the best model, write final/."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lmtune.config import RunConfig, save_config
from lmtune.data.prepare import Prepared
from lmtune.errors import LmtuneError
from lmtune.hardware import cpu_cores, default_device, default_threads, keep_freed_memory
from lmtune.models.load import load_model
from lmtune.models.lora import apply_lora
from lmtune.tasks import CONFIG_KEY, Objective, get_objective
from lmtune.train import checkpoint
from lmtune.train.batches import epoch_batches
from lmtune.train.data import prepare_data
from lmtune.train.distributed import Cluster
from lmtune.train.precision import autocast_for
from lmtune.train.selection import save_final_model
from lmtune.train.state import TrainState, check_plan

log = logging.getLogger("lmtune")


@dataclass
class Run:
    """One run's parts, as the loop uses them."""

    config: RunConfig
    out: Path
    cluster: Cluster
    objective: Objective
    prepared: Prepared
    model: Any  # wrapped for the processes (DDP/FSDP) and compiled when asked
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler  # fp16 needs loss scaling; bf16 and fp32 not
    autocast: Callable
    precision: str
    collate: Callable
    loss_fn: Callable
    total_steps: int
    state: TrainState
    resumed_from: Path | None
    parameters: dict[str, int]

    @property
    def train_set(self):
        return self.prepared.dataset["train"]

    @property
    def val_set(self):
        return self.prepared.dataset.get("validation", [])

    @property
    def global_batch(self) -> int:
        return self.config.train.batch_size * self.cluster.world

    def epoch_order(self, epoch: int) -> list[list[int]]:
        """The global batches `epoch` trains on (a whole number of accumulation groups): a fixed function of
        (seed, epoch), so a resume continues with exactly the batches the interrupted run would have seen."""
        tc = self.config.train
        batches = epoch_batches(self.objective, self.train_set, self.global_batch, tc.seed, epoch)
        if self.cluster.active:  # every process needs a full share: a short last batch is left out
            batches = [b for b in batches if len(b) == self.global_batch]
        usable = len(batches) - len(batches) % tc.grad_accum or len(batches)
        if not usable:
            raise LmtuneError(f"no full batch of {self.global_batch} in the training split; lower train.batch_size")
        return batches[:usable]

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.config, len(self.train_set), self.cluster)

    def evaluate(self) -> dict[str, Any]:
        """Validation metrics of the model as it is now. Every process evaluates the whole split with the same
        weights (FSDP needs them all in the forward pass), so every process takes the same decisions."""
        if len(self.val_set) == 0:
            return {}
        tc = self.config.train
        metrics = self.objective.evaluate(
            self.cluster.unwrap(self.model),
            self.val_set,
            self.prepared.tokenizer,
            self.config,
            self.autocast,
            batch_size=tc.batch_size,
            max_batches=tc.eval_max_batches,
        )
        self.model.train()
        return metrics

    def save_checkpoint(self) -> Path:
        """FSDP: every process writes its own shard (DCP), the main one the rest. Otherwise the main process
        writes it all. The others wait until the checkpoint is in place."""
        tc, cluster, unwrapped = self.config.train, self.cluster, self.cluster.unwrap(self.model)
        path = self.out / "checkpoints" / f"step-{self.state.step}"
        if cluster.sharded:
            path = checkpoint.save_sharded(
                self.out,
                cluster,
                unwrapped,
                self.prepared.tokenizer,
                self.optimizer,
                self.scheduler,
                asdict(self.state),
                keep=tc.keep_checkpoints,
            )
        elif cluster.main:
            path = checkpoint.save(
                self.out,
                unwrapped,
                self.prepared.tokenizer,
                self.optimizer,
                self.scheduler,
                asdict(self.state),
                keep=tc.keep_checkpoints,
            )
        cluster.barrier()
        return path

    def save_best(self) -> None:
        """The model as it is now into best/ (FSDP: the gathered weights)."""
        model_state = self.cluster.full_state_dict(self.model)
        if self.cluster.main:
            checkpoint.save_model(
                self.out / "best", self.cluster.unwrap(self.model), self.prepared.tokenizer, model_state
            )
        self.cluster.barrier()

    def save_final(self) -> Path:
        """final/ (the best model, or the last with train.keep: last), with what inference needs beside it."""
        model_state = self.cluster.full_state_dict(self.model)
        final_dir = self.out / "final"
        if self.cluster.main:
            final_model = self.cluster.unwrap(self.model)
            if model_state is not None and checkpoint.is_peft(final_model):
                # FSDP + LoRA: sharded adapters can be neither saved alone nor merged in place; an unsharded
                # copy takes the gathered weights and is saved and merged as in a one-process run.
                final_model = build_model(self.config, self.prepared)
                final_model.load_state_dict(model_state)
                model_state = None
            final_dir = save_final_model(
                self.out, final_model, self.prepared.tokenizer, self.state, self.config.train.keep, model_state
            )
            self.objective.save_metadata(final_dir, self.prepared)  # e.g. SFT's tasks, for `generate --task`
        self.cluster.barrier()
        return final_dir


def setup_run(config: RunConfig, out: Path, resume: bool, cluster: Cluster) -> Run:
    tc = config.train
    torch.set_num_threads(thread_count(tc.threads, cluster.world))
    set_seed(tc.seed)
    device = cluster.device
    if device.type == "cpu":
        keep_freed_memory()  # every step re-allocates the same large tensors: reuse their pages
    autocast, precision = autocast_for(tc.precision, device)
    objective = get_objective(config.objective)
    if not cluster.main:  # the main process prepares (and caches) the data; the others read what it wrote
        cluster.barrier()
    prepared = prepare_data(config, out / "data", quiet=not cluster.main)
    if cluster.main:
        cluster.barrier()
    model = build_model(config, prepared).to(device)
    last = _latest_checkpoint(out, cluster) if resume else None
    if last is not None and not checkpoint.is_sharded(last):
        checkpoint.load_weights(model, last)  # before sharding: every process loads the whole model
    # A sharded (FSDP, DCP) checkpoint's weights are read with its optimizer state, below: into this
    # process's shards, whatever the number of processes that wrote them.
    model = cluster.wrap(model, tc.activation_checkpointing, tc.cpu_offload)
    parameters = {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    optimizer = make_optimizer(model, config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if tc.compile:
        model = torch.compile(model)
    train_set = prepared.dataset["train"]
    total_steps = planned_steps(config, len(train_set), cluster)
    scheduler = make_scheduler(optimizer, config, total_steps)
    plan = {"global_batch": tc.batch_size * cluster.world, "grad_accum": tc.grad_accum, "train_samples": len(train_set)}
    state = TrainState(plan=plan)
    if last is not None:
        saved = checkpoint.load_trainer_state(
            last,
            optimizer,
            scheduler,
            lambda state_dict: cluster.load_optimizer_state(model, optimizer, state_dict),
            model=cluster.unwrap(model),
        )
        state = TrainState(**saved)
        check_plan(state.plan, plan, last)
        state.plan = plan
        if state.planned_steps and not tc.max_steps:  # planned by a time budget: the schedule decays over them
            total_steps = state.planned_steps
            rebuilt = make_scheduler(optimizer, config, total_steps)
            rebuilt.load_state_dict(scheduler.state_dict())
            scheduler = rebuilt
        if tc.lr == "auto":  # chosen by the run's probe, recorded in its config.yaml
            tc.lr = recorded_lr(out) or tc.lr
        log.info("resuming from %s (step %d of %d)", last, state.step, total_steps)
    if cluster.main:
        save_config(config, out / "config.yaml")  # after the resume checks: a refused resume keeps the run's own
    return Run(
        config,
        out,
        cluster,
        objective,
        prepared,
        model,
        optimizer,
        scheduler,
        scaler,
        autocast,
        precision,
        objective.make_collator(prepared.tokenizer, config),
        objective.make_loss(config, train_set),
        total_steps,
        state,
        last,
        parameters,
    )


def recorded_lr(out: Path) -> float | None:
    """The learning rate a run's config.yaml records (the probe's choice), if it is a number."""
    import yaml

    try:
        lr = (yaml.safe_load((out / "config.yaml").read_text()) or {}).get("train", {}).get("lr")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return float(lr) if isinstance(lr, (int, float)) else None


def _latest_checkpoint(out: Path, cluster: Cluster) -> Path | None:
    if cluster.main:
        checkpoint.clean_leftovers(out)
    last = checkpoint.latest(out)
    if last is None:
        log.info("no checkpoint in %s; starting from the beginning", out)
    return last


def steps_per_epoch(config: RunConfig, samples: int, cluster: Cluster) -> int:
    tc = config.train
    global_batch = tc.batch_size * cluster.world
    batches_per_epoch = samples // global_batch if cluster.active else math.ceil(samples / global_batch)
    if batches_per_epoch == 0:
        raise LmtuneError(
            f"{samples} training samples do not fill one global batch of {global_batch} "
            f"({cluster.world} processes x train.batch_size {tc.batch_size}); lower train.batch_size"
        )
    return max(1, batches_per_epoch // tc.grad_accum)


AUTO_EPOCHS, AUTO_MAX_EPOCHS = 3, 30  # train.epochs auto: without a time budget; the most a budget plans


def planned_steps(config: RunConfig, samples: int, cluster: Cluster) -> int:
    """Optimizer steps of the run: train.max_steps, else train.epochs over the training split (epochs auto: 3,
    or with a time budget at most 30, until the loop has measured what fits: `train/budget.py`)."""
    tc = config.train
    epochs = tc.epochs if tc.epochs != "auto" else AUTO_MAX_EPOCHS if tc.max_minutes else AUTO_EPOCHS
    return tc.max_steps or max(1, math.ceil(epochs * steps_per_epoch(config, samples, cluster)))


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def thread_count(threads: int | None, world: int) -> int:
    """CPU threads per process: train.threads, but never more than the cores (more only slows every op); by
    default each process's share of the cores (or OMP_NUM_THREADS)."""
    cores = cpu_cores()
    if threads is not None and threads > cores:
        log.warning(
            "warning: train.threads %d is more than the %d CPU cores here (it would run many times slower); using %d",
            threads,
            cores,
            cores,
        )
        threads = cores
    return threads or default_threads(world)


def build_model(config: RunConfig, prepared: Prepared):
    """The model to train: pretrained or fresh, LoRA (or QLoRA's 4-bit base) when asked, as the objective's
    own recipe keys want it; its config names the objective it is trained for (inference reads that)."""
    objective = get_objective(config.objective)
    quantized: dict[str, Any] = {}
    if config.model.quantize is not None:  # QLoRA: the base is loaded in 4 bits straight onto the training device
        if config.train.distributed == "fsdp":
            raise LmtuneError(
                f"model.quantize {config.model.quantize} (QLoRA) does not work with train.distributed "
                "fsdp (4-bit weights cannot be sharded here); use ddp (the default), where each "
                "process holds the whole 4-bit base"
            )
        # the device the loop trains on (under torchrun the process's own GPU, set before this)
        device = default_device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else None)
        precision = autocast_for(config.train.precision, device)[1]
        compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        quantized = {"quantize": config.model.quantize, "compute_dtype": compute_dtype, "device": device}
    model = load_model(
        objective,
        config.model.init_from or config.model.name,
        prepared.tokenizer,
        dropout=config.model.dropout,
        labels=prepared.stats.get("labels"),
        mlm_head_init=config.model.mlm_head_init,
        seed=config.train.seed,
        impl=config.model.impl,
        **quantized,
    )
    if hasattr(getattr(model, "config", None), "to_dict"):  # a transformers config (saved as config.json)
        setattr(model.config, CONFIG_KEY, objective.name)
    if config.model.lora is not None:
        model = apply_lora(model, config.model.lora, objective)
    return objective.prepare_model(model, config)


def make_optimizer(model, config: RunConfig, device: torch.device, lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW at `lr` (default: train.lr; `auto` until the probe has chosen: its starting point)."""
    # No weight decay on biases and norm weights (1-D tensors), as in GPT-2/BERT training.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel is several times faster than the default foreach one on CPU too.
    lr = lr if lr is not None else config.train.lr
    lr = lr if lr != "auto" else probe_centre(config, sum(p.numel() for p in model.parameters()))
    return torch.optim.AdamW(groups, lr=lr, fused=device.type in ("cpu", "cuda"))


def probe_centre(config: RunConfig, parameters: int | None) -> float:
    """The rate the learning-rate probe centres on: the objective's usual one, 2e-4 for LoRA adapters."""
    return 2e-4 if config.model.lora is not None else get_objective(config.objective).default_lr(parameters)


def make_scheduler(optimizer, config: RunConfig, total_steps: int):
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[config.train.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=config.train.warmup_steps, num_training_steps=total_steps)
