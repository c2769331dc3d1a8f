"""Inference weights' number format: chosen per device by measurement, overridable, and gated on quality
by the bench (greedy agreement and perplexity against fp32)."""

import pytest
import torch

from lmtune.errors import LmtuneError
from lmtune.hardware import cpu_has_bf16
from lmtune.infer import load, weights_format
from lmtune.infer.generate import generate
from lmtune.models.int8 import Int8Linear, quantize_int8
from lmtune.tasks.clm import OBJECTIVE as CAUSAL
from lmtune.tasks.mlm import OBJECTIVE as MASKED


def test_auto_follows_the_measurement_on_cpu_and_explicit_choices_win():
    cpu = torch.device("cpu")
    assert weights_format("auto", cpu, CAUSAL) == ("int8" if cpu_has_bf16() else "fp32")
    assert weights_format("auto", cpu, MASKED) == ("bf16" if cpu_has_bf16() else "fp32")
    assert weights_format("fp32", cpu) == "fp32" and weights_format("bf16", cpu, MASKED) == "bf16"
    with pytest.raises(LmtuneError, match="unknown dtype"):
        weights_format("fp8", cpu)
    with pytest.raises(LmtuneError, match="CPUs only"):
        weights_format("int8", torch.device("cuda"))


def test_models_load_in_the_asked_format_and_all_generate(tiny_clm_run):
    fp32, bf16, int8 = (load(tiny_clm_run, dtype=d) for d in ("fp32", "bf16", "int8"))
    assert next(fp32.model.parameters()).dtype == torch.float32
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert (fp32.weights, bf16.weights, int8.weights) == ("fp32", "bf16", "int8")
    assert any(isinstance(m, Int8Linear) for m in int8.model.modules())
    assert not any(isinstance(m, torch.nn.Linear) for m in int8.model.modules())
    assert fp32 is not bf16  # cached apart
    for loaded in (fp32, bf16, int8):
        assert generate(loaded, "The king", max_new_tokens=5, temperature=0)[0]


@pytest.mark.parametrize("rows", [1, 3, 16, 17, 200])  # the int8 kernel up to 16 rows, dequantized above
def test_int8_linear_is_close_to_the_bf16_layer(rows):
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40)
    quantized = Int8Linear(linear)
    x = torch.randn(2, rows, 96)
    with torch.inference_mode():
        want, got = linear(x), quantized(x.bfloat16()).float()
    assert got.shape == want.shape == (2, rows, 40)
    assert ((got - want).norm() / want.norm()).item() < 0.02  # 8 bits per weight, bf16 activations
    with torch.inference_mode():  # rounding is per output row: a row of zeros stays exactly zero
        zero = torch.nn.Linear(96, 2, bias=False)
        zero.weight.data[0] = 0
        assert Int8Linear(zero)(torch.randn(5, 96).bfloat16())[:, 0].eq(0).all()


def test_layers_the_int8_kernel_cannot_take_keep_their_weights():
    model = torch.nn.Sequential(torch.nn.Linear(64, 24), torch.nn.ReLU(), torch.nn.Linear(24, 8))
    assert quantize_int8(model) == 1  # a width of 24 gives wrong numbers in torch's kernel: left in bf16
    assert isinstance(model[0], Int8Linear) and type(model[2]) is torch.nn.Linear
    assert model[2].weight.dtype == torch.bfloat16
    with torch.inference_mode():
        assert model(torch.randn(3, 64).bfloat16()).shape == (3, 8)


def test_the_quality_gate_compares_with_fp32(tiny_clm_run):
    from lmtune.bench.inference import weights_quality

    fp32 = load(tiny_clm_run, dtype="fp32")
    same = weights_quality(fp32, fp32, new_tokens=8, prompts=2)
    assert same["greedy_agreement"] == 1.0 and same["perplexity_change"] == 0.0
    for reduced in ("bf16", "int8"):
        other = weights_quality(load(tiny_clm_run, dtype=reduced), fp32, new_tokens=8, prompts=2)
        assert 0.0 <= other["greedy_agreement"] <= 1.0 and other["prompts"] == 2
        assert abs(other["perplexity_change"]) < 0.05  # reduced weights of a tiny GPT: close, not equal
        assert other["perplexity"] != other["perplexity_fp32"]


def test_cli_dtype_option(tiny_clm_run, cli):
    result = cli("generate", tiny_clm_run, "The king", "--max-new-tokens", "3", "--dtype", "fp32", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    bad = cli("generate", tiny_clm_run, "The king", "--dtype", "int3")
    assert bad.returncode != 0 and "unknown dtype" in bad.error_lines[0]
