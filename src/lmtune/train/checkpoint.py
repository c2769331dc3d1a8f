"""Checkpoints: a Hugging Face folder (safetensors) plus `trainer_state.pt` (optimizer, scheduler, RNG,
loop position). Written to a temporary folder and renamed, so a crash never leaves a half-written one;
`trainer_state.pt` is written last, and only folders that have it count as checkpoints.

Under FSDP (more than one process) a checkpoint is sharded instead: `dcp/` holds the weights and the
optimizer state as torch.distributed.checkpoint (DCP) wrote them, one file per process plus `.metadata`,
so nothing is gathered on one process; `trainer_state.pt` keeps the rest, and there is no safetensors
file (final/, best/ and last/ stay full Hugging Face folders). DCP reshards on load: such a checkpoint
resumes under FSDP with any number of processes, under DDP, and in one process."""

from __future__ import annotations

import copy
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from lmtune.errors import LmtuneError
from lmtune.models.load import check_weight_files
from lmtune.models.qlora import merge_lora
from lmtune.outputs import TRAINER_STATE, check_free_space, checkpoint_dirs, replace_dir

log = logging.getLogger("lmtune")


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def latest(run_dir: Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def clean_leftovers(run_dir: Path) -> None:
    """Remove what an interrupted save left (`step-N.tmp`, `step-N.old`): never a checkpoint, only clutter."""
    for path in (Path(run_dir) / "checkpoints").glob("step-*"):
        if path.name.endswith((".tmp", ".old")) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


SHARDS = "dcp"  # a sharded (FSDP) checkpoint's DCP folder: weights and optimizer, a file per process


def is_sharded(folder: Path) -> bool:
    return (Path(folder) / SHARDS / ".metadata").is_file()


def save(run_dir: Path, model, tokenizer, optimizer, scheduler, state: dict[str, Any], keep: int = 2) -> Path:
    """Save `checkpoints/step-N` and keep the newest `keep`. Saving the same step twice is a no-op."""
    target = Path(run_dir) / "checkpoints" / f"step-{state['step']}"
    if target in checkpoint_dirs(run_dir):
        return target
    check_free_space(target, saved_bytes(model, optimizer))  # the previous checkpoint stays either way

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        _write_trainer_state(folder, {"optimizer": optimizer.state_dict()}, scheduler, state)

    path = replace_dir(target, write)
    _rotate(run_dir, keep)
    return path


def save_sharded(
    run_dir: Path, cluster, model, tokenizer, optimizer, scheduler, state: dict[str, Any], keep: int = 2
) -> Path:
    """FSDP: `checkpoints/step-N` with the weights and optimizer state in `dcp/`, each process writing its
    own shard. Every process calls this. The main process makes the temporary folder and tells the others
    where it is; after the shards (dcp.save returns on every process only once all of them and the
    metadata are written) it adds the tokenizer and, last, `trainer_state.pt`, renames the folder into
    place and drops the oldest checkpoints, as `save` does. The caller waits for it (a barrier)."""
    target = Path(run_dir) / "checkpoints" / f"step-{state['step']}"
    if not cluster.main:
        folder = cluster.share(None)  # the main process's temporary folder; None: nothing to write
        if folder is not None:
            _save_shards(Path(folder) / SHARDS, model, optimizer)
        return target
    if target in checkpoint_dirs(run_dir):  # the same step twice: kept as it is (the main one decides)
        cluster.share(None)
        return target

    def write(folder: Path) -> None:
        cluster.share(str(folder))
        _save_shards(folder / SHARDS, model, optimizer)
        tokenizer.save_pretrained(folder)
        _write_trainer_state(folder, {"optimizer": None, "shards": SHARDS}, scheduler, state)

    path = replace_dir(target, write)
    _rotate(run_dir, keep)
    return path


def saved_bytes(model, optimizer=None) -> int:
    """About what saving `model` (and `optimizer`'s state) writes: the weights save_pretrained keeps (a LoRA
    model's adapters alone) and every optimizer tensor."""
    tensors = [p for p in model.parameters() if p.requires_grad] if is_peft(model) else model.state_dict().values()
    total = sum(t.numel() * t.element_size() for t in tensors)
    if optimizer is not None:
        total += sum(
            v.numel() * v.element_size()
            for state in optimizer.state.values()
            for v in state.values()
            if torch.is_tensor(v)
        )
    return total


def _write_trainer_state(folder: Path, optimizer: dict, scheduler, state: dict[str, Any]) -> None:
    torch.save(
        {
            **optimizer,
            "scheduler": scheduler.state_dict(),
            "state": state,
            "rng": {
                "torch": torch.get_rng_state(),
                "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
        },
        folder / TRAINER_STATE,
    )


def _rotate(run_dir: Path, keep: int) -> None:
    for old in checkpoint_dirs(run_dir)[: -max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)


def _shard_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Frozen weights (a LoRA base, a frozen encoder) never change: the model built at resume has them, as
    # a LoRA run's HF checkpoint holds the adapter alone. dcp.load already refuses a checkpoint that lacks
    # a key it is asked for, so set_state_dict need not be strict about the frozen ones left out. The
    # optimizer state stays nested (keyed by parameter name): torch 2.13's flattened form cannot load an
    # empty parameter group, which make_optimizer gives LoRA (its adapters have no 1-D weights).
    return StateDictOptions(ignore_frozen_params=True, strict=False)


def _save_shards(folder: Path, model, optimizer) -> None:
    """Every process writes its own shards of the weights and optimizer state (DTensors under FSDP)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer, options=_shard_options())
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=folder)


def load_shards(folder: Path, model, optimizer) -> None:
    """A DCP folder into `model` and `optimizer` as they are laid out here: FSDP shards with any number
    of processes (DCP reads each process's part of every tensor), or whole tensors under DDP and in one
    process. One process needs no process group: dcp.load then reads in this process alone. (That beats
    format_utils.dcp_to_torch_save, which would write a second, full copy to disk and still need the
    state_dict helpers to map it onto the model and optimizer: this is the same code for every world size.)"""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    # get_state_dict gives the tensors to read into; on a fresh optimizer it first creates its state
    # (a step with zero gradients and learning rate 0, which changes no weight).
    model_state, optimizer_state = get_state_dict(model, optimizer, options=_shard_options())
    shards = {"model": model_state, "optimizer": optimizer_state}
    try:
        with warnings.catch_warnings():  # one process: "assuming the intent is to load in a single process"
            warnings.filterwarnings("ignore", message=".*single process", category=UserWarning)
            dcp.load(shards, checkpoint_id=folder)
    except CheckpointException as err:  # a shard missing or damaged, or another model: name it in one line
        cause = next((exc for exc, _ in err.failures.values()), err)  # (exception, traceback) per process
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
        raise LmtuneError(
            f"{folder}: cannot read the sharded checkpoint ({first}); delete {folder.parent} "
            "to resume from the one before it"
        ) from None
    set_state_dict(
        model,
        optimizer,
        model_state_dict=shards["model"],
        optim_state_dict=shards["optimizer"],
        options=_shard_options(),
    )


def load_weights(model, folder: Path) -> None:
    from safetensors.torch import load_file

    check_weight_files(folder)
    if hasattr(model, "load_pretrained_weights"):  # lmtune's own GPT: HF GPT-2 layout on disk
        model.load_pretrained_weights(folder)
        return
    if is_peft(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
        return
    state: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k or "decoder" in k}  # tied to the input embeddings
    if set(missing) - tied or unexpected:
        raise RuntimeError(
            f"checkpoint {folder} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def load_trainer_state(folder: Path, optimizer, scheduler, load_optimizer=None, model=None) -> dict[str, Any]:
    """Everything but the weights of an HF-format checkpoint (`load_optimizer(state_dict)`: how a sharded
    optimizer takes a full state). A sharded (DCP) checkpoint's weights come with its optimizer state:
    they are loaded into `model` here, after the model is wrapped and the optimizer made."""
    try:
        saved = torch.load(folder / TRAINER_STATE, map_location="cpu", weights_only=False)
    except Exception as err:  # pickle/zip errors of a damaged file: name it, keep the traceback out
        raise LmtuneError(
            f"{folder / TRAINER_STATE}: cannot read the checkpoint ({type(err).__name__}); "
            f"delete {folder} to resume from the one before it"
        ) from None
    if saved.get("shards"):
        if model is None:
            raise LmtuneError(f"{folder}: a sharded checkpoint; its weights need the model to load into")
        if not is_sharded(folder):
            raise LmtuneError(
                f"{folder / saved['shards']}: the sharded weights are missing; delete {folder} to "
                "resume from the one before it"
            )
        load_shards(folder / saved["shards"], model, optimizer)
    else:
        (load_optimizer or optimizer.load_state_dict)(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"]["torch"])
    random.setstate(saved["rng"]["python"])
    if saved["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    return saved["state"]


def _save_pretrained(model, folder: Path, model_state: dict | None = None) -> None:
    if model_state is None:
        model.save_pretrained(folder)
    else:
        model.save_pretrained(folder, state_dict=model_state)


def save_model(folder: Path, model, tokenizer, model_state: dict | None = None) -> Path:
    """A model as it is now, as a Hugging Face folder (LoRA: the adapter only), replaced atomically."""

    def write(tmp: Path) -> None:
        _save_pretrained(model, tmp, model_state)
        tokenizer.save_pretrained(tmp)

    check_free_space(folder, saved_bytes(model))
    return replace_dir(Path(folder), write)


def is_adapter(folder: Path) -> bool:
    return (Path(folder) / "adapter_config.json").exists()


def save_final(run_dir: Path, model, tokenizer, name: str = "final", model_state: dict | None = None) -> Path:
    """`final/` (or `last/`): a plain Hugging Face folder; LoRA adapters are merged in (the adapter alone
    is kept in `adapter/` for final/)."""
    run_dir = Path(run_dir)
    if is_peft(model):
        if name == "final":
            save_model(run_dir / "adapter", model, tokenizer)  # the adapter with its tokenizer, as exported
        # last/ is written before the best adapter is loaded back: merge a copy; final/ is the end of the run.
        # (a QLoRA model's 4-bit base is dequantized first: final/ is a full-precision model)
        model = merge_lora(model if name == "final" else copy.deepcopy(model))
    return save_model(run_dir / name, model, tokenizer, model_state)
