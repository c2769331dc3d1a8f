"""Prepare as it was before streaming (commit 6629252): the whole corpus in memory, read, cleaned,
tokenized, packed and split in lists, then `Dataset.from_dict`. Kept verbatim (cleaning's dedup, packing
and splitting) as the reference the streaming prepare must equal, block for block and count for count."""

import random
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from lmtune.config import CleanConfig, RunConfig
from lmtune.data.clean import (
    apply_delimiters,
    dehyphenate,
    drop_toc_lines,
    normalize_whitespace,
    remove_patterns,
    specials_of,
    strip_pdf_page_furniture,
)
from lmtune.data.ingest import Document, read_documents
from lmtune.data.pack import IDS, Framing, tokenize
from lmtune.data.tokenizer import train_tokenizer

MIN_DOCS_FOR_DOC_SPLIT = 10


def clean_documents(
    docs: list[Document], config: CleanConfig, specials: dict[str, str] | None = None
) -> tuple[list[Document], dict[str, int]]:
    """Run the enabled cleaning steps. `specials` maps "eos"/"bos" to the tokenizer's own tokens."""
    specials = specials or {}
    patterns = [re.compile(p, re.DOTALL) for p in config.regex_remove]
    counts: Counter[str] = Counter()
    chars_in = sum(len(d.text) for d in docs)
    out: list[Document] = []
    for doc in docs:
        text = doc.text
        if config.pdf_headers and doc.pages and len(doc.pages) > 1:
            pages, removed = strip_pdf_page_furniture(doc.pages)
            counts["pdf header/footer/page-number lines"] += removed
            text = "\n".join(pages)
        if config.drop_toc:
            text, n = drop_toc_lines(text)
            counts["table-of-contents lines dropped"] += n
        text = remove_patterns(text, patterns, counts)
        if config.dehyphenate:
            text, n = dehyphenate(text)
            counts["de-hyphenated words"] += n
        if config.normalize_unicode:
            normalized = unicodedata.normalize("NFKC", text)
            counts["unicode-normalized documents"] += normalized != text
            text = normalized
        if config.normalize_whitespace:
            before = len(text)
            text = normalize_whitespace(text)
            counts["whitespace characters removed"] += before - len(text)
        pieces = apply_delimiters(text, config.delimiters, specials) if config.delimiters else [text]
        for piece in pieces:
            if config.normalize_whitespace and len(pieces) > 1:
                piece = piece.strip()
            if len(piece) < config.min_chars:
                counts["empty/short documents dropped"] += 1
                continue
            out.append(replace(doc, text=piece, pages=None))
    if config.dedup:
        seen: set[str] = set()
        unique = []
        for doc in out:
            if doc.text in seen:
                counts["duplicate documents dropped"] += 1
            else:
                seen.add(doc.text)
                unique.append(doc)
        out = unique
    report = {
        "documents in": len(docs),
        "documents out": len(out),
        "characters in": chars_in,
        "characters out": sum(len(d.text) for d in out),
    }
    report.update({k: v for k, v in counts.items()})
    return out, report


def _ids(values) -> np.ndarray:
    return np.asarray(values, dtype=IDS)


def pack(token_lists: Sequence, block_size: int, framing: Framing, stride: int = 0) -> list[np.ndarray]:
    """Concatenate documents (each followed by the separator) and cut into blocks; keep the remainder.
    Blocks are int32 arrays (views of one stream when there is no prefix/suffix to add)."""
    content = block_size - len(framing.prefix) - len(framing.suffix)
    if content < 2:
        raise ValueError(f"block_size {block_size} leaves no room for text")
    if not 0 <= stride < content:
        raise ValueError(f"stride must be in [0, {content})")
    separator = _ids(framing.separator)
    stream = np.concatenate([part for ids in token_lists for part in (_ids(ids), separator)] or [_ids([])])
    step = content - stride
    blocks = []
    for start in range(0, len(stream), step):
        blocks.append(_framed(framing, stream[start : start + content]))
        if start + content >= len(stream):
            break
    return blocks


def _framed(framing: Framing, ids: np.ndarray) -> np.ndarray:
    if not framing.prefix and not framing.suffix:
        return ids
    return np.concatenate([_ids(framing.prefix), ids, _ids(framing.suffix)])


def split_documents(n_docs: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]] | None:
    """Seeded document-level split, or None when there are too few documents to split that way."""
    if n_docs < MIN_DOCS_FOR_DOC_SPLIT or val_fraction == 0:
        return None
    order = list(range(n_docs))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(n_docs * val_fraction))
    return sorted(order[n_val:]), sorted(order[:n_val])


def split_stream(token_lists: Sequence, val_fraction: float) -> tuple[list, list]:
    """Position split for few documents: the last `val_fraction` of every document is held out."""
    train, val = [], []
    for ids in token_lists:
        cut = len(ids) - int(len(ids) * val_fraction)
        train.append(ids[:cut])
        if cut < len(ids):
            val.append(ids[cut:])
    return train, val


