"""Tokenize documents and pack them into fixed-size blocks.

Documents are joined with a separator token (EOS for causal LMs, [SEP] for BERT-style encoders) and
cut into `block_size` blocks; the last, shorter block is kept, so no token is lost. An optional stride
makes consecutive blocks overlap. The split is by document when there are enough of them, otherwise
by position (the tail of the token stream), so validation text never appears in training."""
from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

MIN_DOCS_FOR_DOC_SPLIT = 10


@dataclass
class Framing:
    """Token ids around each block and between documents."""

    separator: list[int]  # after each document
    prefix: list[int]  # at the start of every block ([CLS] for BERT)
    suffix: list[int]  # at the end of every block ([SEP] for BERT)

    @classmethod
    def eos(cls, tokenizer) -> "Framing":
        """Decoders: documents joined by EOS, blocks unframed."""
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        return cls(separator=eos, prefix=[], suffix=[])

    @classmethod
    def encoder(cls, tokenizer) -> "Framing":
        """BERT-style encoders: every block framed as the model saw text in pre-training ([CLS] ... [SEP])."""
        framed = tokenizer("", add_special_tokens=True)["input_ids"]  # [CLS] [SEP], <s> </s>, ...
        sep = [tokenizer.sep_token_id] if tokenizer.sep_token_id is not None else framed[-1:]
        return cls(separator=sep, prefix=framed[:1] if len(framed) == 2 else [], suffix=framed[-1:])


CHUNK_CHARS = 100_000  # longer texts are tokenized in pieces: memory stays bounded whatever the file
BATCH_CHARS = 1_000_000  # characters per tokenizer call (at least): its per-token bookkeeping is ~100 bytes
PROGRESS_CHARS = 20_000_000  # a progress bar for corpora this large
IDS = np.int32  # 4 bytes a token, not a Python int's 36; Arrow stores input_ids as int32 either way


def tokenizer_threads() -> int:
    """Threads a fast (Rust) tokenizer encodes a batch with: RAYON_NUM_THREADS, else the CPUs this process
    may use; 1 when TOKENIZERS_PARALLELISM turns parallelism off."""
    if os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in {"0", "false", "off", "no"}:
        return 1
    for var in ("RAYON_NUM_THREADS", "RAYON_RS_NUM_CPUS"):
        if os.environ.get(var, "").isdigit() and int(os.environ[var]) > 0:
            return int(os.environ[var])
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _pieces(text: str, size: int = CHUNK_CHARS) -> Iterator[str]:
    """Cut a long text just before a run of whitespace, so every piece starts the way the next word would
    have: byte-level BPE (GPT-2's pre-tokenizer) and WordPiece give the same tokens as for the whole text.
    Never inside a run: "a   b" is "a", "  ", " b" whole, but "a  " + " b" would give "a", "  " in the
    first piece. A stretch of size/2 characters without such a place (no whitespace, or all of it) is cut
    where it must be: the tokens near that cut can differ from the whole text's."""
    start = 0
    while start < len(text):
        end = start + size
        if end < len(text):
            low = start + size // 2
            cut = max(text.rfind(" ", low, end), text.rfind("\n", low, end))
            if cut > low and text[cut - 1].isspace():  # inside a run: back to its start
                cut = low + len(text[low:cut].rstrip())
            if cut > start and cut >= low and not text[cut - 1].isspace():
                end = cut
        yield text[start:end]
        start = end


def _ids_only_encoder(tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """A function from a batch of texts to their token ids, exactly as
    `tokenizer(batch, add_special_tokens=False)["input_ids"]`. For a fast tokenizer it calls the Rust
    tokenizer's `encode_batch_fast` directly: no character offsets, no Python dicts, about twice as fast
    per core, and the batch is spread over the tokenizer's threads (the GIL is released meanwhile)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None or not hasattr(backend, "encode_batch_fast"):  # a slow (Python) tokenizer, old tokenizers
        return lambda batch: tokenizer(batch, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    # What the transformers call does before encoding: no truncation or padding (a tokenizer.json may
    # carry both, e.g. MiniLM's 128), and special-token text split or not as the tokenizer says.
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    split_special = bool(getattr(tokenizer, "split_special_tokens", False))
    if getattr(backend, "encode_special_tokens", split_special) != split_special:
        backend.encode_special_tokens = split_special
    return lambda batch: [encoding.ids for encoding in backend.encode_batch_fast(batch, add_special_tokens=False)]


def tokenize(tokenizer, texts: list[str], batch_size: int = 1024) -> list[np.ndarray]:
    """Token ids of each text, as an int32 array: the same ids as `tokenizer(text, add_special_tokens=False)`.
    Long texts are tokenized in pieces of at most CHUNK_CHARS, in batches of at most `batch_size` pieces
    and about BATCH_CHARS characters, or two pieces per tokenizer thread when that is more (the fast
    tokenizer encodes a batch's texts in parallel); memory stays bounded by the batch. A progress bar for
    large corpora."""
    encode = _ids_only_encoder(tokenizer)
    batch_chars = max(BATCH_CHARS, 2 * tokenizer_threads() * CHUNK_CHARS)
    parts: list[list[np.ndarray]] = [[] for _ in texts]
    total = sum(map(len, texts))
    batch: list[str] = []
    owners: list[int] = []
    with tqdm(total=total, unit="B", unit_scale=True, desc="tokenize", disable=total < PROGRESS_CHARS,
              leave=False) as bar:

        def flush() -> None:
            for i, piece_ids in zip(owners, encode(batch)):
                parts[i].append(np.array(piece_ids, dtype=IDS))
            bar.update(sum(map(len, batch)))
            batch.clear()
            owners.clear()

        chars = 0
        for i, text in enumerate(texts):
            for piece in _pieces(text, CHUNK_CHARS):  # read now: tests shrink it
                batch.append(piece)
                owners.append(i)
                chars += len(piece)
                if len(batch) >= batch_size or chars >= batch_chars:
                    flush()
                    chars = 0
        if batch:
            flush()
    return [p[0] if len(p) == 1 else np.concatenate(p) if p else np.zeros(0, IDS) for p in parts]


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


def pack_splits(token_lists: Sequence, block_size: int, framing: Framing, stride: int,
                val_fraction: float, seed: int, packing: bool = True) -> tuple[dict[str, list[np.ndarray]], dict]:
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
        warnings.append(f"the training text ({tokens} tokens) is shorter than one block ({block_size}): "
                        "there is one short training block; lower data.block_size or add text")
    if val_fraction > 0 and not splits["validation"]:
        warnings.append(f"no validation split: the corpus ({tokens} tokens) is too small to hold out "
                        f"data.val_fraction {val_fraction:g} of it; held-out metrics cannot be tracked")
    elif val_fraction > 0 and val_tokens < min(content, 256):
        warnings.append(f"the validation split holds only {val_tokens} tokens: its metrics will be noisy")
    if warnings:
        info["warning"] = "; ".join(warnings)
    return splits, info
