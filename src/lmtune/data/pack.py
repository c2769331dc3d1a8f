"""Tokenize documents and pack them into fixed-size blocks.

Documents are joined with a separator token (EOS for causal LMs, [SEP] for BERT-style encoders) and
cut into `block_size` blocks; the last, shorter block is kept, so no token is lost. An optional stride
makes consecutive blocks overlap. The split is by document when there are enough of them, otherwise
by position (the tail of the token stream), so validation text never appears in training."""

from __future__ import annotations

import os
import random
from array import array
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
    with tqdm(
        total=total, unit="B", unit_scale=True, desc="tokenize", disable=total < PROGRESS_CHARS, leave=False
    ) as bar:

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


def _framed(framing: Framing, ids: np.ndarray) -> np.ndarray:
    if not framing.prefix and not framing.suffix:
        return ids
    return np.concatenate([_ids(framing.prefix), ids, _ids(framing.suffix)])


class Packer:
    """The blocks of one split, from documents given one at a time (a long one in pieces): documents joined
    by the separator and cut into `block_size` blocks (framed), consecutive blocks sharing `stride` tokens,
    the last short block kept. `packing=False`: one block per non-empty document, truncated. It holds at most
    a block's worth of tokens beyond what one `add` brings, whatever the corpus size."""

    def __init__(self, block_size: int, framing: Framing, stride: int = 0, packing: bool = True):
        self.framing, self.packing = framing, packing
        self.content = block_size - len(framing.prefix) - len(framing.suffix)
        if self.content < 2:
            raise ValueError(f"block_size {block_size} leaves no room for text")
        if not 0 <= stride < self.content:
            raise ValueError(f"stride must be in [0, {self.content})")
        self.step = self.content - stride
        self.separator = _ids(framing.separator)
        self.pending: list[np.ndarray] = []  # tokens of the stream not yet in a finished block
        self.pending_tokens = 0
        self.document_tokens = 0  # of the document under way (packing=False keeps its first `content`)
        self.tokens = 0  # document tokens added, separators not counted
        self.blocks = 0

    def add(self, ids: np.ndarray, ends_document: bool = True) -> list[np.ndarray]:
        """Add a document's ids (or a piece of it, `ends_document=False`); the blocks it completes."""
        ids = _ids(ids)
        self.tokens += len(ids)
        if not self.packing:
            return self._add_unpacked(ids, ends_document)
        self.pending += [ids, self.separator] if ends_document else [ids]
        self.pending_tokens += len(ids) + (len(self.separator) if ends_document else 0)
        if self.pending_tokens <= self.content:  # a block that may be the last one: wait for more
            return []
        stream = np.concatenate(self.pending)
        # Every block whose end lies before the stream's current end is final; the rest waits.
        count = -(-(len(stream) - self.content) // self.step)
        blocks = [
            self._framed(stream[start : start + self.content]) for start in range(0, count * self.step, self.step)
        ]
        self.pending, self.pending_tokens = [stream[count * self.step :]], len(stream) - count * self.step
        return blocks

    def _add_unpacked(self, ids: np.ndarray, ends_document: bool) -> list[np.ndarray]:
        room = self.content - min(self.document_tokens, self.content)
        if room:
            self.pending.append(ids[:room])
        self.document_tokens += len(ids)
        if not ends_document:
            return []
        length, kept = self.document_tokens, self.pending
        self.pending, self.document_tokens = [], 0
        return [self._framed(np.concatenate(kept))] if length else []

    def finish(self) -> list[np.ndarray]:
        """The blocks still held: the end of the stream, the last one short."""
        if not self.packing or not self.pending_tokens:
            return []
        stream, blocks = np.concatenate(self.pending), []
        for start in range(0, len(stream), self.step):
            blocks.append(self._framed(stream[start : start + self.content]))
            if start + self.content >= len(stream):
                break
        self.pending, self.pending_tokens = [], 0
        return blocks

    def _framed(self, ids: np.ndarray) -> np.ndarray:
        self.blocks += 1
        return _framed(self.framing, ids)


def pack(token_lists: Sequence, block_size: int, framing: Framing, stride: int = 0) -> list[np.ndarray]:
    """Concatenate documents (each followed by the separator) and cut into blocks; keep the remainder.
    Blocks are int32 arrays."""
    packer = Packer(block_size, framing, stride)
    blocks = [block for ids in token_lists for block in packer.add(ids)]
    return blocks + packer.finish()


def held_out(n_docs: int, val_fraction: float, seed: int) -> np.ndarray | None:
    """Which documents the seeded document-level split holds out (a bool each), or None when there are too
    few documents to split that way. The draw is `random.Random(seed).shuffle` of the indices, kept in an
    int64 array (8 bytes a document, where a list of ints takes ~36)."""
    if n_docs < MIN_DOCS_FOR_DOC_SPLIT or val_fraction == 0:
        return None
    order = array("q", range(n_docs))
    random.Random(seed).shuffle(order)
    mask = np.zeros(n_docs, dtype=bool)
    mask[np.frombuffer(order, dtype=np.int64)[: max(1, round(n_docs * val_fraction))]] = True
    return mask


def split_documents(n_docs: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]] | None:
    """Seeded document-level split (train, validation indices), or None when there are too few documents."""
    mask = held_out(n_docs, val_fraction, seed)
    if mask is None:
        return None
    return np.flatnonzero(~mask).tolist(), np.flatnonzero(mask).tolist()


