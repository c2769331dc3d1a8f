"""Prepare for packed language modelling, streamed. Documents are read, cleaned and tokenized a batch at
a time into a flat file of token ids on disk. Once their number is known (the seeded document-level
split needs it), that file is read back in order: each document's tokens go to the train or the
validation packer, and blocks go to Arrow shards as they are cut. Memory holds one file's documents, a
batch of text (`data.buffer_mb`) and ~100 bytes a document (its dedup hash and length), never the corpus;
the result is the same, block for block, as packing the whole corpus in memory (tests/data/test_stream.py).

`data.num_proc` > 1 tokenizes the batches in that many worker processes (worth it where a process's
Python work, not the tokenizer's own threads, is the limit: many cores; see docs/performance.md)."""

from __future__ import annotations

import os
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lmtune.config import RunConfig
from lmtune.data.arrow import SplitWriter, write_dataset_dict
from lmtune.data.clean import Cleaner, specials_of
from lmtune.data.general import replay_blocks
from lmtune.data.ingest import Document, input_bytes, iter_documents
from lmtune.data.pack import IDS, PROGRESS_CHARS, Framing, Packer, Splitter, split_info, tokenize, tokenizer_threads
from lmtune.data.tokenizer import train_tokenizer
from lmtune.errors import LmtuneError

TOKEN_STORE = ".tokens.tmp"  # in the output folder (the same disk), gone when prepare ends


class TokenStore:
    """Every document's token ids in order, in one flat int32 file, and each one's length (8 bytes a
    document, in memory): the corpus tokenized once, read back a bounded chunk at a time."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "w+b")
        self.lengths = array("q")

    def append(self, ids: np.ndarray) -> None:
        self.file.write(memoryview(np.ascontiguousarray(ids, dtype=IDS)).cast("B"))
        self.lengths.append(len(ids))

    def pieces(self, chunk_tokens: int) -> Iterator[tuple[int, np.ndarray, bool]]:
        """(document index, a piece of its ids, whether the piece ends it), in order; at most
        `chunk_tokens` ids read at a time (a document longer than that comes in several pieces)."""
        self.file.flush()
        self.file.seek(0)
        buffer, at = np.zeros(0, IDS), 0
        for index, length in enumerate(self.lengths):
            left = length
            while True:
                if at == len(buffer) and left:
                    buffer, at = np.frombuffer(self.file.read(4 * chunk_tokens), dtype=IDS), 0
                    if not len(buffer):  # never, unless something else truncated the file
                        raise LmtuneError(f"{self.path} ended early (was it changed while prepare ran?)")
                take = min(left, len(buffer) - at)
                piece, at, left = buffer[at : at + take], at + take, left - take
                yield index, piece, left == 0
                if left == 0:
                    break

    def close(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


# ---- tokenizing in batches, in this process or in workers ------------------------------------------------
_worker_tokenizer = None


def _start_worker(tokenizer, threads: int) -> None:
    global _worker_tokenizer
    os.environ["RAYON_NUM_THREADS"] = str(threads)  # the processes share the cores, not each take them all
    _worker_tokenizer = tokenizer


def _tokenize_in_worker(texts: list[str]) -> list[np.ndarray]:
    return tokenize(_worker_tokenizer, texts)


def batches(texts: Iterable[str], batch_chars: int) -> Iterator[list[str]]:
    """Texts grouped into lists of about `batch_chars` characters (a longer text alone)."""
    batch, chars = [], 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if chars >= batch_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def tokenized(tokenizer, text_batches: Iterable[list[str]], processes: int = 1) -> Iterator[list[np.ndarray]]:
    """Each batch's token ids (`pack.tokenize`), in order. With `processes` > 1, worker processes tokenize
    while this one reads and cleans the next batches; two batches per worker are in flight at most."""
    if processes <= 1:
        yield from (tokenize(tokenizer, batch) for batch in text_batches)
        return
    threads = max(1, tokenizer_threads() // processes)
    with ProcessPoolExecutor(
        processes, mp_context=get_context("spawn"), initializer=_start_worker, initargs=(tokenizer, threads)
    ) as pool:
        pending: deque[Future] = deque()
        for batch in text_batches:
            pending.append(pool.submit(_tokenize_in_worker, batch))
            if len(pending) >= 2 * processes:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# ---- the pipeline -------------------------------------------------------------------------------------------
def _cleaned(paths, config: RunConfig, cleaner: Cleaner, desc: str) -> Iterator[Document]:
    """The documents of `paths`, read and cleaned one file at a time, with a progress bar (bytes, ETA) for
    large inputs."""
    total = input_bytes(paths)
    with tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc=desc,
        leave=False,
        delay=2,
        disable=total is not None and total < PROGRESS_CHARS,
    ) as bar:
        for doc in iter_documents(paths, config.data.text_column, config.data.streaming, progress=bar.update):
            yield from cleaner(doc)


def _token_ids(paths, config: RunConfig, tokenizer, cleaner: Cleaner, desc: str) -> Iterator[np.ndarray]:
    """Each cleaned document's token ids, in order: read, cleaned, batched and tokenized as they come."""
    docs = _cleaned(paths, config, cleaner, desc)
    text_batches = batches((doc.text for doc in docs), int(config.data.buffer_mb * 2**20))
    for ids_list in tokenized(tokenizer, text_batches, config.data.num_proc):
        yield from ids_list


