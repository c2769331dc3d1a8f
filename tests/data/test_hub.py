"""`hf:NAME[:CONFIG][@SPLIT]` through `datasets.load_dataset`, streamed or not, and saved dataset folders:
exercised here on local Parquet files and folders (HF_HUB_OFFLINE is set: nothing reaches the network)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import load_from_disk

from lmtune.config import build_config
from lmtune.data.ingest import read_documents
from lmtune.errors import LmtuneError
from lmtune.train.data import prepare_data
from tests.conftest import make_story

TEXTS = [make_story(i) for i in range(14)]


@pytest.fixture
def parquet_folder(tmp_path, monkeypatch):
    """A dataset folder as the Hub holds one: Parquet files whose names give the splits."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))  # not ~/.cache
    folder = tmp_path / "stories-ds"
    (folder / "data").mkdir(parents=True)
    for split, rows in (("train", range(12)), ("test", range(12, 14))):
        pq.write_table(
            pa.table({"text": [TEXTS[i] for i in rows], "n": list(rows)}),
            folder / "data" / f"{split}-00000-of-00001.parquet",
        )
    return folder


def _prepare(tmp_path, train, name, **data):
    config = build_config(
        {"objective": "clm", "model": {"name": "gpt-tiny"}, "data": {"train": train, "block_size": 32, **data}}
    )
    return prepare_data(config, tmp_path / name, quiet=True)


@pytest.mark.parametrize("streaming", [False, True])
def test_hub_reference_prepares_what_the_same_files_prepare(tmp_path, parquet_folder, streaming):
    """hf:FOLDER (what load_dataset makes of a Hub dataset's Parquet files) gives the same prepared data as
    lmtune's own Parquet reader on those files; @test picks the other split."""
    direct = _prepare(tmp_path, str(parquet_folder / "data" / "train-00000-of-00001.parquet"), "direct")
    hub = _prepare(tmp_path, f"hf:{parquet_folder}", f"hub-{streaming}", streaming=streaming)
    for split in ("train", "validation"):
        assert hub.dataset[split]["input_ids"][:] == direct.dataset[split]["input_ids"][:]
    assert hub.stats["documents"] == 12 and hub.stats["tokens"] == direct.stats["tokens"]
    docs = read_documents(f"hf:{parquet_folder}@test", streaming=streaming)
    assert [d.text for d in docs] == TEXTS[12:] and docs[0].fields["n"] == 12  # the whole row comes along


def test_streaming_does_not_copy_the_dataset(tmp_path, parquet_folder):
    """Streamed, load_dataset reads the files as they are; not streamed, it first converts them to Arrow in
    its cache (what a Hub download becomes)."""
    import datasets

    cache = tmp_path / "hf-cache"
    read_documents(f"hf:{parquet_folder}", streaming=True)
    assert not list(cache.rglob("*.arrow"))
    read_documents(f"hf:{parquet_folder}", streaming=False)
    assert list(cache.rglob("*.arrow")) and datasets.config.HF_DATASETS_CACHE == str(cache)


def test_saved_dataset_folders_are_read(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict(
        {"train": Dataset.from_dict({"text": TEXTS[:12]}), "test": Dataset.from_dict({"text": ["x"]})}
    ).save_to_disk(str(tmp_path / "dict"))
    prepared = _prepare(tmp_path, str(tmp_path / "dict"), "prepared")
    assert prepared.stats["documents"] == 12  # the train split
    assert load_from_disk(str(tmp_path / "prepared"))["train"].num_rows == prepared.stats["train blocks"]
    assert json.loads((tmp_path / "prepared" / "stats.json").read_text()) == prepared.stats


@pytest.mark.parametrize(
    "ref,message",
    [
        ("hf:no-such-user/no-such-dataset", "hf:no-such-user/no-such-dataset: cannot load the dataset"),
        ("hf:{folder}@nosplit", "cannot load the dataset .*nosplit"),
        ("hf:", "name the dataset"),
    ],
)
def test_a_dataset_that_cannot_load_is_one_line(tmp_path, parquet_folder, ref, message):
    with pytest.raises(LmtuneError, match=message):
        read_documents(ref.format(folder=parquet_folder), streaming=True)


def test_a_missing_text_column_is_named(tmp_path, parquet_folder, cli):
    result = cli(
        "prepare",
        f"hf:{parquet_folder}",
        "--model",
        "gpt-tiny",
        "--out",
        tmp_path / "p",
        "--data.text_column",
        "body",
        "--data.streaming",
        "true",
    )
    assert result.returncode == 1 and len(result.error_lines) == 1, result.stderr[-2000:]
    assert "no column 'body'" in result.error_lines[0] and "text, n" in result.error_lines[0]
    assert not (tmp_path / "p").exists()
