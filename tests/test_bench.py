"""The bench's pieces run and report what they claim (no timing assertions: those live in the bench)."""
import torch

from lmtune.bench.inference import bench_data_prep
from lmtune.bench.machine import peak_matmul, train_flops_per_token
from lmtune.bench.report import to_markdown
from lmtune.bench.worker import run_worker


def test_peak_and_flops_are_positive():
    assert peak_matmul(torch.float32, n=256, seconds=0.05) > 0
    from lmtune.models.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=100, n_positions=32, n_layer=2, n_head=2, n_embd=16))
    params = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "wpe" not in n)
    assert train_flops_per_token(model, 32) == 6 * params + 12 * 2 * 32 * 16


def test_data_prep_and_markdown():
    result = {"mode": "quick", "cpu": "x", "threads": 2, "torch": torch.__version__,
              "data_prep": bench_data_prep(1)}
    assert result["data_prep"]["blocks"] > 50 and result["data_prep"]["mb_per_s"] > 0
    assert "MB/s" in to_markdown(result)


def test_a_contender_runs_in_its_own_process():
    outcome = run_worker("lmtune_causal", model_name="gpt-tiny", seq=32, batch=4, seconds=1)
    assert "error" not in outcome, outcome
    assert outcome["steps"] >= 1 and outcome["effective_tokens_per_s"] > 0 and outcome["peak_rss_mb"] > 50


def test_device_throughput_section_on_cpu():
    from lmtune.bench.device import bench_device, device_markdown

    result = bench_device("cpu", quick=True)
    row = result["rows"][0]
    assert result["peak_gflops"] > 0 and row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1
    assert "MFU" in device_markdown(result)
