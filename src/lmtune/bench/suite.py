"""The bench suite: every section, side by side, in one run (`lmtune bench`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmtune.bench.contenders import CAUSAL, CLASSIFY, MASKED
from lmtune.bench.data_prep import measure_data_prep
from lmtune.bench.data_scale import SIZES_MB, measure_scaling
from lmtune.bench.device import bench_device, device_markdown
from lmtune.bench.inference import bench_fill_mask, bench_generation
from lmtune.bench.machine import cpu_name, peak_matmul
from lmtune.bench.report import to_markdown, with_ratio
from lmtune.bench.serving import bench_serving
from lmtune.bench.worker import run_worker
from lmtune.outputs import check_output_dir, claim_dir
from lmtune.tasks.chat import OBJECTIVE as CHAT

QUICK = {
    "clm_model": "gpt-tiny",
    "demo_model": None,
    "seq": 128,
    "batch": 8,
    "seconds": 10,
    "encoder_seconds": 10,
    "gen_tokens": 16,
    "gen_prompts": 3,
    "prep_mb": 2,
    "fill_calls": 10,
    "serve_rounds": 1,
    "serve_tokens": 16,
    "chat_seconds": 20,
}
FULL = {
    "clm_model": "gpt2-124m",
    "demo_model": "smollm2-135m",
    "demo_seq": 256,
    "seq": 512,
    "batch": 8,
    "seconds": 150,
    "encoder_seconds": 90,
    "gen_tokens": 64,
    "gen_prompts": 20,
    "prep_mb": 20,
    "fill_calls": 40,
    "serve_rounds": 3,
    "serve_tokens": 64,
    "chat_seconds": 150,
}


SIDES = ("seed", "tuned", "lmtune")  # the tutorial recipe, the tuned HF Trainer, lmtune
SECTIONS = (
    "peak",
    CAUSAL.name,
    MASKED.name,
    CLASSIFY.name,
    CHAT.name,
    "generate",
    "fill-mask",
    "serve",
    "data",
    "device",
)


def run(
    quick: bool = True,
    out_dir: Path | None = None,
    sections: list[str] | None = None,
    device: str | None = None,
    scale: bool = False,
) -> dict[str, Any]:
    """`device`: also measure training throughput and MFU there (the `device` section). `scale`: the data
    section also prepares 10, 100 and 1,000 MB of text, each in a fresh process (time, MB/s, peak RSS)."""
    console = Console(stderr=True)
    p = QUICK if quick else FULL
    sections = sections or [s for s in SECTIONS if s != "device" or device]
    result: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": cpu_name(),
    }
    if "peak" in sections:
        console.print("measuring peak matmul throughput ...")
        result["peak_gflops"] = {"fp32": peak_matmul(torch.float32), "bf16": peak_matmul(torch.bfloat16)}
    peak = result.get("peak_gflops", {"fp32": float("nan"), "bf16": float("nan")})
    if CAUSAL.name in sections:
        args = {"model_name": p["clm_model"], "seq": p["seq"], "batch": p["batch"], "seconds": p["seconds"]}
        console.print(
            f"causal LM training: seed recipe, tuned Trainer, lmtune, {p['seconds']} s each "
            f"({p['clm_model']}, {p['batch']}x{p['seq']}) ..."
        )
        sides = {side: run_worker(f"{side}_causal", **args) for side in SIDES}
        for side in sides.values():
            if "flops_per_token" in side:
                side["mfu_fp32"] = side["effective_tokens_per_s"] * side["flops_per_token"] / (peak["fp32"] * 1e9)
                side["mfu_bf16"] = side["effective_tokens_per_s"] * side["flops_per_token"] / (peak["bf16"] * 1e9)
        result[CAUSAL.name] = with_ratio(sides, **args)
        if p["demo_model"]:  # the demo's pretrained model too, at the demo recipe's 8x256
            args = {**args, "model_name": p["demo_model"], "seq": p["demo_seq"]}
            console.print(f"causal LM training on {p['demo_model']} ({p['batch']}x{p['demo_seq']}) ...")
            result["clm_demo"] = with_ratio({side: run_worker(f"{side}_causal", **args) for side in SIDES}, **args)
    for objective, kind in ((MASKED, "masked"), (CLASSIFY, "classifier")):
        if objective.name in sections:
            console.print(
                f"{objective.name} training: seed recipe, tuned Trainer, lmtune, {p['encoder_seconds']} s each ..."
            )
            result[objective.name] = with_ratio(
                {side: run_worker(f"{side}_{kind}", seconds=p["encoder_seconds"]) for side in SIDES}
            )
    if CHAT.name in sections:
        console.print(f"chat fine-tuning: TRL's SFTTrainer, lmtune, {p['chat_seconds']} s each (smollm2-135m) ...")
        sides = {
            "tuned": run_worker("trl_chat", seconds=p["chat_seconds"]),
            "lmtune": run_worker("lmtune_chat", seconds=p["chat_seconds"]),
        }
        result[CHAT.name] = with_ratio(sides)
    if "generate" in sections:
        console.print("generation ...")
        result["generate"] = bench_generation("smollm2-135m", p["gen_tokens"], p["gen_prompts"])
    if "fill-mask" in sections:
        console.print("fill-mask ...")
        result["fill_mask"] = bench_fill_mask("minilm-l6", p["fill_calls"])
    if "serve" in sections:
        console.print("serving: 8 streaming clients, batched server and one-at-a-time server ...")
        result["serve"] = bench_serving(
            "smollm2-135m", clients=8, rounds=p["serve_rounds"], new_tokens=p["serve_tokens"]
        )
    if "data" in sections:
        console.print("data prep ...")
        result["data_prep"] = measure_data_prep(p["prep_mb"])
        if scale:
            console.print(
                f"data prep at scale: {', '.join(f'{mb:,} MB' for mb in SIZES_MB)} of text, a fresh "
                "lmtune prepare each (minutes) ..."
            )
            result["data_scale"] = measure_scaling(SIZES_MB)
    if "device" in sections:
        console.print(f"training throughput on {device or 'cpu'} ...")
        result["device"] = bench_device(device or "cpu", quick=quick)
    markdown = to_markdown(result) + (device_markdown(result["device"]) if "device" in result else "")
    if out_dir is not None:
        out_dir = claim_dir(check_output_dir(out_dir, kind="bench"), "bench")
        (out_dir / "bench.json").write_text(json.dumps(result, indent=2))
        (out_dir / "bench.md").write_text(markdown)
    print(markdown)
    return result
