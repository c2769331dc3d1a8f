"""Tokenize documents and pack them into fixed-size blocks.

Documents are joined with a separator token (EOS for causal LMs, [SEP] for BERT-style encoders) and
cut into `block_size` blocks; the last, shorter block is kept, so no token is lost. An optional stride
makes consecutive blocks overlap. The split is by document when there are enough of them, otherwise
by position (the tail of the token stream), so validation text never appears in training."""
from __future__ import annotations

import random
from dataclasses import dataclass

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


def _pieces(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Cut a long text just before whitespace, so every piece starts the way the next word would have:
    byte-level BPE and WordPiece give the same tokens as for the whole text."""
    if len(text) <= size:
        return [text]
    pieces, start = [], 0
    while start < len(text):
        end = start + size
        if end < len(text):
            space = text.rfind(" ", start + size // 2, end)
            newline = text.rfind("\n", start + size // 2, end)
            end = max(space, newline) if max(space, newline) > start else end
        pieces.append(text[start:end])
        start = end
    return pieces


def tokenize(tokenizer, texts: list[str], batch_size: int = 64) -> list[list[int]]:
    """Token ids of each text. Fast-tokenizer calls on batches of pieces of at most CHUNK_CHARS (the
    tokenizer parallelises inside a batch); a progress bar for large corpora."""
    pieces, owner = [], []
    for i, text in enumerate(texts):
        for piece in _pieces(text):
            pieces.append(piece)
            owner.append(i)
    ids: list[list[int]] = [[] for _ in texts]
    total = sum(map(len, pieces))
    with tqdm(total=total, unit="B", unit_scale=True, desc="tokenize", disable=total < 20_000_000,
              leave=False) as bar:
        for start in range(0, len(pieces), batch_size):
            batch = pieces[start : start + batch_size]
            encoded = tokenizer(batch, add_special_tokens=False, return_attention_mask=False)["input_ids"]
            for i, piece_ids in zip(owner[start : start + batch_size], encoded):
                ids[i].extend(piece_ids)
            bar.update(sum(map(len, batch)))
    return ids


def pack(token_lists: list[list[int]], block_size: int, framing: Framing, stride: int = 0) -> list[list[int]]:
    """Concatenate documents (each followed by the separator) and cut into blocks; keep the remainder."""
    content = block_size - len(framing.prefix) - len(framing.suffix)
    if content < 2:
        raise ValueError(f"block_size {block_size} leaves no room for text")
    if not 0 <= stride < content:
        raise ValueError(f"stride must be in [0, {content})")
    stream: list[int] = []
    for ids in token_lists:
        stream += ids + framing.separator
    step = content - stride
    blocks = []
    for start in range(0, len(stream), step):
        blocks.append(framing.prefix + stream[start : start + content] + framing.suffix)
        if start + content >= len(stream):
            break
    return blocks


def split_documents(n_docs: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]] | None:
    """Seeded document-level split, or None when there are too few documents to split that way."""
    if n_docs < MIN_DOCS_FOR_DOC_SPLIT or val_fraction == 0:
        return None
    order = list(range(n_docs))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(n_docs * val_fraction))
    return sorted(order[n_val:]), sorted(order[:n_val])


def split_stream(token_lists: list[list[int]], val_fraction: float) -> tuple[list[list[int]], list[list[int]]]:
    """Position split for few documents: the last `val_fraction` of every document is held out."""
    train, val = [], []
    for ids in token_lists:
        cut = len(ids) - int(len(ids) * val_fraction)
        train.append(ids[:cut])
        if cut < len(ids):
            val.append(ids[cut:])
    return train, val


def pack_splits(token_lists: list[list[int]], block_size: int, framing: Framing, stride: int,
                val_fraction: float, seed: int, packing: bool = True) -> tuple[dict[str, list[list[int]]], dict]:
    """Blocks for train and validation, and how the split was made."""
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

    def to_blocks(lists: list[list[int]]) -> list[list[int]]:
        if packing:
            return pack(lists, block_size, framing, stride)
        content = block_size - len(framing.prefix) - len(framing.suffix)
        return [framing.prefix + ids[:content] + framing.suffix for ids in lists if ids]

    splits = {"train": to_blocks(train_ids), "validation": to_blocks(val_ids)}
    info = {"split": how}
    if not packing:
        info["truncated samples"] = sum(len(ids) > block_size - len(framing.prefix) - len(framing.suffix)
                                        for ids in token_lists)
    return splits, info
