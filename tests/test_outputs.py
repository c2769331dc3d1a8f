"""Nothing the user has is ever lost: lmtune writes only into folders it made (or new/empty ones),
never over an input, and replaces only its own files."""

import json
import os
from pathlib import Path

import pytest

from lmtune.errors import LmtuneError
from lmtune.outputs import (
    MARKER,
    check_output_dir,
    check_output_file,
    claim_dir,
    remove_own,
)
from tests.conftest import snapshot


@pytest.fixture
def user_folder(tmp_path, corpus_dir):
    """A user's working folder: their source texts, notes and an edited recipe."""
    (corpus_dir / "notes.md").write_text("my notes: do not lose these\n")
    (corpus_dir / "config.yaml").write_text("objective: clm  # edited by hand\n")
    return corpus_dir


def prepare_args(corpus, out):
    return ["prepare", corpus / "story00.txt", "--model", "gpt-tiny", "--out", out, "--block-size", "32"]


@pytest.mark.parametrize(
    "where",
    [
        "input folder",
        "dot",
        "dotdot",
        "home",
        "parent of input",
        "user folder",
        "the input file",
        "inside input folder",
    ],
)
def test_prepare_never_writes_into_user_folders(cli, user_folder, tmp_path, monkeypatch, where):
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "thesis.tex").write_text("\\chapter{one}")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(user_folder)
    out = {
        "input folder": user_folder,
        "dot": ".",
        "dotdot": "..",
        "home": "~",
        "parent of input": tmp_path,
        "user folder": other,
        "the input file": user_folder / "story00.txt",
        "inside input folder": user_folder / "prepared",
    }[where]
    before, before_other = snapshot(user_folder), snapshot(other)
    args = prepare_args(user_folder, out)
    if where == "inside input folder":
        args[1] = user_folder  # the whole folder is the input: an output inside it would be read back
    result = cli(*args)
    assert result.returncode == 1, result.stderr
    assert (
        len(result.error_lines) == 1
        and "refusing to write" in result.error_lines[0]
        or "is a file" in result.error_lines[0]
    ), result.stderr
    assert snapshot(user_folder) == before and snapshot(other) == before_other
    assert not (user_folder / "prepared").exists()


def test_train_output_dir_rules(cli, user_folder, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"objective: clm\nmodel: {{name: gpt-tiny}}\ndata: {{train: {user_folder}, block_size: 32}}\n"
        "train: {max_steps: 2, precision: fp32}\nreport: {compare_base: false}\n"
    )
    before = snapshot(user_folder)
    # The input folder, and a foreign non-empty folder, are refused before any work.
    for out in (user_folder, tmp_path):
        result = cli("train", recipe, "--output-dir", out)
        assert result.returncode == 1 and "refusing to write" in result.error_lines[0], result.stderr
    assert snapshot(user_folder) == before

    run = tmp_path / "runs" / "a"
    assert cli("train", recipe, "--output-dir", run).returncode == 0
    assert json.loads((run / MARKER).read_text())["kind"] == "run"
    (run / "my-notes.txt").write_text("the user dropped a file into the run folder")
    again = cli("train", recipe, "--output-dir", run)
    assert again.returncode == 1 and "--overwrite" in again.error_lines[0]
    # --overwrite replaces lmtune's own output and nothing else.
    assert cli("train", recipe, "--output-dir", run, "--overwrite").returncode == 0
    assert (run / "my-notes.txt").read_text().startswith("the user dropped")
    assert (run / "final" / "config.json").exists()
    assert snapshot(user_folder) == before


def test_failed_train_leaves_no_half_made_run(cli, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"objective: clm\nmodel: {{name: gpt-tiny}}\ndata: {{train: {tmp_path / 'missing.txt'}}}\n")
    result = cli("train", recipe, "--output-dir", tmp_path / "runs" / "x")
    assert result.returncode == 1 and "file not found" in result.error_lines[0]
    assert not (tmp_path / "runs" / "x").exists()


def test_prepare_replaces_its_own_output_only(cli, corpus_dir, tmp_path):
    out = tmp_path / "prepared"
    assert cli(*prepare_args(corpus_dir, out)).returncode == 0
    (out / "README.txt").write_text("user file")
    result = cli(*prepare_args(corpus_dir, out), "--data.clean.dedup", "false")  # a new fingerprint
    assert result.returncode == 0, result.stderr
    assert (out / "README.txt").read_text() == "user file" and (out / "prepare.json").exists()


def test_output_dir_checks_unit(tmp_path):
    folder = claim_dir(tmp_path / "mine", "run")
    (folder / "final").mkdir()
    (folder / "keep.txt").write_text("x")
    remove_own(folder, ["final", "absent"])
    assert sorted(p.name for p in folder.iterdir()) == [MARKER, "keep.txt"]
    with pytest.raises(LmtuneError, match="not made by lmtune"):
        remove_own(tmp_path, ["mine"])
    with pytest.raises(LmtuneError, match="holds lmtune run output"):
        check_output_dir(folder, kind="prepared")
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty") == (tmp_path / "empty").resolve()


