"""Checkpoints: a Hugging Face folder (safetensors) plus `trainer_state.pt` (optimizer, scheduler, RNG,
loop position). Written to a temporary folder and renamed, so a crash never leaves a half-written one;
`trainer_state.pt` is written last, and only folders that have it count as checkpoints."""
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
from lmtune.outputs import TRAINER_STATE, checkpoint_dirs, replace_dir

log = logging.getLogger("lmtune")


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def latest(run_dir: Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def clean_leftovers(run_dir: Path) -> None:
    """Remove what an interrupted save left (`step-N.tmp`, `step-N.old`): never a checkpoint, only clutter."""
    for path in (Path(run_dir) / "checkpoints").glob("step-*"):
        if path.name.endswith((".tmp", ".old")) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def save(run_dir: Path, model, tokenizer, optimizer, scheduler, state: dict[str, Any], keep: int = 2,
         model_state: dict | None = None, optimizer_state: dict | None = None) -> Path:
    """Save `checkpoints/step-N` and keep the newest `keep`. Saving the same step twice is a no-op.
    `model_state`/`optimizer_state`: gathered full states of a sharded (FSDP) model."""
    target = Path(run_dir) / "checkpoints" / f"step-{state['step']}"
    if target in checkpoint_dirs(run_dir):
        return target

    def write(folder: Path) -> None:
        _save_pretrained(model, folder, model_state)
        tokenizer.save_pretrained(folder)
        optimizer_state_ = optimizer_state if optimizer_state is not None else optimizer.state_dict()
        torch.save({"optimizer": optimizer_state_, "scheduler": scheduler.state_dict(), "state": state,
                    "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}},
                   folder / TRAINER_STATE)

    path = replace_dir(target, write)
    for old in checkpoint_dirs(run_dir)[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_weights(model, folder: Path) -> None:
    from safetensors.torch import load_file


    check_weight_files(folder)
    if hasattr(model, "load_pretrained_weights"):  # lmtune's own GPT: HF GPT-2 layout on disk
        model.load_pretrained_weights(folder)
        return
    if _is_peft(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
        return
    state: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k or "decoder" in k}  # tied to the input embeddings
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint {folder} does not match the model: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def load_training_state(folder: Path, model, optimizer, scheduler, device=None) -> dict[str, Any]:
    """Weights, optimizer, scheduler and RNG state of a checkpoint; returns the loop's position."""
    load_weights(model, folder)
    return load_trainer_state(folder, optimizer, scheduler)


def load_trainer_state(folder: Path, optimizer, scheduler, load_optimizer=None) -> dict[str, Any]:
    """Everything but the weights. `load_optimizer(state_dict)`: how a sharded optimizer takes a full state."""
    try:
        saved = torch.load(folder / TRAINER_STATE, map_location="cpu", weights_only=False)
    except Exception as err:  # pickle/zip errors of a damaged file: name it, keep the traceback out
        raise LmtuneError(f"{folder / TRAINER_STATE}: cannot read the checkpoint ({type(err).__name__}); "
                          f"delete {folder} to resume from the one before it") from None
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

    return replace_dir(Path(folder), write)


def is_adapter(folder: Path) -> bool:
    return (Path(folder) / "adapter_config.json").exists()


def promote(source: Path, target: Path) -> Path:
    """Make the complete model folder `source` the new `target` (e.g. best/ -> final/)."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    source.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def save_final(run_dir: Path, model, tokenizer, name: str = "final", model_state: dict | None = None) -> Path:
    """`final/` (or `last/`): a plain Hugging Face folder; LoRA adapters are merged in (the adapter alone
    is kept in `adapter/` for final/)."""
    run_dir = Path(run_dir)
    if _is_peft(model):
        if name == "final":
            replace_dir(run_dir / "adapter", lambda folder: model.save_pretrained(folder))
        # last/ is written before the best adapter is loaded back: merge a copy; final/ is the end of the run.
        model = (model if name == "final" else copy.deepcopy(model)).merge_and_unload()
    return save_model(run_dir / name, model, tokenizer, model_state)
