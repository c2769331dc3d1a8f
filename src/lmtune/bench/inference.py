"""Inference benches: generation against `model.generate` (and llama.cpp), fill-mask against the
transformers pipeline."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from transformers import pipeline

from lmtune.bench.contenders import HAMLET, held_out_metrics
from lmtune.data.ingest import read_documents
from lmtune.infer import llama_cpp, load
from lmtune.infer.fill_mask import fill_mask
from lmtune.infer.generate import GenerationSettings, generate, stream
from lmtune.models.resolve import gguf_file


def bench_generation(model: str, new_tokens: int, prompts: int = 20) -> dict[str, Any]:
    """lmtune's generation with each reduced weight format the device runs (bf16, and int8 on CPUs)
    against `model.generate` on the fp32 model, as transformers loads it; and each format's quality gate:
    greedy agreement with fp32 on `prompts` Hamlet lines x `new_tokens`, and held-out perplexity.
    `weights` names the format lmtune picks by default here (`auto`)."""
    reference = load(model, dtype="fp32")
    device = next(reference.model.parameters()).device
    out: dict[str, Any] = {"weights": load(model).weights, "formats": {}}
    prompt = "HAMLET. To be, or not to be"
    enc = reference.tokenizer(prompt, return_tensors="pt").to(device)
    theirs = {}
    for batch in (1, 8):  # sampling (top-k 50), so that 8 sequences from one prompt differ
        with torch.inference_mode():
            start = time.perf_counter()
            reference.model.generate(
                **enc,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=True,
                top_k=50,
                top_p=1.0,
                temperature=1.0,
                num_return_sequences=batch,
                pad_token_id=reference.tokenizer.pad_token_id,
            )
            theirs[batch] = batch * new_tokens / (time.perf_counter() - start)
    reference_texts = _greedy_texts(reference, new_tokens, prompts)
    sampling = GenerationSettings(
        max_new_tokens=new_tokens, temperature=1.0, top_k=50, top_p=1.0, ignore_eos=True, seed=0
    )
    formats = ["bf16", "int8"] if device.type == "cpu" else []
    for weights in formats + ([out["weights"]] if out["weights"] not in formats else []):  # the default too
        loaded = load(model, dtype=weights)
        row: dict[str, Any] = {}
        generate(loaded, "warm up", max_new_tokens=4, temperature=0)
        for batch in (1, 8):
            start = time.perf_counter()
            generate(loaded, prompt, sampling.model_copy(update={"num_return_sequences": batch}))
            ours = batch * new_tokens / (time.perf_counter() - start)
            row[f"batch {batch}"] = {
                "lmtune_tokens_per_s": ours,
                "hf_generate_tokens_per_s": theirs[batch],
                "ratio": ours / theirs[batch],
            }
        # `lmtune generate` streams: the model runs on a generation thread while this one prints
        start = time.perf_counter()
        for _ in stream(loaded, prompt, sampling):
            pass
        ours = new_tokens / (time.perf_counter() - start)  # ignore_eos: exactly new_tokens
        row["batch 1, streamed"] = {
            "lmtune_tokens_per_s": ours,
            "hf_generate_tokens_per_s": theirs[1],
            "ratio": ours / theirs[1],
        }
        row["quality"] = weights_quality(loaded, reference, new_tokens, prompts, reference_texts)
        out["formats"][weights] = row
    out.update(out["formats"].get(out["weights"], {}))  # the default's rows at the top, as before
    if llama_cpp.available() and gguf_file(model) is not None:  # the same GGUF file through llama.cpp
        engine = load(model, engine="llama.cpp")
        settings = GenerationSettings(max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
        generate(engine, "warm up", max_new_tokens=4, temperature=0)
        start = time.perf_counter()
        generate(engine, prompt, settings)
        speed = new_tokens / (time.perf_counter() - start)
        out["llama.cpp"] = {
            "tokens_per_s": speed,
            "ratio": speed / theirs[1],
            "greedy_agreement": greedy_agreement(engine, reference, new_tokens, prompts, reference_texts)[0],
        }
    return out


def _hamlet_prompts(prompts: int) -> list[str]:
    text = read_documents(HAMLET)[0].text
    lines = [line.strip() for line in text.splitlines() if len(line.strip()) > 30]
    return lines[100 : 100 * (prompts + 1) : 100]


def _greedy_texts(loaded, new_tokens: int, prompts: int) -> list[str]:
    return [
        generate(loaded, prompt, max_new_tokens=new_tokens, temperature=0, ignore_eos=True)[0]
        for prompt in _hamlet_prompts(prompts)
    ]


def greedy_agreement(
    loaded, reference, new_tokens: int, prompts: int, reference_texts: list[str] | None = None
) -> tuple[float, int]:
    """The share of greedy tokens generated before the first difference from `reference`, over `prompts`
    Hamlet lines; and how many prompts that was. `reference_texts`: the reference's greedy continuations,
    if already generated."""
    ours = _greedy_texts(loaded, new_tokens, prompts)
    theirs = reference_texts or _greedy_texts(reference, new_tokens, prompts)
    agreed = total = 0
    for mine, other in zip(ours, theirs):
        a, b = loaded.tokenizer(mine).input_ids, reference.tokenizer(other).input_ids
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        agreed, total = agreed + same, total + max(len(a), len(b), 1)
    return agreed / total, len(ours)


def weights_quality(
    loaded, reference, new_tokens: int, prompts: int, reference_texts: list[str] | None = None
) -> dict[str, float]:
    """Greedy agreement (the share of generated tokens before the first difference, over all prompts) and
    held-out perplexity (each model in its own weights' format, no autocast), of `loaded` against the fp32
    `reference`."""
    agreement, count = greedy_agreement(loaded, reference, new_tokens, prompts, reference_texts)
    ppl, ppl_fp32 = (
        held_out_metrics(m.model, m.tokenizer, m.objective, 512, precision="fp32")["val_perplexity"]
        for m in (loaded, reference)
    )
    return {
        "prompts": count,
        "new_tokens": new_tokens,
        "greedy_agreement": agreement,
        "perplexity": ppl,
        "perplexity_fp32": ppl_fp32,
        "perplexity_change": ppl / ppl_fp32 - 1,
    }


def bench_fill_mask(model: str, calls: int) -> dict[str, Any]:

    loaded, reference = load(model), load(model, dtype="fp32")
    pipe = pipeline("fill-mask", model=reference.model, tokenizer=reference.tokenizer, device="cpu")
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
    return {
        "lmtune_p50_ms": ours_p50,
        "lmtune_p95_ms": ours_p95,
        "pipeline_p50_ms": pipe_p50,
        "pipeline_p95_ms": pipe_p95,
        "p50_ratio": ours_p50 / pipe_p50,
        "lmtune_sentences_per_s": ours_tp,
        "pipeline_sentences_per_s": pipe_tp,
    }


# ---- the report ------------------------------------------------------------------------------------------