def pack_splits(
    token_lists: Sequence,
    block_size: int,
    framing: Framing,
    stride: int,
    val_fraction: float,
    seed: int,
    packing: bool = True,
) -> tuple[dict[str, list[np.ndarray]], dict]:
    """Blocks for train and validation (int32 arrays), how the split was made, and a "warning" when the
    corpus is too small for one block or for a validation split."""
    by_doc = split_documents(len(token_lists), val_fraction, seed)
    if by_doc is not None:
        train_ids = [token_lists[i] for i in by_doc[0]]
        val_ids = [token_lists[i] for i in by_doc[1]]
        how = "by document"
    elif val_fraction > 0:
        train_ids, val_ids = split_stream(token_lists, val_fraction)
        how = "by position (tail of each document)"
    else:
        train_ids, val_ids, how = token_lists, [], "none"
    content = block_size - len(framing.prefix) - len(framing.suffix)

    def to_blocks(lists: Sequence) -> list[np.ndarray]:
        if packing:
            return pack(lists, block_size, framing, stride)
        return [_framed(framing, _ids(ids[:content])) for ids in lists if len(ids)]

    splits = {"train": to_blocks(train_ids), "validation": to_blocks(val_ids)}
    info: dict = {"split": how}
    if not packing:
        info["truncated samples"] = sum(len(ids) > content for ids in token_lists)
    # A tiny corpus is not an error (a short text can still be learnt), but the caller must know.
    warnings = []
    tokens, val_tokens = sum(map(len, train_ids)), sum(map(len, val_ids))
    if packing and tokens < content:
        warnings.append(
            f"the training text ({tokens} tokens) is shorter than one block ({block_size}): "
            "there is one short training block; lower data.block_size or add text"
        )
    if val_fraction > 0 and not splits["validation"]:
        warnings.append(
            f"no validation split: the corpus ({tokens} tokens) is too small to hold out "
            f"data.val_fraction {val_fraction:g} of it; held-out metrics cannot be tracked"
        )
    elif val_fraction > 0 and val_tokens < min(content, 256):
        warnings.append(f"the validation split holds only {val_tokens} tokens: its metrics will be noisy")
    if warnings:
        info["warning"] = "; ".join(warnings)
    return splits, info


def read_clean(paths, config: RunConfig, tokenizer, text_column: str | None = None) -> tuple[list[Document], dict]:
    docs = read_documents(paths, text_column or config.data.text_column)
    return clean_documents(docs, config.data.clean, specials_of(tokenizer) if tokenizer is not None else {})


def prepare_packed(
    config: RunConfig, tokenizer, framing_for: Callable[[Any], Framing]
) -> tuple[dict[str, dict[str, list]], Any, dict]:
    """Language-model splits: documents read, cleaned, tokenized and packed into blocks framed by
    `framing_for(tokenizer)` (EOS between documents for decoders, [CLS]/[SEP] for encoders)."""

    data = config.data
    docs, report = read_clean(data.train, config, tokenizer)
    val_docs, val_report = read_clean(data.validation, config, tokenizer) if data.validation else (None, None)
    if config.tokenizer.train is not None:
        tokenizer = train_tokenizer((d.text for d in docs), config.tokenizer.train)
    framing = framing_for(tokenizer)
    ids = tokenize(tokenizer, [d.text for d in docs])
    if val_docs is not None:
        splits, info = pack_splits(ids, data.block_size, framing, data.stride, 0.0, data.seed, data.packing)
        val_ids = tokenize(tokenizer, [d.text for d in val_docs])
        splits["validation"] = pack_splits(val_ids, data.block_size, framing, 0, 0.0, data.seed, data.packing)[0][
            "train"
        ]
        info["split"] = f"own validation files ({len(val_docs)} documents)"
    else:
        splits, info = pack_splits(
            ids, data.block_size, framing, data.stride, data.val_fraction, data.seed, data.packing
        )
    stats = {
        "documents": len(docs),
        "characters": sum(len(d.text) for d in docs),
        "tokens": sum(len(x) for x in ids),
        "block_size": data.block_size,
        "train blocks": len(splits["train"]),
        "validation blocks": len(splits["validation"]),
        "train tokens": sum(map(len, splits["train"])),
        "validation tokens": sum(map(len, splits["validation"])),
        **info,
        "cleaning": report,
    }
    if val_report:
        stats["cleaning (validation)"] = val_report
    return {k: {"input_ids": v} for k, v in splits.items()}, tokenizer, stats


def prepare_in_memory(config: RunConfig, tokenizer, framing_for: Callable[[Any], Framing]):
    """(splits as `datasets.Dataset`s built in memory, the tokenizer, stats), as `prepare` made them."""
    from datasets import Dataset

    columns, tokenizer, stats = prepare_packed(config, tokenizer, framing_for)
    return {name: Dataset.from_dict(cols) for name, cols in columns.items() if cols["input_ids"]}, tokenizer, stats