class Splitter:
    """Where each document goes once their number is known: by document with 10 or more (seeded), else
    the last `val_fraction` of every document is held out (by position), so validation text never
    appears in training."""

    def __init__(self, n_docs: int, val_fraction: float, seed: int):
        self.val_fraction = val_fraction
        self.held_out = held_out(n_docs, val_fraction, seed)
        self.how = (
            "by document"
            if self.held_out is not None
            else "by position (tail of each document)"
            if val_fraction > 0
            else "none"
        )

    def cut(self, index: int, length: int) -> int | None:
        """Document `index`'s first `cut` tokens train and the rest validate; None: all of it validates."""
        if self.held_out is not None:
            return None if self.held_out[index] else length
        return length - int(length * self.val_fraction)


def split_info(
    how: str, train: Packer, validation: Packer, val_fraction: float, block_size: int, truncated: int
) -> dict:
    """How the split was made (`truncated`: documents longer than a block, counted when not packing), and
    a "warning" when the corpus is too small for one block or for a validation split (not an error: a
    short text can still be learnt, but the caller must know)."""
    info: dict = {"split": how}
    if not train.packing:
        info["truncated samples"] = truncated
    warnings = []
    tokens, val_tokens, content = train.tokens, validation.tokens, train.content
    if train.packing and tokens < content:
        warnings.append(
            f"the training text ({tokens} tokens) is shorter than one block ({block_size}): "
            "there is one short training block; lower data.block_size or add text"
        )
    if val_fraction > 0 and not validation.blocks:
        warnings.append(
            f"no validation split: the corpus ({tokens} tokens) is too small to hold out "
            f"data.val_fraction {val_fraction:g} of it; held-out metrics cannot be tracked"
        )
    elif val_fraction > 0 and val_tokens < min(content, 256):
        warnings.append(f"the validation split holds only {val_tokens} tokens: its metrics will be noisy")
    if warnings:
        info["warning"] = "; ".join(warnings)
    return info


def pack_splits(
    token_lists: Sequence,
    block_size: int,
    framing: Framing,
    stride: int,
    val_fraction: float,
    seed: int,
    packing: bool = True,
) -> tuple[dict[str, list[np.ndarray]], dict]:
    """Blocks for train and validation (int32 arrays) of documents held in memory, and how the split was
    made (`split_info`). Streaming prepare does the same a document at a time (data/stream.py)."""
    splitter = Splitter(len(token_lists), val_fraction, seed)
    train, validation = (Packer(block_size, framing, stride, packing) for _ in range(2))
    splits: dict[str, list[np.ndarray]] = {"train": [], "validation": []}
    for index, ids in enumerate(token_lists):
        ids = _ids(ids)
        cut = splitter.cut(index, len(ids))
        if cut is None:
            splits["validation"] += validation.add(ids)
            continue
        splits["train"] += train.add(ids[:cut])
        if cut < len(ids):
            splits["validation"] += validation.add(ids[cut:])
    splits["train"] += train.finish()
    splits["validation"] += validation.finish()
    truncated = sum(len(ids) > train.content for ids in token_lists)
    return splits, split_info(splitter.how, train, validation, val_fraction, block_size, truncated)
