"""Model resolution: what a model name means (alias, preset, folder, run folder, .gguf, hub id)."""

import json

import pytest

from lmtune.errors import LmtuneError
from lmtune.models.resolve import (
    PRESETS,
    check_block_size,
    context_length,
    resolve,
    run_model_dir,
)


def test_presets_aliases_and_hub_ids():
    assert resolve("gpt-tiny").kind == "preset" and "gpt-tiny" in PRESETS
    minilm = resolve("minilm-l6")
    assert minilm.kind == "folder" and (__import__("pathlib").Path(minilm.path) / "config.json").exists()
    assert resolve("someone/some-model").kind == "hub"  # resolved by name only; nothing is downloaded
    with pytest.raises(LmtuneError, match="model not found"):
        resolve("./no/such/folder")
    with pytest.raises(LmtuneError, match="GGUF file not found"):
        resolve("missing.gguf")


def test_run_folders_resolve_to_final_then_newest_checkpoint(tmp_path):
    run = tmp_path / "run"
    for step in (2, 10):
        folder = run / "checkpoints" / f"step-{step}"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / "trainer_state.pt").write_bytes(b"x")
    (run / "checkpoints" / "step-11.tmp").mkdir()  # never a checkpoint
    assert run_model_dir(run).name == "step-10"  # numeric order, not text order
    (run / "final").mkdir()
    (run / "final" / "config.json").write_text("{}")
    assert resolve(str(run)).path == str(run / "final")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmtuneError, match="neither a model folder"):
        resolve(str(tmp_path / "empty"))


def test_context_length_from_config_alone(tmp_path):
    assert context_length("gpt-tiny") == 512 and context_length("minilm-l6") == 512
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 64}))
    assert context_length(str(folder)) == 64
    check_block_size(str(folder), 64)
    with pytest.raises(LmtuneError, match="beyond the context"):
        check_block_size(str(folder), 65)
