"""Training throughput on one device (`lmtune bench --device cuda`): lmtune's own loop on the demo recipe
and on the GPT-2 124M config at sequence length 1024, in tokens/s and MFU against the device's measured
dense bf16 matmul peak (fp32 on CPUs without fast bf16). On a CPU it runs a tiny config, so the path is
tested everywhere; the GPU table is recorded in docs/performance.md when a GPU was available."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lmtune.bench.contenders import CAUSAL, HAMLET
from lmtune.bench.machine import train_flops_per_token
from lmtune.config import build_config
from lmtune.hardware import cpu_has_bf16
from lmtune.infer import load
from lmtune.train.loop import train
from lmtune.train.plots import read_metrics

CONFIGS = {  # name -> (model, sequence length, batch, steps)
    "demo (SmolLM2-135M)": ("smollm2-135m", 256, 8, 30),
    "GPT-2 124M config": ("gpt2-124m", 1024, 16, 30),
}
TINY = {"gpt-tiny (CPU check)": ("gpt-tiny", 64, 4, 6)}


def device_peak(device: torch.device, dtype: torch.dtype, n: int = 4096, seconds: float = 1.0) -> float:
    """Measured GFLOP/s of square matmuls on `device` (the roofline MFU is reported against)."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    _sync(device)
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(model: str, seq: int, batch: int, steps: int, compile_model: bool = False) -> dict[str, Any]:
    """One lmtune run of `steps` steps on Hamlet; tokens/s from its own log (after the first steps)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = build_config(
            {
                "objective": CAUSAL.name,
                "output_dir": str(Path(tmp) / "run"),
                "model": {"name": model, "dropout": 0.0},
                "tokenizer": {"name": "gpt2-bpe"} if model.startswith("gpt") else {},
                "data": {"train": HAMLET, "block_size": seq, "val_fraction": 0.02},
                "train": {
                    "batch_size": batch,
                    "max_steps": steps,
                    "eval_every": 0,
                    "log_every": 1,
                    "early_stopping_patience": None,
                    "save_every_minutes": None,
                    "compile": compile_model,
                },
                "report": {"compare_base": False},
            }
        )
        summary = train(config, progress=False)
        records = [r for r in read_metrics(Path(tmp) / "run") if r.get("event") == "train"]
        warm = records[len(records) // 3 :] or records  # leave out warm-up (and compilation)
        tokens_per_s = sum(r["tokens_per_s"] for r in warm) / len(warm)
        flops = train_flops_per_token(load(summary["final_model"]).model, seq)
        return {
            "model": model,
            "seq": seq,
            "batch": batch,
            "steps": summary["steps"],
            "precision": summary["precision"],
            "tokens_per_s": tokens_per_s,
            "flops_per_token": flops,
            "seconds": summary["train_seconds"],
        }


def bench_device(device: str = "cuda", quick: bool = False) -> dict[str, Any]:
    target = torch.device(device)
    fast_bf16 = target.type == "cuda" and torch.cuda.is_bf16_supported() or target.type == "cpu" and cpu_has_bf16()
    dtype = torch.bfloat16 if fast_bf16 else torch.float32
    name = torch.cuda.get_device_name(target) if target.type == "cuda" else "CPU"
    peak = device_peak(target, dtype, n=4096 if target.type == "cuda" else 1024)
    rows = []
    for label, (model, seq, batch, steps) in (TINY if quick or target.type != "cuda" else CONFIGS).items():
        row = throughput(model, seq, batch, steps, compile_model=target.type == "cuda")
        row["label"] = label
        row["mfu"] = row["tokens_per_s"] * row["flops_per_token"] / (peak * 1e9)
        rows.append(row)
    return {"device": name, "peak_gflops": peak, "peak_dtype": str(dtype).removeprefix("torch."), "rows": rows}


def device_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"## Training throughput on {result['device']}",
        "",
        f"Measured {result['peak_dtype']} matmul peak: {result['peak_gflops']:,.0f} GFLOP/s",
        "",
        "| config | seq x batch | precision | tokens/s | MFU | wall time |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['label']} | {r['seq']} x {r['batch']} | {r['precision']} | {r['tokens_per_s']:,.0f} | "
            f"{r['mfu']:.1%} | {r['seconds']:.1f} s for {r['steps']} steps |"
        )
    return "\n".join(lines + [""])
