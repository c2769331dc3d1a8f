"""The bench report: ratios side by side, as Markdown."""

from __future__ import annotations

from typing import Any

from lmtune.tasks.chat import OBJECTIVE as CHAT
from lmtune.tasks.classify import OBJECTIVE as CLASSIFY
from lmtune.tasks.clm import OBJECTIVE as CAUSAL
from lmtune.tasks.mlm import OBJECTIVE as MASKED


def with_ratio(sides: dict, **settings) -> dict:
    """lmtune's effective tokens/s over each other contender's: `ratio_vs_seed`, `ratio_vs_tuned`."""
    ours = sides["lmtune"]
    for name, other in list(sides.items()):
        if name != "lmtune" and "error" not in other and "error" not in ours:
            sides[f"ratio_vs_{name}"] = ours["effective_tokens_per_s"] / other["effective_tokens_per_s"]
    return {**sides, "settings": settings} if settings else sides


def _f(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


TRAINING_SECTIONS = (
    # (result key, title, metric, the tuned contender's name)
    (CAUSAL.name, "Causal LM training", "val_loss", "tuned Trainer"),
    ("clm_demo", "Causal LM training, the demo's pretrained model", "val_loss", "tuned Trainer"),
    (MASKED.name, "Masked LM training", "val_top1_accuracy", "tuned Trainer"),
    (CLASSIFY.name, "Classification training", "val_accuracy", "tuned Trainer"),
    (CHAT.name, "Chat fine-tuning (SmolLM2-135M on the pirate conversations)", "val_loss", "TRL SFTTrainer"),
)


def scale_markdown(s: dict[str, Any]) -> list[str]:
    """`lmtune bench --only data --scale`: prepare at growing sizes, each in a fresh process."""
    rows = s["rows"]
    lines = [
        f"## Prepare at scale ({s['model']} tokenizer, folders of ~55 KB text files, {s['cores']} cores of "
        f"{s['cpu']}, a fresh `lmtune prepare` each)",
        "",
        "| text, MB | files | seconds | MB/s | peak RSS, MB |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['mb']:,.0f} | {r['files']:,} | {_f(r['seconds'], 1)} | {_f(r['mb_s'], 2)} | {r['peak_rss_mb']:,.0f} |"
        for r in rows
    ]
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        extra_mb = last["mb"] - first["mb"]
        seconds = (last["seconds"] - first["seconds"]) / extra_mb
        memory = (last["peak_rss_mb"] - first["peak_rss_mb"]) / extra_mb
        lines += [
            "",
            f"From {first['mb']:,.0f} to {last['mb']:,.0f} MB: {seconds:.3f} s and {memory:+.3f} MB of peak "
            "memory per further MB of text.",
        ]
    return lines + [""]


def to_markdown(r: dict) -> str:
    lines = [f"# lmtune bench ({r['mode']})", "", f"CPU: {r['cpu']}, {r['threads']} threads, torch {r['torch']}", ""]
    if "peak_gflops" in r:
        lines += [
            f"Peak matmul: fp32 {_f(r['peak_gflops']['fp32'])} GFLOP/s, bf16 {_f(r['peak_gflops']['bf16'])} GFLOP/s",
            "",
        ]
    for key, title, metric, contender in TRAINING_SECTIONS:
        if key not in r:
            continue
        sides = r[key]
        names = [n for n in ("seed", "tuned", "lmtune") if n in sides]
        heads = {"seed": "seed recipe", "tuned": contender, "lmtune": "lmtune"}
        lines += [
            f"## {title}",
            "",
            "| | " + " | ".join(heads[n] for n in names) + " | lmtune / seed | lmtune / tuned |",
            "|---" * (len(names) + 3) + "|",
        ]
        errors = {n: sides[n]["error"] for n in names if "error" in sides[n]}
        if errors:
            lines += ["| error | " + " | ".join(sides[n].get("error", "") for n in names) + " | | |", ""]
            continue
        rows = [
            ("effective tokens/s", "effective_tokens_per_s", 1),
            ("padding", "padding_fraction", 2),
            ("steps in the time", "steps", 0),
            (f"{metric} after equal time", metric, 4),
            ("peak RSS, MB", "peak_rss_mb", 0),
        ]
        if "mfu_fp32" in sides["lmtune"]:
            rows += [
                ("MFU vs fp32 peak", "mfu_fp32", 3),
                ("MFU vs bf16 peak", "mfu_bf16", 3),
                ("precision", "precision", 0),
            ]
        for label, field, digits in rows:
            cells = [_f(sides[n].get(field), digits) for n in names]
            ratios = ["", ""]
            if field == "effective_tokens_per_s":
                ratios = [_f(sides.get("ratio_vs_seed"), 2), _f(sides.get("ratio_vs_tuned"), 2)]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratios[0]} | {ratios[1]} |")
        if sides["lmtune"].get("step_phases"):
            lines += [
                "",
                "lmtune's step time: "
                + ", ".join(f"{phase} {share:.0%}" for phase, share in sides["lmtune"]["step_phases"].items()),
            ]
        lines.append("")
    if "generate" in r:
        g = r["generate"]
        formats = g.get("formats") or {g.get("weights", "?"): g}
        lines += [
            f"## Generation (SmolLM2-135M, sampling top-k 50; model.generate on fp32; lmtune's default "
            f"weights here: {g.get('weights', '?')})",
            "",
            "| lmtune's weights | batch | lmtune tok/s | model.generate tok/s | ratio |",
            "|---|---|---|---|---|",
        ]
        for weights, row in formats.items():
            for batch in ("batch 1", "batch 1, streamed", "batch 8"):
                if batch in row:
                    b = row[batch]
                    lines.append(
                        f"| {weights} | {batch} | {_f(b['lmtune_tokens_per_s'])} | "
                        f"{_f(b['hf_generate_tokens_per_s'])} | {_f(b['ratio'], 2)} |"
                    )
        if "llama.cpp" in g:
            c = g["llama.cpp"]
            lines.append(
                f"| llama.cpp (same GGUF, greedy) | batch 1 | {_f(c['tokens_per_s'])} | "
                f"{_f(c['tokens_per_s'] / c['ratio'])} | {_f(c['ratio'], 2)} |"
            )
        gates = [(w, row["quality"]) for w, row in formats.items() if row.get("quality")]
        if gates:
            q0 = gates[0][1]
            lines += [
                "",
                f"Quality gate against fp32 ({q0['prompts']} prompts x {q0['new_tokens']} greedy tokens; "
                f"perplexity must stay within 1%):",
                "",
                "| weights | greedy agreement | held-out perplexity | fp32 | change | gate |",
                "|---|---|---|---|---|---|",
            ]
            for weights, q in gates:
                lines.append(
                    f"| {weights} | {q['greedy_agreement']:.1%} | {q['perplexity']:.3f} | "
                    f"{q['perplexity_fp32']:.3f} | {q['perplexity_change']:+.2%} | "
                    f"{'met' if abs(q['perplexity_change']) <= 0.01 else 'NOT met'} |"
                )
        if "llama.cpp" in g:
            lines += [
                "",
                f"llama.cpp's greedy agreement with the fp32 PyTorch model on the same weights: "
                f"{g['llama.cpp']['greedy_agreement']:.1%} (its kernels round activations to 8 bits)",
            ]
        lines.append("")
    if "fill_mask" in r:
        f = r["fill_mask"]
        lines += [
            "## Fill-mask (MiniLM-L6)",
            "",
            "| | lmtune | transformers pipeline | ratio |",
            "|---|---|---|---|",
            f"| p50 latency, ms | {_f(f['lmtune_p50_ms'])} | {_f(f['pipeline_p50_ms'])} | {_f(f['p50_ratio'], 2)} |",
            f"| p95 latency, ms | {_f(f['lmtune_p95_ms'])} | {_f(f['pipeline_p95_ms'])} | |",
            f"| batch of 64, sentences/s | {_f(f['lmtune_sentences_per_s'])} | {_f(f['pipeline_sentences_per_s'])} | "
            f"{_f(f['lmtune_sentences_per_s'] / f['pipeline_sentences_per_s'], 2)} |",
            "",
        ]
    if "serve" in r:
        v = r["serve"]
        one, many = v["one_at_a_time"], v["batched"]
        lines += [
            f"## Serving ({v['model']}, {v['clients']} concurrent streaming clients x {v['rounds']} requests x "
            f"{v['new_tokens']} tokens, real server on loopback)",
            "",
            "| | one at a time (--batch-size 1) | continuous batching | ratio |",
            "|---|---|---|---|",
            f"| generated tokens/s, all clients | {_f(one['tokens_per_s'])} | {_f(many['tokens_per_s'])} | "
            f"{_f(v['ratio'], 2)} |",
        ]
        for label, key in (
            ("request p50, s", "p50_s"),
            ("request p95, s", "p95_s"),
            ("first token p50, s", "first_token_p50_s"),
            ("first token p95, s", "first_token_p95_s"),
        ):
            lines.append(f"| {label} | {_f(one[key], 2)} | {_f(many[key], 2)} | |")
        lines += ["", f"One decode step of the full batch: {_f(many['step_s'], 3)} s.", ""]
    if "data_prep" in r:
        d = r["data_prep"]
        lines += [
            f"## Data prep (read + clean + tokenize + pack, {d['tokenizer']} tokenizer, {d['mb']} MB of Hamlet, "
            f"{d['cores']} tokenizer threads)",
            "",
            "| stage | MB/s |",
            "|---|---|",
        ]
        for label, key in (
            ("clean", "clean_mb_s"),
            ("tokenize", "tokenize_mb_s"),
            ("pack", "pack_mb_s"),
            ("**end to end**", "end_to_end_mb_s"),
            ("the tokenizer library alone (the bound)", "tokenizer_bound_mb_s"),
        ):
            lines.append(f"| {label} | {_f(d[key], 2)} |")
        lines += ["", f"End to end reaches {d['end_to_end_vs_bound']:.0%} of the tokenizer's own speed.", ""]
    if "data_scale" in r:
        lines += scale_markdown(r["data_scale"])
    return "\n".join(lines)
