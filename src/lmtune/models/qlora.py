"""QLoRA: a pretrained base loaded in 4 bits through bitsandbytes under LoRA adapters, and the merge that
turns such a model (or any peft LoRA model) back into one plain full-precision model."""

from __future__ import annotations

import logging
import sys

import torch

from lmtune.errors import LmtuneError
from lmtune.models.resolve import ModelSource
from lmtune.tasks import Objective

log = logging.getLogger("lmtune")


def check_bitsandbytes(quantize: str, device: torch.device):
    """bitsandbytes, new enough, and able to run 4-bit layers on `device`; else one line saying what to do."""
    try:
        import bitsandbytes
        import bitsandbytes.functional as bnb_functional
    except ImportError:
        raise LmtuneError(
            f"model.quantize {quantize} (QLoRA) needs bitsandbytes, which is not installed: pip install 'lmtune[qlora]'"
        ) from None
    except Exception as err:  # installed but broken (its native library failed to load, ...)
        why = (str(err).strip().splitlines() or [""])[0]
        raise LmtuneError(
            f"model.quantize {quantize} (QLoRA): bitsandbytes failed to load ({type(err).__name__}: "
            f"{why}); reinstall it: pip install --force-reinstall 'lmtune[qlora]'"
        ) from None
    from packaging.version import Version

    try:  # what the installed transformers asks of bitsandbytes
        from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION as minimum
    except ImportError:
        minimum = "0.46.1"
    version = getattr(bitsandbytes, "__version__", "0")
    if Version(version) < Version(minimum):
        raise LmtuneError(
            f"model.quantize {quantize} (QLoRA) needs bitsandbytes {minimum} or newer (installed: "
            f"{version}): pip install -U 'lmtune[qlora]'"
        )
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
        raise LmtuneError(
            f"model.quantize {quantize}: bitsandbytes {version} cannot run 4-bit layers on "
            f"{device.type} ({why}); {needs}"
        ) from None
    return bitsandbytes


def quantized_load_kwargs(
    objective: Objective,
    name: str,
    source: ModelSource,
    quantize: str,
    compute_dtype: torch.dtype,
    device: torch.device,
) -> dict:
    """What `from_pretrained` needs to load `name` as a 4-bit base on `device` (after checking it can)."""
    from transformers import BitsAndBytesConfig

    if not objective.supports_qlora:
        raise LmtuneError(
            f"model.quantize (QLoRA) is for causal models (clm, sft); train {objective.name} with "
            "plain LoRA (leave out model.quantize)"
        )
    if source.kind == "preset":
        raise LmtuneError(
            f"model.quantize loads pretrained weights in 4 bits; {name} is a from-scratch preset "
            "(random weights): leave out model.quantize, or set model.name to a trained model"
        )
    check_bitsandbytes(quantize, device)
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantize,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=True,
    )  # QLoRA's recipe: NF4, double quantization
    # Loaded (and quantized) straight onto the training device: 4-bit weights are not moved after loading.
    return {"quantization_config": config, "device_map": {"": device}}


def prepare_quantized(model, name: str, quantize: str, compute_dtype: torch.dtype, device: torch.device):
    """A freshly loaded 4-bit base, ready for LoRA adapters: frozen, its other layers in fp32."""
    import bitsandbytes as bnb
    from peft import prepare_model_for_kbit_training

    quantized = [module for module in model.modules() if isinstance(module, bnb.nn.Linear4bit)]
    for module in quantized:
        if hasattr(module, "support_avx512bf16_for_cpu"):
            # bitsandbytes (0.50) repacks a layer's weights in place for a faster CPU kernel the first time it
            # runs in eval mode on a CPU with AVX512-BF16, and then keeps that inference-only kernel in
            # training mode too (it breaks the backward pass): evaluations in the loop would stop training.
            module.support_avx512bf16_for_cpu = False
    packed = sum(module.weight.numel() for module in quantized)  # two 4-bit weights a byte
    full = sum(p.numel() for p in model.parameters()) + packed
    log.info(
        "QLoRA: %d linear layers of %s in 4 bits (%s, bitsandbytes %s) on %s, computing in %s: weights "
        "%.0f MB (%.0f MB in fp32)",
        len(quantized),
        name,
        quantize,
        bnb.__version__,
        device,
        str(compute_dtype).removeprefix("torch."),
        model.get_memory_footprint() / 2**20,
        full * 4 / 2**20,
    )
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
                deltas = [
                    module.get_delta_weight(adapter).float()
                    for adapter in module.active_adapters
                    if adapter in module.lora_A
                ]
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
