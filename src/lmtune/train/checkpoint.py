"""Checkpoints: a Hugging Face folder (safetensors) plus `trainer_state.pt` (optimizer, scheduler, RNG,
loop position). Written to a temporary folder and renamed, so a crash never leaves a half-written one."""
from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import torch

KEEP = 1  # checkpoints kept besides `final/` (each holds optimizer state: 3x the model's size)


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def latest(run_dir: Path) -> Path | None:
    folders = [p for p in (Path(run_dir) / "checkpoints").glob("step-*") if not p.name.endswith(".tmp")]
    return max(folders, key=lambda p: int(p.name.split("-")[1]), default=None)


def _atomic_write(target: Path, write) -> Path:
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    old = target.with_name(target.name + ".old")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def save(run_dir: Path, model, tokenizer, optimizer, scheduler, state: dict[str, Any]) -> Path:
    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "state": state,
                    "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}},
                   folder / "trainer_state.pt")

    path = _atomic_write(Path(run_dir) / "checkpoints" / f"step-{state['step']}", write)
    folders = sorted((p for p in path.parent.glob("step-*") if not p.name.endswith((".tmp", ".old"))),
                     key=lambda p: int(p.name.split("-")[1]))
    for old in folders[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_weights(model, folder: Path) -> None:
    from safetensors.torch import load_file

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


def load_training_state(folder: Path, model, optimizer, scheduler, device) -> dict[str, Any]:
    load_weights(model, folder)
    saved = torch.load(folder / "trainer_state.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"]["torch"])
    random.setstate(saved["rng"]["python"])
    if saved["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    return saved["state"]


def save_final(run_dir: Path, model, tokenizer) -> Path:
    """`final/`: a plain Hugging Face folder; LoRA adapters are merged in (and also kept in `adapter/`)."""
    run_dir = Path(run_dir)
    if _is_peft(model):
        _atomic_write(run_dir / "adapter", lambda folder: model.save_pretrained(folder))
        model = model.merge_and_unload()

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return _atomic_write(run_dir / "final", write)
