"""`lmtune export`: a trained model as a folder other tools load, with a model card.

- `hf` (default): a Hugging Face folder (safetensors, tokenizer, generation config, label names) that
  plain `transformers.pipeline(...)` loads; LoRA runs export the merged model (or, `merge=False`, the
  adapter alone).
- `onnx` (encoders: fill-mask, classification): `model.onnx` through PyTorch's own exporter, checked
  against PyTorch with ONNX Runtime before it is published.
- `gguf` (causal models): llama.cpp's own `convert_hf_to_gguf.py` (export/gguf.py finds it).

The folder appears only when complete (written beside it, then renamed), and only where lmtune may
write: a new or empty folder, or an earlier export with `overwrite`."""

from __future__ import annotations

import functools
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import transformers
import yaml

from lmtune.errors import LmtuneError
from lmtune.export.card import model_card
from lmtune.export.gguf import export_gguf, find_converter
from lmtune.export.onnx import export_onnx
from lmtune.hardware import default_device
from lmtune.locks import folder_lock
from lmtune.models.load import check_weight_files, load_model
from lmtune.models.qlora import merge_lora
from lmtune.models.resolve import ALIASES, resolve
from lmtune.outputs import (
    MARKER,
    TRAINER_STATE,
    check_output_dir,
    is_lmtune_dir,
    marker_kind,
    publish_dir,
)
from lmtune.tasks import Objective, classical, objective_of, serving_objective

log = logging.getLogger("lmtune")
FORMATS = ("hf", "onnx", "gguf")
# lmtune's own bookkeeping, not part of a model folder others load (lmtune_tasks.json stays: it tells
# `lmtune generate --task` how a multi-task model was prompted).
_NOT_EXPORTED = {"trainer_state.pt", "optimizer.pt", "scheduler.pt", "lmtune_native.json", MARKER}


@dataclass
class ExportSource:
    """What `lmtune export` was pointed at."""

    name: str  # as the user gave it
    model_dir: Path  # a Hugging Face model folder, or a LoRA adapter folder
    run_dir: Path | None  # the run it came from: its recipe and results go into the card
    adapter: bool  # model_dir is a LoRA adapter (peft), not a whole model

    @functools.cached_property
    def recipe(self) -> dict:
        path = self.run_dir / "config.yaml" if self.run_dir else None
        return yaml.safe_load(path.read_text()) or {} if path and path.exists() else {}

    @functools.cached_property
    def summary(self) -> dict:
        path = self.run_dir / "summary.json" if self.run_dir else None
        try:
            return json.loads(path.read_text()) if path and path.exists() else {}
        except ValueError:
            return {}


def find_source(name: str, merge: bool = True) -> ExportSource:
    """A run folder (its final/ model; with `merge=False` and LoRA, its adapter), a model or adapter
    folder, a checkpoint, or an alias."""
    path = Path(name).expanduser()
    if name in ALIASES or not path.exists():
        return ExportSource(name, Path(resolve(name).path), None, False)  # an alias (or a clear error)
    if (
        path.name.endswith((".tmp", ".old"))
        or path.parent.name == "checkpoints"
        and not (path / TRAINER_STATE).exists()
    ):
        raise LmtuneError(
            f"{path} is an unfinished checkpoint (a save cut off by a stop or a crash), not a model; "
            f"export the run folder or a complete checkpoint ({path.parent}/step-N)"
        )
    if (path / "config.yaml").exists() and not (path / "config.json").exists():  # a run folder
        if not merge and (path / "adapter" / "adapter_config.json").exists():
            return ExportSource(name, path / "adapter", path, True)
        if (path / "final" / "config.json").exists():
            return ExportSource(name, path / "final", path, False)
        raise LmtuneError(
            f"{path} is a run without a final model (still training, or interrupted); export one "
            f"of its checkpoints ({path}/checkpoints/step-N) or resume it first"
        )
    run_dir = next(
        (p for p in (path.parent, path.parent.parent) if (p / "config.yaml").exists() and is_lmtune_dir(p)), None
    )  # final/, best/, last/, adapter/ or checkpoints/step-N
    if (path / "adapter_config.json").exists():
        return ExportSource(name, path, run_dir, True)
    if (path / "config.json").exists():
        return ExportSource(name, path, run_dir, False)
    raise LmtuneError(
        f"{path} is neither a run folder, a model folder (config.json) nor a LoRA adapter (adapter_config.json)"
    )


