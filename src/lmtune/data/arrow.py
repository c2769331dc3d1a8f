"""A dataset written to disk as it is made: each split's rows go into Arrow shards through the `datasets`
library's own `ArrowWriter`, laid out as `DatasetDict.save_to_disk` lays a dataset out (`dataset_dict.json`;
per split `data-0000i-of-0000n.arrow`, `dataset_info.json`, `state.json`), so `datasets.load_from_disk`
memory-maps it like any saved dataset. Nothing is held whole: rows wait in a batch of `BATCH_ROWS`, a shard
is closed at `SHARD_BYTES`. (Saving a finished `Dataset` instead would write everything twice, and read
the first copy back through memory-mapped pages that all count as the process's memory.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import DatasetInfo, Features, List, Value
from datasets import config as datasets_config
from datasets.arrow_writer import ArrowWriter
from datasets.fingerprint import generate_random_fingerprint

TOKENS = Features({"input_ids": List(Value("int32"))})  # what Dataset.from_dict gives int32 blocks
BATCH_ROWS = datasets_config.DEFAULT_MAX_BATCH_SIZE  # rows per Arrow record batch, as datasets writes them
SHARD_BYTES = 500 * 2**20  # save_to_disk's default max_shard_size


class SplitWriter:
    """One split of token blocks (`input_ids`), appended a few at a time into `folder`."""

    def __init__(self, folder: Path, shard_bytes: int | None = None):
        self.folder, self.shard_bytes = Path(folder), shard_bytes or SHARD_BYTES
        self.batch: list[np.ndarray] = []
        self.shards: list[Path] = []
        self.writer: ArrowWriter | None = None
        self.shard_size = 0
        self.rows = 0
        self.tokens = 0

    def write(self, blocks: list[np.ndarray]) -> None:
        self.batch += blocks
        if len(self.batch) >= BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self.batch:
            return
        lengths = np.fromiter((len(b) for b in self.batch), dtype=np.int32, count=len(self.batch))
        offsets = np.concatenate([np.zeros(1, np.int32), np.cumsum(lengths, dtype=np.int32)])
        values = np.concatenate(self.batch)
        column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
        if self.writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.shards.append(self.folder / f"shard-{len(self.shards):05d}.arrow")
            self.writer = ArrowWriter(features=TOKENS, path=str(self.shards[-1]))
        self.writer.write_table(pa.Table.from_arrays([column], names=["input_ids"]))
        self.rows += len(self.batch)
        self.tokens += len(values)
        self.shard_size += values.nbytes + offsets.nbytes
        self.batch = []
        if self.shard_size >= self.shard_bytes:
            self._close_shard()

    def _close_shard(self) -> None:
        if self.writer is not None:
            self.writer.finalize()
            self.writer.close()
            self.writer, self.shard_size = None, 0

    def close(self) -> int:
        """Finish the split: its shards named as save_to_disk names them, and the two files that describe
        them. Returns its number of rows (an empty split leaves nothing behind)."""
        self._flush()
        self._close_shard()
        if not self.rows:
            return 0
        names = [f"data-{i:05d}-of-{len(self.shards):05d}.arrow" for i in range(len(self.shards))]
        for shard, name in zip(self.shards, names):
            shard.rename(self.folder / name)
        DatasetInfo(features=TOKENS).write_to_directory(str(self.folder))
        state = {
            "_data_files": [{"filename": name} for name in names],
            "_fingerprint": generate_random_fingerprint(),
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        state_file = self.folder / datasets_config.DATASET_STATE_JSON_FILENAME
        state_file.write_text(json.dumps(state, indent=2, sort_keys=True))
        return self.rows


def write_dataset_dict(folder: Path, splits: list[str]) -> None:
    """The file that makes `folder` a DatasetDict of these (finished) splits."""
    (Path(folder) / datasets_config.DATASETDICT_JSON_FILENAME).write_text(json.dumps({"splits": splits}))
