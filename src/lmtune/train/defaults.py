"""`lmtune train --data FILE`: a recipe chosen from the corpus and the machine, no YAML needed.

The choices, and why (each can be overridden with `--section.key value`; the resolved recipe is printed
and saved as the run's config.yaml, so the run is reproducible):
- objective: `classify` for tables with a label column, `sft` for tables with prompt and completion
  columns, else `clm`; model: SmolLM2-135M for causal objectives, MiniLM-L6 for encoders (both offline).
- block size: 256 tokens (128 for corpora under 20k tokens, so a validation split exists), never beyond
  the model's context; batch 8 (no accumulation) on a CPU, 16 on a GPU.
- epochs: 3 under 20k tokens, 2 under 200k, else 1 (the best evaluated model is kept, and early stopping
  ends a run that stops improving); learning rate 5e-5 for full fine-tuning, 2e-4 with LoRA.
- classification: 4 epochs under 5,000 rows (else 2), batch 16, learning rate 1e-4 for small encoders
  (under 50M parameters, like MiniLM) and 3e-5 for larger ones. Measured on 1,000 Rotten Tomatoes
  snippets (3 classes, 100 held out; MiniLM-L6, 2 CPU cores): lr 2e-5 / 2 epochs / batch 8 reached 0.58
  accuracy (it predicted the majority class), below TF-IDF + logistic regression (0.72); lr 1e-4 /
  4 epochs / batch 16 reached 0.78 (macro-F1 0.82 against 0.66). Every classification report prints
  both baselines, so a user sees whether fine-tuning paid.
- LoRA (r 16) for models above LORA_ABOVE parameters: a full fine-tune of those needs ~16 bytes per
  parameter of memory (weights, gradients, AdamW state) and overfits small corpora at once.
The corpus size is estimated from file sizes (about 4 bytes of text per token; PDF and EPUB files hold
roughly a fifth of their size as text; compressed files expand about 3x) without reading the files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmtune.config import RunConfig
from lmtune.data.ingest import COMPRESSED, TABLE_SUFFIXES, list_folder, read_documents
from lmtune.errors import LmtuneError
from lmtune.models.resolve import PRESETS, context_length, resolve
from lmtune.paths import resolve_data_path
from lmtune.tasks import get_objective, objective_for_columns

LORA_ABOVE = 500_000_000  # parameters
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


def recipe_for_data(data: list[str], model: str | None = None, objective: str | None = None,
                    output_dir: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """The recipe (as a plain dict, before overrides) that `lmtune train --data` uses."""
    for ref in data:
        if not resolve_data_path(ref).exists():
            raise LmtuneError(f"file not found: {ref}")
    chosen = get_objective(objective or guess_objective(data))
    model = model or chosen.default_model
    tokens = estimate_tokens(data)
    limit = context_length(model) or 512
    block = min(limit, 128 if tokens < 20_000 else 256)
    epochs = 3 if tokens < 20_000 else 2 if tokens < 200_000 else 1
    params = model_parameters(model)
    lora = params is not None and params > LORA_ABOVE
    lr = 2e-4 if lora else 5e-5
    batch = 16 if device == "cuda" else 8
    rows = sum(_table(resolve_data_path(ref))[1] for ref in data)
    train = {"epochs": epochs, "lr": lr, "batch_size": batch, "warmup_steps": 0, "schedule": "cosine",
             **chosen.default_train_settings(rows, params)}
    if lora:
        train["lr"] = 2e-4
    stem = Path(str(data[0]).split(":")[-1]).name.split(".")[0] or "data"
    recipe: dict[str, Any] = {
        "objective": chosen.name,
        "output_dir": output_dir or f"runs/{stem}-{Path(model).name.replace('.gguf', '')}",
        "model": {"name": model, **({"lora": {"r": 16, "alpha": 32}} if lora else {})},
        "data": {"train": data if len(data) > 1 else data[0], "block_size": block},
        "train": train,
    }
    return recipe


def describe(config: RunConfig) -> str:
    """The resolved recipe as YAML, for the terminal."""
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=True), sort_keys=False)


