"""The bench's pieces run and report what they claim (no timing assertions: those live in the bench)."""

import torch

from lmtune.bench.machine import peak_matmul, train_flops_per_token
from lmtune.bench.report import to_markdown
from lmtune.bench.worker import run_worker


def test_peak_and_flops_are_positive():
    assert peak_matmul(torch.float32, n=256, seconds=0.05) > 0
    from lmtune.models.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=100, n_positions=32, n_layer=2, n_head=2, n_embd=16))
    params = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "wpe" not in n)
    assert train_flops_per_token(model, 32) == 6 * params + 12 * 2 * 32 * 16


def test_data_prep_in_the_markdown():
    from lmtune.bench.data_prep import measure_data_prep

    result = {
        "mode": "quick",
        "cpu": "x",
        "threads": 2,
        "torch": torch.__version__,
        "data_prep": measure_data_prep(0.2, tokenizer="gpt2-bpe"),
    }
    table = to_markdown(result)
    assert "| **end to end** |" in table and "of the tokenizer's own speed" in table


def test_a_contender_runs_in_its_own_process():
    outcome = run_worker("lmtune_causal", model_name="gpt-tiny", seq=32, batch=4, seconds=1)
    assert "error" not in outcome, outcome
    assert outcome["steps"] >= 1 and outcome["effective_tokens_per_s"] > 0 and outcome["peak_rss_mb"] > 50
    phases = outcome["step_phases"]  # the profile breakdown: every phase measured, shares summing to 1
    assert set(phases) == {"data", "forward", "backward", "optimizer", "other"} and all(v > 0 for v in phases.values())
    assert abs(sum(phases.values()) - 1) < 1e-6


def test_device_throughput_section_on_cpu():
    from lmtune.bench.device import bench_device, device_markdown

    result = bench_device("cpu", quick=True)
    row = result["rows"][0]
    assert result["peak_gflops"] > 0 and row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1
    assert "MFU" in device_markdown(result)


def test_the_tuned_trainer_contenders_run():
    """The tuned HF Trainer (packed blocks, bf16 where fast, fused AdamW; dynamic padding for classification)."""
    causal = run_worker("tuned_causal", model_name="gpt-tiny", seq=32, batch=4, seconds=1)
    assert "error" not in causal, causal
    assert causal["steps"] >= 1 and causal["padding_fraction"] == 0.0 and causal["val_loss"] > 0
    classifier = run_worker("tuned_classifier", seconds=1, seq=64, batch=8)
    assert "error" not in classifier, classifier
    assert classifier["steps"] >= 1 and 0 <= classifier["val_accuracy"] <= 1


def test_markdown_has_a_column_per_contender():
    sides = {
        name: {"effective_tokens_per_s": speed, "steps": 3, "val_loss": 4.0}
        for name, speed in (("seed", 10.0), ("tuned", 50.0), ("lmtune", 100.0))
    }
    from lmtune.bench.report import with_ratio

    result = {"mode": "quick", "cpu": "x", "threads": 2, "torch": torch.__version__, "clm": with_ratio(sides)}
    assert result["clm"]["ratio_vs_seed"] == 10.0 and result["clm"]["ratio_vs_tuned"] == 2.0
    table = to_markdown(result)
    assert "| effective tokens/s | 10.0 | 50.0 | 100.0 | 10.00 | 2.00 |" in table


def test_serving_section_drives_a_real_server(tiny_clm_run):
    """Both servers start, serve every streamed request, and the report shows the ratio (no timing claims)."""
    from lmtune.bench.serving import bench_serving

    result = bench_serving(tiny_clm_run, clients=3, rounds=1, new_tokens=4)
    for side in ("one_at_a_time", "batched"):
        assert result[side]["requests"] == 3 and result[side]["tokens_per_s"] > 0
        assert 0 < result[side]["first_token_p50_s"] <= result[side]["p50_s"]
    table = to_markdown({"mode": "quick", "cpu": "x", "threads": 2, "torch": torch.__version__, "serve": result})
    assert "continuous batching" in table and f"{result['ratio']:.2f}" in table


def test_generation_section_measures_each_weight_format_with_its_quality_gate(tiny_clm_run):
    from lmtune.bench.inference import bench_generation

    result = bench_generation(tiny_clm_run, new_tokens=4, prompts=2)
    # bf16 and int8 always on a CPU, and the default `auto` picks here (measured: fp32 where bf16 is slow)
    assert set(result["formats"]) == {"bf16", "int8", result["weights"]}
    for row in result["formats"].values():
        assert row["batch 1"]["lmtune_tokens_per_s"] > 0 and row["batch 8"]["hf_generate_tokens_per_s"] > 0
        assert 0 <= row["quality"]["greedy_agreement"] <= 1 and row["quality"]["prompts"] == 2
    table = to_markdown({"mode": "quick", "cpu": "x", "threads": 2, "torch": torch.__version__, "generate": result})
    assert "| int8 | batch 1 |" in table and "| bf16 | batch 8 |" in table and "| int8 | batch 1, streamed |" in table
    assert table.count("| met |") + table.count("| NOT met |") == len(result["formats"])