def export_model(
    name: str,
    out: str | Path,
    format: str = "hf",
    merge: bool = True,
    overwrite: bool = False,
    gguf_type: str = "f16",
    converter: str | None = None,
    push_to_hub: str | None = None,
) -> Path:
    """Export `name` (see `find_source`) into the folder `out`; returns it."""
    if format not in FORMATS:
        raise LmtuneError(f"unknown export format '{format}' (choose from {', '.join(FORMATS)})")
    source = find_source(name, merge)
    out = check_output_dir(out, inputs=[source.model_dir] + ([source.run_dir] if source.run_dir else []), kind="export")
    if out.exists() and marker_kind(out) == "export" and not overwrite:
        raise LmtuneError(f"{out} holds an earlier export; pass --overwrite to replace it")
    objective = _objective(source)
    if format not in objective.export_formats:
        kind = {"onnx": "encoders (fill-mask, classification)", "gguf": "causal language models"}.get(format, format)
        raise LmtuneError(
            f"{format.upper()} export is for {kind}; this is a {objective.name} model: use --format "
            f"{' or '.join(f for f in objective.export_formats if f != format)}"
        )
    if format == "gguf":
        converter_path = find_converter(converter)  # before any work: a missing converter is a one-line error
    if source.adapter and not merge and format != "hf":
        raise LmtuneError("an adapter alone cannot be converted; export the merged model (leave out --no-merge)")
    check_weight_files(source.model_dir)  # a truncated or corrupt weights file: one line, before any work
    if classical.is_classical(source.model_dir) and format != "hf":
        raise LmtuneError(
            f"{source.model_dir} is a classical (scikit-learn) model: it exports as its folder, --format hf"
        )

    def write(folder: Path) -> None:
        model_files = folder if format == "hf" else Path(tempfile.mkdtemp(prefix=".hf-", dir=folder.parent))
        try:
            _write_hf(source, objective, model_files, merge)
            _check_loads(model_files, objective, source)
            extra: dict = {"classical": classical.is_classical(model_files)}
            if format == "onnx":
                extra = export_onnx(model_files, objective, folder)
            elif format == "gguf":
                extra = export_gguf(model_files, folder, converter_path, gguf_type, _gguf_name(source))
        finally:
            if model_files != folder:
                shutil.rmtree(model_files, ignore_errors=True)
        (folder / "README.md").write_text(model_card(source, objective, format, extra))
        (folder / MARKER).write_text(
            json.dumps(
                {"kind": "export", "note": "made by lmtune export; lmtune may replace this folder with --overwrite"}
            )
            + "\n"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    # One export into a folder at a time; the lock sits beside it, as publish_dir's working copy does.
    with folder_lock(out, "export", lock_file=out.parent / f".{out.name}.lmtune-lock"):
        if out.exists() and marker_kind(out) == "export" and not overwrite:  # one published while we waited
            raise LmtuneError(f"{out} holds an earlier export; pass --overwrite to replace it")
        publish_dir(out, write)
    if push_to_hub:
        _push(out, push_to_hub)
    return out


def _objective(source: ExportSource) -> Objective:
    """What the exported model is for: the run's objective (an SFT model serves as a causal LM)."""
    recipe_objective = source.recipe.get("objective")
    if recipe_objective:
        return serving_objective(recipe_objective)
    if source.adapter:
        raise LmtuneError(f"{source.model_dir} is an adapter outside a run folder; export it from its run")

    return objective_of(transformers.AutoConfig.from_pretrained(source.model_dir))


def _write_hf(source: ExportSource, objective: Objective, folder: Path, merge: bool) -> None:
    """The Hugging Face folder: files copied as saved (a whole model, or an adapter with `merge=False`),
    or an adapter folded into its base model."""
    if not (source.adapter and merge):
        _copy_model_files(source.model_dir, folder)
        return
    from peft import PeftModel

    model = source.recipe.get("model") or {}
    tokenizer = transformers.AutoTokenizer.from_pretrained(source.model_dir)
    # A QLoRA run's adapter was trained on the 4-bit base: it is merged into that base, dequantized, as
    # final/ is (so the export computes what the run evaluated), not into the original weights.
    quantize = model.get("quantize")
    device = default_device() if quantize else "cpu"
    base = load_model(
        objective,
        model.get("init_from") or model.get("name"),
        tokenizer,
        labels=_labels(source),
        quantize=quantize,
        device=device,
    )
    merged = merge_lora(PeftModel.from_pretrained(base, source.model_dir))
    merged.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _check_loads(folder: Path, objective: Objective, source: ExportSource) -> None:
    """What is about to be published loads as the model it claims to be (an adapter: its weights read)."""
    check_weight_files(folder)
    if source.adapter and not (folder / "config.json").exists():
        return
    if classical.is_classical(folder):
        classical.ClassicalClassifier(folder)  # its pipeline loads
        return
    try:
        getattr(transformers, objective.auto_class).from_pretrained(folder)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise LmtuneError(
            f"{source.model_dir} does not load as a {objective.name} model ({first}); nothing was exported"
        ) from None


def _labels(source: ExportSource) -> list[str] | None:
    """A classifier's label names, as the run recorded them (None for other objectives)."""
    stats = source.run_dir / "data" / "stats.json" if source.run_dir else None
    if stats and stats.exists():
        try:
            return json.loads(stats.read_text()).get("labels") or None
        except ValueError:
            pass
    return (source.summary.get("data") or {}).get("labels") or None


def _copy_model_files(source: Path, folder: Path) -> None:
    for item in sorted(source.iterdir()):
        if item.name in _NOT_EXPORTED or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, folder / item.name)
        else:
            shutil.copy2(item, folder / item.name)


def _gguf_name(source: ExportSource) -> str:
    base = source.run_dir.name if source.run_dir else Path(source.name).name
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in base) or "model"


def _push(folder: Path, repo: str) -> None:
    """Upload the export to the Hub (needs a login: `huggingface-cli login`). Not exercised offline."""
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, ignore_patterns=[MARKER])
    except Exception as err:  # offline, not logged in, no permission: the export itself is done
        raise LmtuneError(f"exported to {folder}, but pushing to {repo} failed: {str(err).splitlines()[0]}") from None
    log.info("pushed %s to https://huggingface.co/%s", folder, repo)


__all__ = ["FORMATS", "ExportSource", "export_model", "find_source"]