def test_output_file_checks(tmp_path):
    source = tmp_path / "reviews.jsonl"
    source.write_text('{"text": "a"}\n')
    with pytest.raises(LmtuneError, match="is the input file"):
        check_output_file(tmp_path / "." / "reviews.jsonl", [source])
    with pytest.raises(LmtuneError, match="does not exist"):
        check_output_file(tmp_path / "missing" / "p.csv", [source])
    (tmp_path / "p.csv").write_text("old")
    with pytest.raises(LmtuneError, match="--overwrite"):
        check_output_file(tmp_path / "p.csv", [source])
    assert check_output_file(tmp_path / "p.csv", [source], overwrite=True)


def test_classify_output_keeps_format_and_never_replaces_input(cli, tiny_classifier, tmp_path):
    model, source = tiny_classifier
    data = tmp_path / "x.jsonl"
    data.write_bytes(source.read_bytes())
    before = data.read_bytes()
    same = cli("classify", model, "--input", data, "--output", data)
    assert same.returncode == 1 and "is the input file" in same.error_lines[0]
    assert cli("classify", model, "--input", data, "--output", data, "--overwrite").returncode == 1
    assert data.read_bytes() == before

    # JSONL in, JSONL out: nested values stay JSON objects, not Python reprs.
    out = tmp_path / "predictions"
    result = cli("classify", model, "--input", data, "--output", out)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 80 and records[0]["meta"] == {"id": 0, "tags": ["great"]}
    assert set(records[0]["scores"]) == {"neg", "pos"} and records[0]["predicted_label"] in ("neg", "pos")
    # CSV asked for by name: nested values as JSON text.
    result = cli("classify", model, "--input", data, "--output", tmp_path / "p.csv")
    assert result.returncode == 0
    import csv

    first = next(csv.DictReader((tmp_path / "p.csv").open()))
    assert json.loads(first["meta"]) == {"id": 0, "tags": ["great"]} and "p_pos" in first
    # An existing output is kept unless --overwrite; no temporary file is left behind.
    again = cli("classify", model, "--input", data, "--output", tmp_path / "p.csv")
    assert again.returncode == 1 and "--overwrite" in again.error_lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "predictions", "x.jsonl"]


def test_classify_checks_the_output_before_the_work(cli, tiny_classifier, tmp_path, monkeypatch):
    model, source = tiny_classifier
    import lmtune.infer.classify as classify_module

    def must_not_run(*args, **kwargs):
        raise AssertionError("classified before checking the output path")

    monkeypatch.setattr(classify_module, "classify", must_not_run)
    result = cli("classify", model, "--input", source, "--output", tmp_path / "missing" / "p.csv")
    assert result.returncode == 1 and "does not exist" in result.error_lines[0]


def modes(folder) -> set[int]:
    return {p.stat().st_mode & 0o777 for p in Path(folder).rglob("*") if p.is_file()}


def test_written_files_follow_the_umask(cli, tiny_clm_run, tiny_classifier, tmp_path):
    """safetensors and mkstemp create private (0600) files: lmtune's outputs get the modes of any other file
    the user makes, so a model copied to a colleague can be read by them."""
    run = Path(tiny_clm_run).parent
    assert modes(run / "final") == {0o644} and modes(run / "checkpoints") == {0o644}
    previous = os.umask(0o027)
    try:
        assert cli("export", run, "--out", tmp_path / "export").returncode == 0
        model, source = tiny_classifier
        assert cli("classify", model, "--input", source, "--output", tmp_path / "p.csv").returncode == 0
    finally:
        os.umask(previous)
    assert modes(tmp_path / "export") == {0o640}
    assert (tmp_path / "export").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "p.csv").stat().st_mode & 0o777 == 0o640


def test_a_copied_runs_recipe_never_acts_on_the_original_run(cli, tiny_clm_run, tmp_path):
    """A run folder copied with its config.yaml still names the original in output_dir: --overwrite or
    --resume through the copy is refused, naming both folders, and the original is untouched."""
    import shutil

    original = tmp_path / "original"
    shutil.copytree(Path(tiny_clm_run).parent, original)
    config = (original / "config.yaml").read_text().replace(str(Path(tiny_clm_run).parent), str(original))
    (original / "config.yaml").write_text(config)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    before = snapshot(original)
    for flag in ("--overwrite", "--resume"):
        result = cli("train", copy / "config.yaml", flag)
        assert result.returncode == 1 and len(result.error_lines) == 1, result.stderr
        assert f"saved recipe of the run in {copy}" in result.error_lines[0]
        assert f"--output-dir {copy}" in result.error_lines[0] and str(original) in result.error_lines[0]
    assert snapshot(original) == before
