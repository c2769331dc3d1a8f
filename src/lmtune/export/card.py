"""The model card (`README.md`) of an export: Hub metadata, then what the model is, how it was trained,
how it compares with its base on held-out text, and how to use it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import yaml

from lmtune.models.resolve import ALIAS_HUB_IDS, ALIASES, PRESETS
from lmtune.tasks import Objective

if TYPE_CHECKING:
    from lmtune.export import ExportSource

_USAGE = {
    "hf": """```python
from transformers import pipeline

pipe = pipeline("{tag}", model="path/to/this/folder")
print(pipe({example!r}))
```

or with lmtune: `lmtune {verb} path/to/this/folder {example!r}` / `lmtune serve path/to/this/folder`.""",
    "onnx": """```python
import onnxruntime, numpy as np
from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
session = onnxruntime.InferenceSession("path/to/this/folder/model.onnx")
enc = tokenizer([{example!r}], return_tensors="np")
logits = session.run(None, {{"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}})[0]
```""",
    "sklearn": """```python
import skops.io

path = "path/to/this/folder/model.skops"
pipeline = skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))  # after checking that list
print(pipeline.predict_proba([{example!r}]))  # columns: the label ids of config.json
```

or with lmtune: `lmtune {verb} path/to/this/folder {example!r}` / `lmtune serve path/to/this/folder`.""",
    "gguf": """```bash
llama-cli -m {gguf_file} -p {example!r} -n 64
```

or from Python with llama-cpp-python: `Llama(model_path="{gguf_file}")`.""",
}
_EXAMPLE = {
    "fill-mask": "The capital of France is [MASK].",
    "text-classification": "What a wonderful film!",
    "text-generation": "Once upon a time",
}
_VERB = {"fill-mask": "fill-mask", "text-classification": "classify", "text-generation": "generate"}


def _base_model(recipe: dict) -> tuple[str | None, str]:
    """(the Hub id for the card's metadata, how the text names the starting point)."""
    model = recipe.get("model") or {}
    name = model.get("init_from") or model.get("name")
    if not name:
        return None, "an unknown model"
    if name in PRESETS:
        return None, f"scratch (lmtune's `{name}` architecture, randomly initialised)"
    if name in ALIAS_HUB_IDS:
        return ALIAS_HUB_IDS[name], f"[{ALIAS_HUB_IDS[name]}](https://huggingface.co/{ALIAS_HUB_IDS[name]})" + (
            " (its GGUF release, dequantized)" if str(ALIASES[name][1]).endswith(".gguf") else ""
        )
    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        return name, f"[{name}](https://huggingface.co/{name})"
    return None, f"a local model (`{name}`)"


def _f(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def model_card(source: "ExportSource", objective: Objective, format: str, extra: dict) -> str:
    recipe, summary = source.recipe, source.summary
    hub_id, base_text = _base_model(recipe)
    tag = objective.pipeline_tag
    metadata = {
        "library_name": "transformers" if format == "hf" else format,
        "pipeline_tag": tag,
        "tags": ["lmtune", recipe.get("objective") or objective.name]
        + (["lora"] if (recipe.get("model") or {}).get("lora") else [])
        + ([format] if format != "hf" else []),
    }
    if hub_id:
        metadata["base_model"] = hub_id
    title = source.run_dir.name if source.run_dir else source.model_dir.name
    lines = [
        "---",
        yaml.safe_dump(metadata, sort_keys=False).strip(),
        "---",
        "",
        f"# {title}",
        "",
        f"A {tag} model fine-tuned from {base_text} with lmtune "
        f"(objective {recipe.get('objective') or objective.name}: {objective.summary}).",
        "",
    ]
    if source.adapter:
        lines += [
            "This folder holds a **LoRA adapter** only: load it on top of the base model with peft "
            "(`PeftModel.from_pretrained(base, folder)`), or export again without `--no-merge` for a whole model.",
            "",
        ]
    if format == "onnx":
        lines += [
            f"Format: ONNX (`model.onnx`), checked against PyTorch with ONNX Runtime: largest logit "
            f"difference {extra.get('onnx_max_abs_difference', float('nan')):.2g}.",
            "",
        ]
    if extra.get("classical"):
        lines += [
            "This is the run's **classical baseline** (TF-IDF + logistic regression, scikit-learn), kept "
            "because it beat the fine-tuned model on validation; saved with skops (no pickled code).",
            "",
        ]
    if format == "gguf":
        lines += [
            f"Format: GGUF (`{extra.get('gguf_file')}`, {extra.get('gguf_type')}), written by llama.cpp's "
            "`convert_hf_to_gguf.py`, for llama.cpp, llama-cpp-python, Ollama and LM Studio.",
            "",
        ]
    lines += (
        _results(summary)
        + _data(summary)
        + [
            "## How to use",
            "",
            _USAGE["sklearn" if extra.get("classical") else format].format(
                tag=tag, example=_EXAMPLE[tag], verb=_VERB[tag], gguf_file=extra.get("gguf_file", "model.gguf")
            ),
            "",
        ]
    )
    lines += [
        "## Intended use and limits",
        "",
        "This model was adapted to one user's own text: it speaks that domain, and it knows no more of "
        "the world than its base model did. Check its outputs before relying on them; it inherits the base "
        "model's biases and licence, and whatever its training text contained.",
        "",
    ]
    if recipe:
        lines += [
            "## Training recipe",
            "",
            "Saved as `recipe.yaml`, `lmtune train recipe.yaml` runs it again:",
            "",
            "```yaml",
            yaml.safe_dump(recipe, sort_keys=False).strip(),
            "```",
            "",
        ]
    return "\n".join(lines)


def _results(summary: dict) -> list[str]:
    base, best = summary.get("base") or {}, summary.get("best") or summary.get("final") or {}
    if not best:
        return []
    lines = [
        "## Results on held-out text",
        "",
        f"| metric | base model | this model (step {summary.get('best_step', '?')}) |",
        "|---|---|---|",
    ]
    lines += [
        f"| {key} | {_f(base.get(key, ''))} | {_f(value)} |"
        for key, value in best.items()
        if isinstance(value, (int, float))
    ]
    for name, metrics in (summary.get("baselines") or {}).items():
        lines += [
            f"| {key} ({name} baseline) | | {_f(value)} |"
            for key, value in metrics.items()
            if isinstance(value, (int, float))
        ]
    training = [
        f"{summary['steps']} steps" if summary.get("steps") else "",
        f"{summary['train_seconds'] / 60:.1f} minutes" if summary.get("train_seconds") else "",
        f"{summary['train_tokens']:,} training tokens" if summary.get("train_tokens") else "",
        f"precision {summary['precision']}" if summary.get("precision") else "",
    ]
    return lines + ["", "Trained for " + ", ".join(t for t in training if t) + ".", ""]


def _data(summary: dict) -> list[str]:
    stats = summary.get("data") or {}
    rows = [(key, value) for key, value in stats.items() if isinstance(value, (int, float, str))]
    if not rows:
        return []
    return ["## Training data", "", "| | |", "|---|---|"] + [f"| {key} | {_f(value)} |" for key, value in rows] + [""]
