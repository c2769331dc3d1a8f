"""`lmtune prepare`: read -> clean -> (train a tokenizer) -> tokenize -> pack/split -> Arrow on disk, streamed for
packed text (data/stream.py) so memory does not grow with the corpus.

The prepared folder is self-contained: `dataset_dict.json` + Arrow files (memory-mapped by `datasets`),
`tokenizer/`, `stats.json`, and `prepare.json` (what made it, written last; a matching one is reused as a
cache)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lmtune.config import RunConfig, data_inputs
from lmtune.data.clean import clean_documents, specials_of
from lmtune.data.ingest import Document, input_bytes, read_documents
from lmtune.data.stream import TOKEN_STORE
from lmtune.errors import LmtuneError
from lmtune.locks import own_folder
from lmtune.outputs import check_free_space, check_output_dir, disk_errors, is_lmtune_dir, remove_own


@dataclass
class Prepared:
    dataset: Any  # datasets.DatasetDict with "train" and "validation" (and maybe "test")
    tokenizer: Any
    stats: dict[str, Any]
    path: Path


def is_prepared(path: Path) -> bool:
    """A finished `lmtune prepare` folder (`prepare.json` is its last file)."""
    return all((path / name).exists() for name in ("stats.json", "dataset_dict.json", "prepare.json"))


def load_prepared(path: Path) -> Prepared:
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    return Prepared(
        load_from_disk(str(path)),
        AutoTokenizer.from_pretrained(path / "tokenizer"),
        json.loads((path / "stats.json").read_text()),
        path,
    )


def _fingerprint(config: RunConfig) -> str:
    # How prepare runs (processes, batch memory, streaming a Hub dataset) does not change what it makes.
    data = config.data.model_dump(mode="json", exclude={"num_proc", "buffer_mb", "streaming"})
    recipe = {
        "objective": config.objective,
        "data": data,
        "tokenizer": config.tokenizer.model_dump(mode="json"),
        "model": config.model.name,
        "tasks": [t.model_dump(mode="json") for t in config.tasks],
        "sft": config.sft.model_dump(mode="json"),
        "version": 1,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _needed_bytes(config: RunConfig) -> int:
    """About the disk a prepare of this data needs, where the input's size is known: its token ids on
    disk while packing, then the Arrow blocks (4 bytes a token; a token is ~4 bytes of text)."""
    size = input_bytes(config.data.train) if config.data.train else None
    return 2 * size if size else 0


def read_clean(paths, config: RunConfig, tokenizer, text_column: str | None = None) -> tuple[list[Document], dict]:
    docs = read_documents(paths, text_column or config.data.text_column)
    return clean_documents(docs, config.data.clean, specials_of(tokenizer))


def write_columns(out_dir: Path, columns: dict[str, dict[str, list]], tokenizer, stats: dict) -> tuple[Any, dict]:
    """Splits built in memory (classification and SFT rows: small tables) written as Arrow, the way
    `write_splits` writes them. Empty splits are left out (Arrow cannot infer a type from no rows);
    readers use .get()."""
    from datasets import Dataset, DatasetDict

    if not columns["train"][next(iter(columns["train"]))]:
        raise LmtuneError("the training split is empty: add data or lower data.val_fraction")
    dataset = DatasetDict({name: Dataset.from_dict(cols) for name, cols in columns.items() if cols[next(iter(cols))]})
    needed = sum(split.data.nbytes for split in dataset.values())
    check_free_space(out_dir, needed)
    with disk_errors(out_dir, needed):
        dataset.save_to_disk(str(out_dir))
    return tokenizer, stats


PREPARED_ENTRIES = (
    "prepare.json",
    "stats.json",
    "dataset_dict.json",
    "train",
    "validation",
    "test",
    "tokenizer",
    TOKEN_STORE,
)

# The objective's writer: (config, tokenizer or None, output folder) -> (tokenizer, stats), the splits on disk.
SplitFn = Callable[[RunConfig, Any, Path], tuple[Any, dict]]


def prepare(
    config: RunConfig, out_dir: Path, split_fn: SplitFn, tokenizer_fn: Callable[[], Any], quiet: bool = False
) -> Prepared:
    """Prepare `config.data` into `out_dir` with the objective's `split_fn(config, tokenizer, out_dir)`, which
    writes the splits (streamed, for packed text), or reuse an identical earlier result. `tokenizer_fn()`
    gives the tokenizer, only when one is needed.

    `out_dir` must be new, empty, or an earlier prepared folder of lmtune's (checked before any reading);
    only lmtune's own entries in it are replaced, and `prepare.json` is written last, so an interrupted
    prepare is never mistaken for a finished one; a failed write (a full disk) removes what it began. One
    writer at a time: a second prepare into the same folder is refused while the first runs."""
    if config.data.train and not isinstance(config.data.train, list) and is_prepared(Path(config.data.train)):
        return load_prepared(Path(config.data.train))
    out_dir = Path(out_dir)
    fingerprint = _fingerprint(config)
    marker = out_dir / "prepare.json"
    if (
        marker.exists()
        and is_lmtune_dir(out_dir)
        and is_prepared(out_dir)
        and json.loads(marker.read_text()).get("fingerprint") == fingerprint
    ):
        return load_prepared(out_dir)
    check_output_dir(out_dir, data_inputs(config), kind="prepared")
    with own_folder(out_dir, "prepared", "prepare"):
        tokenizer = tokenizer_fn() if config.tokenizer.train is None else None
        remove_own(out_dir, PREPARED_ENTRIES)
        try:
            needed = _needed_bytes(config)
            check_free_space(out_dir, needed)
            with disk_errors(out_dir, needed):
                tokenizer, stats = split_fn(config, tokenizer, out_dir)
                tokenizer.save_pretrained(out_dir / "tokenizer")
                (out_dir / "stats.json").write_text(json.dumps(stats, indent=2))
                (out_dir / "prepare.json").write_text(json.dumps({"fingerprint": fingerprint}))
        except BaseException:
            remove_own(out_dir, PREPARED_ENTRIES)  # nothing half-written that could pass for a dataset
            raise
    if not quiet:
        print_stats(stats, out_dir)
    return load_prepared(out_dir)


def print_stats(stats: dict[str, Any], path: Path | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"prepared data{f' -> {path}' if path else ''}", show_header=False, box=None)
    for key, value in stats.items():
        if isinstance(value, dict):
            for sub, n in value.items():
                table.add_row(f"[dim]{key}:[/dim] {sub}", f"{n:,}" if isinstance(n, int) else str(n))
        else:
            table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    Console(stderr=True).print(table)
