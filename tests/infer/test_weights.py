"""Inference weights' number format: chosen per device by measurement, overridable, and gated on quality
by the bench (greedy agreement and perplexity against fp32)."""
import pytest
import torch

from lmtune.errors import LmtuneError
from lmtune.hardware import cpu_has_bf16
from lmtune.infer import load, weights_dtype
from lmtune.infer.generate import generate


def test_auto_follows_the_measurement_on_cpu_and_explicit_choices_win():
    cpu = torch.device("cpu")
    assert weights_dtype("auto", cpu) == (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    assert weights_dtype("fp32", cpu) == torch.float32 and weights_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(LmtuneError, match="unknown dtype"):
        weights_dtype("fp8", cpu)


def test_models_load_in_the_asked_format_and_both_generate(tiny_clm_run):
    fp32, bf16 = load(tiny_clm_run, dtype="fp32"), load(tiny_clm_run, dtype="bf16")
    assert next(fp32.model.parameters()).dtype == torch.float32
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert fp32 is not bf16  # cached apart
    for loaded in (fp32, bf16):
        assert generate(loaded, "The king", max_new_tokens=5, temperature=0)[0]


def test_the_quality_gate_compares_with_fp32(tiny_clm_run):
    from lmtune.bench.inference import weights_quality

    fp32, bf16 = load(tiny_clm_run, dtype="fp32"), load(tiny_clm_run, dtype="bf16")
    same = weights_quality(fp32, fp32, new_tokens=8, prompts=2)
    assert same["greedy_agreement"] == 1.0 and same["perplexity_change"] == 0.0
    other = weights_quality(bf16, fp32, new_tokens=8, prompts=2)
    assert 0.0 <= other["greedy_agreement"] <= 1.0 and other["prompts"] == 2
    assert abs(other["perplexity_change"]) < 0.05  # bf16 weights of a tiny GPT: close, not equal
    assert other["perplexity"] != other["perplexity_fp32"]


def test_cli_dtype_option(tiny_clm_run, cli):
    result = cli("generate", tiny_clm_run, "The king", "--max-new-tokens", "3", "--dtype", "fp32", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    bad = cli("generate", tiny_clm_run, "The king", "--dtype", "int3")
    assert bad.returncode != 0 and "unknown dtype" in bad.error_lines[0]
