"""The prepare cache: an unchanged recipe reuses the prepared folder; any change in data, cleaning,
tokenizer or objective prepares anew; an interrupted prepare is never taken for a finished one."""

import json

from lmtune.config import build_config
from lmtune.data.prepare import is_prepared
from lmtune.train.data import prepare_data


def config_for(corpus_dir, **data):
    return build_config(
        {
            "objective": "clm",
            "model": {"name": "gpt-tiny"},
            "data": {"train": str(corpus_dir), "block_size": 32, **data},
        }
    )


def test_unchanged_recipe_reuses_and_a_change_redoes(tmp_path, corpus_dir):
    out = tmp_path / "prepared"
    first = prepare_data(config_for(corpus_dir), out, quiet=True)
    stamp = (out / "prepare.json").stat().st_mtime_ns
    again = prepare_data(config_for(corpus_dir), out, quiet=True)
    assert (out / "prepare.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    assert again.stats == first.stats
    changed = prepare_data(config_for(corpus_dir, block_size=16), out, quiet=True)
    assert changed.stats["block_size"] == 16 and (out / "prepare.json").stat().st_mtime_ns != stamp
    # A prepared folder given as the data is used as it is.
    reused = prepare_data(build_config({"objective": "clm", "data": {"train": str(out)}}), tmp_path / "x", quiet=True)
    assert reused.path == out and not (tmp_path / "x").exists()


def test_interrupted_prepare_is_not_reused(tmp_path, corpus_dir):
    out = tmp_path / "prepared"
    prepare_data(config_for(corpus_dir), out, quiet=True)
    (out / "prepare.json").unlink()  # what a kill before the last write leaves
    assert not is_prepared(out)
    prepare_data(config_for(corpus_dir), out, quiet=True)
    assert is_prepared(out) and json.loads((out / "prepare.json").read_text())["fingerprint"]