def _emit(packer: Packer, writer: SplitWriter, ids: np.ndarray, ends_document: bool = True) -> None:
    writer.write(packer.add(ids, ends_document))


def prepare_packed(
    config: RunConfig, tokenizer, framing_for: Callable[[Any], Framing], out_dir: Path
) -> tuple[Any, dict]:
    """Language-model splits of `config.data`, written into `out_dir` as Arrow (train, validation): documents
    read, cleaned, tokenized and packed into blocks framed by `framing_for(tokenizer)` (EOS between documents
    for decoders, [CLS]/[SEP] for encoders). A tokenizer to train (tokenizer None) reads the corpus once
    more first. Returns the tokenizer and the stats."""
    data = config.data
    if data.train is None:
        raise LmtuneError("no training data: set data.train (a file, folder or prepared dataset)")
    specials = specials_of(tokenizer)  # {} when the tokenizer is trained here, after cleaning
    if config.tokenizer.train is not None:
        docs = _cleaned(data.train, config, Cleaner(data.clean, specials), "read (tokenizer)")
        tokenizer = train_tokenizer((doc.text for doc in docs), config.tokenizer.train)
    framing = framing_for(tokenizer)
    train = Packer(data.block_size, framing, data.stride, data.packing)
    validation = Packer(data.block_size, framing, 0 if data.validation else data.stride, data.packing)
    writers = {name: SplitWriter(Path(out_dir) / name) for name in ("train", "validation")}
    val_fraction = 0.0 if data.validation else data.val_fraction
    cleaner, store = Cleaner(data.clean, specials), TokenStore(Path(out_dir) / TOKEN_STORE)
    try:
        for ids in _token_ids(data.train, config, tokenizer, cleaner, "prepare"):
            store.append(ids)
        if not store.lengths:
            raise LmtuneError("nothing left to train on after cleaning (check data.clean settings)")
        splitter = Splitter(len(store.lengths), val_fraction, data.seed)
        _pack_store(store, splitter, train, validation, writers, chunk_tokens=int(data.buffer_mb * 2**18))
    finally:
        store.close()
    truncated = sum(length > train.content for length in store.lengths)
    info = split_info(splitter.how, train, validation, val_fraction, data.block_size, truncated)
    stats = {
        "documents": cleaner.docs_out,
        "characters": cleaner.chars_out,
        "tokens": sum(store.lengths),
        "block_size": data.block_size,
    }
    if data.validation:  # the user's own validation files, packed as they come
        val_cleaner = Cleaner(data.clean, specials)
        for ids in _token_ids(data.validation, config, tokenizer, val_cleaner, "prepare (validation)"):
            _emit(validation, writers["validation"], ids)
        writers["validation"].write(validation.finish())
        info["split"] = f"own validation files ({val_cleaner.docs_out} documents)"
    if data.replay:  # general text mixed into training (the loop shuffles every epoch)
        count = round(data.replay * (writers["train"].rows + len(writers["train"].batch)))
        replayed = replay_blocks(data.replay_source, tokenizer, framing, data.block_size, count, data.seed)
        writers["train"].write(replayed)
        info["replayed general blocks"] = len(replayed)
    rows = {name: writer.close() for name, writer in writers.items()}
    if not rows["train"]:
        raise LmtuneError("the training split is empty: add data or lower data.val_fraction")
    write_dataset_dict(out_dir, [name for name, n in rows.items() if n])  # empty splits are left out
    stats.update(
        {
            "train blocks": rows["train"],
            "validation blocks": rows["validation"],
            "train tokens": writers["train"].tokens,
            "validation tokens": writers["validation"].tokens,
            **info,
            "cleaning": cleaner.report(),
        }
    )
    if data.validation:
        stats["cleaning (validation)"] = val_cleaner.report()
    return tokenizer, stats


def _pack_store(
    store: TokenStore,
    splitter: Splitter,
    train: Packer,
    validation: Packer,
    writers: dict[str, SplitWriter],
    chunk_tokens: int,
) -> None:
    """The stored documents, in order, into the two packers: a document's tokens before its cut train,
    the rest validate (all of it, when the whole document is held out)."""
    done = 0  # tokens of the current document already passed on
    for index, piece, ends in store.pieces(chunk_tokens):
        if done == 0:
            length = store.lengths[index]
            cut = splitter.cut(index, length)
            train_done = cut is None
        if cut is None:
            _emit(validation, writers["validation"], piece, ends)
        else:
            head = piece[: max(0, cut - done)]
            if not train_done:  # the training part, ended (its separator) once it is complete
                train_done = done + len(head) == cut
                _emit(train, writers["train"], head, ends_document=train_done)
            if len(head) < len(piece):
                _emit(validation, writers["validation"], piece[len(head) :], ends)
        done = 0 if ends else done + len(piece)
    writers["train"].write(train.finish())
    writers["validation"].write(validation.finish())
