"""`lmtune train --data FILE`: a recipe chosen from the corpus and the machine, no YAML needed.

The choices, and why (each can be overridden with `--section.key value`; the resolved recipe is printed with
its reasons and saved as the run's config.yaml, so the run is reproducible):
- objective: `classify` for tables with a label column, `sft` for tables with prompt and completion
  columns, else `clm`; model: SmolLM2-135M for causal objectives, MiniLM-L6 for encoders (both offline).
- a time budget (`--minutes`, default 10) instead of a fixed number of epochs: as many steps as fit (at most
  30 epochs), the schedule decaying over them, evaluated twice an epoch, the best model kept, early stopping
  after 4 evaluations without improvement (train/budget.py).
- the learning rate measured: a probe of 3 rates around the objective's usual one (5e-5 for full
  fine-tuning, 2e-4 for LoRA, 1e-4 for a small encoder's classifier), scored on validation (train/probe.py).
- LoRA (r 16) where a full fine-tune would overfit or not fit: above LORA_ABOVE parameters (~16 bytes each
  for weights, gradients and AdamW state), or above LORA_ABOVE_TOKENS parameters per token of text (the
  point where lmtune's own plan check warns that a full fine-tune overfits at once; the recipe switches at
  half that many tokens, since the count here is an estimate).
- block size: 256 tokens (128 for corpora under 20k tokens, so a validation split exists), never beyond
  the model's context; batch 8 (no accumulation) on a CPU, 16 on a GPU; classification batch 16.
The corpus size is estimated from file sizes (about 4 bytes of text per token; PDF and EPUB files hold
roughly a fifth of their size as text; compressed files expand about 3x) without reading the files.
Measurements behind these choices: docs/learning.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmtune.config import RunConfig
from lmtune.data.files import COMPRESSED, TABLE_SUFFIXES, list_folder
from lmtune.data.ingest import read_documents
from lmtune.errors import LmtuneError
from lmtune.models.resolve import PRESETS, context_length, resolve
from lmtune.paths import resolve_data_path
from lmtune.tasks import get_objective, objective_for_columns

LORA_ABOVE = 500_000_000  # parameters
LORA_ABOVE_TOKENS = 10_000  # parameters per token of text beyond which a full fine-tune overfits at once
BYTES_PER_TOKEN = 4.0


def estimate_tokens(paths: list[str]) -> int:
    total = 0.0
    for ref in paths:
        path = resolve_data_path(ref)
        files = [path] if path.is_file() else list_folder(path).files if path.is_dir() else []
        for file in files:
            suffixes = [s.lower() for s in file.suffixes]
            size = file.stat().st_size * (3 if suffixes and suffixes[-1] in COMPRESSED else 1)
            if ".pdf" in suffixes or ".epub" in suffixes:
                size /= 5
            total += size / BYTES_PER_TOKEN
    return int(total)


def _table(path: Path) -> tuple[set[str], int]:
    """Column names (first row) and row count of a table file; nothing for other files."""
    suffix = next((s.lower() for s in reversed(path.suffixes) if s.lower() not in COMPRESSED), "")
    if suffix not in TABLE_SUFFIXES or not path.is_file():
        return set(), 0
    docs = read_documents(path, text_column=None)
    return (set(docs[0].fields) if docs else set()), len(docs)


def guess_objective(paths: list[str]) -> str:
    columns, _ = _table(resolve_data_path(paths[0]))
    return objective_for_columns(columns).name


def model_parameters(name: str) -> int | None:
    """Parameter count from the model's config alone (weights are not loaded)."""

    if name in PRESETS:
        return None
    try:
        source = resolve(name)
        if source.kind != "folder":
            return None
        index = Path(source.path) / "model.safetensors.index.json"
        if index.exists():
            return int(json.loads(index.read_text())["metadata"]["total_size"]) // 4
        files = list(Path(source.path).glob("*.safetensors"))
        return sum(f.stat().st_size for f in files) // 4 if files else None  # fp32: 4 bytes each
    except (OSError, ValueError, KeyError, LmtuneError):
        return None


DEFAULT_MINUTES = 10  # `--minutes`: enough for a book-sized corpus on 2 CPU cores (docs/learning.md)


def recipe_for_data(
    data: list[str],
    model: str | None = None,
    objective: str | None = None,
    output_dir: str | None = None,
    device: str = "cpu",
    minutes: float | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The recipe (as a plain dict, before overrides) that `lmtune train --data` uses, and why, in a few lines.
    Measured rather than guessed where a measurement is cheap: the learning rate (a short probe), the steps
    (as many as the time budget fits; early stopping ends the run when validation stops improving)."""
    for ref in data:
        if not resolve_data_path(ref).exists():
            raise LmtuneError(f"file not found: {ref}")
    chosen = get_objective(objective or guess_objective(data))
    model = model or chosen.default_model
    tokens = estimate_tokens(data)
    limit = context_length(model) or 512
    block = min(limit, 128 if tokens < 20_000 else 256)
    params = model_parameters(model)
    rows = sum(_table(resolve_data_path(ref))[1] for ref in data)
    minutes = minutes or DEFAULT_MINUTES
    why = [
        f"train.max_minutes {minutes:g}: the time budget (--minutes); as many epochs as fit (at most 30), "
        "evaluated twice an epoch, the best model kept, stopped early when validation stops improving",
        "train.lr auto: a short probe of 3 learning rates on the validation split picks it (lr_probe.json)",
    ]
    lora = params is not None and (params > LORA_ABOVE or params > LORA_ABOVE_TOKENS * max(tokens, 1) / 2)
    if lora:
        why.append(
            f"model.lora (r 16): {params / 1e6:.0f}M parameters "
            + (
                "need ~16 bytes each to fine-tune in full"
                if params > LORA_ABOVE
                else f"against ~{tokens:,} tokens of text: a full fine-tune would overfit at once"
            )
            + "; LoRA trains ~1% of them"
        )
    blocks = max(1, int(0.9 * tokens / block))  # what the training split will hold, about
    train = {
        "epochs": "auto",
        "max_minutes": minutes,
        "lr": "auto",
        "batch_size": min(16 if device == "cuda" else 8, blocks),
        "warmup_steps": 0,
        "schedule": "cosine",
        **chosen.default_train_settings(rows, params),
    }
    stem = Path(str(data[0]).split(":")[-1]).name.split(".")[0] or "data"
    recipe: dict[str, Any] = {
        "objective": chosen.name,
        "output_dir": output_dir or f"runs/{stem}-{Path(model).name.replace('.gguf', '')}",
        "model": {"name": model, **({"lora": {"r": 16, "alpha": 32}} if lora else {})},
        "data": {"train": data if len(data) > 1 else data[0], "block_size": block},
        "train": train,
    }
    return recipe, why


def describe(config: RunConfig) -> str:
    """The resolved recipe as YAML, for the terminal."""
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
