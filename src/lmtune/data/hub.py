"""Hugging Face datasets as text sources: a folder saved with `save_to_disk`, and
`hf:NAME[:CONFIG][@SPLIT]`, which `datasets.load_dataset` reads (a Hub dataset, or a local folder or file
of Parquet, JSON, CSV or text). Rows come one at a time (Arrow is memory-mapped), so a dataset of any
size streams through prepare; `data.streaming: true` also skips the local Arrow copy `load_dataset`
makes of a Hub dataset and reads it as it downloads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from lmtune.errors import LmtuneError
from lmtune.paths import HUB_PREFIX, split_hub_ref


def is_hub_ref(ref) -> bool:
    return isinstance(ref, str) and ref.startswith(HUB_PREFIX)


def is_saved_dataset(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists())


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else ""


def _check_column(dataset, text_column: str | None, where: str) -> None:
    columns = dataset.column_names
    if text_column is not None and columns is not None and text_column not in columns:
        raise LmtuneError(f"{where}: no column '{text_column}' (columns: {', '.join(columns)}); set data.text_column")


def saved_dataset_rows(path: Path, text_column: str | None, split: str = "train") -> Iterator[dict]:
    """The rows of a saved dataset folder (its `split`, else its first one), read from the memory-mapped Arrow."""
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except Exception as err:  # half-written or foreign folders: FileNotFoundError, ArrowInvalid, JSON errors
        raise LmtuneError(f"{path}: cannot read the saved dataset ({type(err).__name__}: {_first_line(err)})") from None
    if isinstance(dataset, DatasetDict):
        dataset = dataset[split if split in dataset else next(iter(dataset))]
    _check_column(dataset, text_column, str(path))
    return iter(dataset)


def hub_rows(ref: str, text_column: str | None, streaming: bool = False) -> Iterator[dict]:
    """The rows of `hf:NAME[:CONFIG][@SPLIT]` through `datasets.load_dataset`; any failure (offline, no such
    dataset, config or split, a damaged file) is one line naming the reference."""
    from datasets import load_dataset

    name, config, split = split_hub_ref(ref)
    if not name:
        raise LmtuneError(f"{ref}: name the dataset, as hf:NAME[:CONFIG][@SPLIT] (e.g. hf:wikitext:wikitext-2-raw-v1)")
    offline = (
        " (HF_HUB_OFFLINE is set: only datasets already cached or on this machine load)"
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
        and not Path(name).expanduser().exists()
        else ""
    )
    try:
        dataset = load_dataset(name, config, split=split, streaming=streaming)
    except Exception as err:  # DatasetNotFoundError, ConnectionError, ValueError (splits, configs), ...
        raise LmtuneError(
            f"{ref}: cannot load the dataset ({type(err).__name__}: {_first_line(err)}){offline}"
        ) from None
    _check_column(dataset, text_column, ref)
    rows = iter(dataset)
    while True:  # a streamed dataset reads (and can fail) as it goes
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as err:
            raise LmtuneError(f"{ref}: reading the dataset failed ({type(err).__name__}: {_first_line(err)})") from None
        if text_column is not None and text_column not in row:
            raise LmtuneError(f"{ref}: no column '{text_column}' (columns: {', '.join(row)}); set data.text_column")
        yield row
