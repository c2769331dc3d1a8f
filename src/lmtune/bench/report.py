"""The bench report: ratios side by side, as Markdown."""
from __future__ import annotations

def with_ratio(pair: dict, **settings) -> dict:
    seed, ours = pair["seed"], pair["lmtune"]
    if "error" not in seed and "error" not in ours:
        pair["effective_tokens_per_s_ratio"] = ours["effective_tokens_per_s"] / seed["effective_tokens_per_s"]
    return {**pair, "settings": settings} if settings else pair


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
