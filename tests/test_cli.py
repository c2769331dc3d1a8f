"""The command line: bad input gets one line on stderr and a non-zero exit, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def lmtune(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lmtune.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def assert_one_line_error(result, fragment):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr


def test_help_lists_the_workflow():
    result = lmtune("--help")
    assert result.returncode == 0
    for command in ("prepare", "train", "eval", "generate"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "content,fragment",
    [
        (None, "file not found"),
        (b"", "no text found"),
        (b"\x00\x01binary\x00" * 100, "binary"),
    ],
)
def test_prepare_bad_input(tmp_path, content, fragment):
    path = tmp_path / "input.txt"
    if content is not None:
        path.write_bytes(content)
    assert_one_line_error(lmtune("prepare", path, "--model", "gpt-tiny", "--out", tmp_path / "out"), fragment)


def test_unknown_model(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    assert_one_line_error(lmtune("generate", "no-such-model-xyz", "hi"), "unknown model 'no-such-model-xyz'")
    assert_one_line_error(lmtune("generate", "smolm2-135m", "hi"), "did you mean smollm2-135m?")
    assert_one_line_error(lmtune("generate", tmp_path / "missing-dir", "hi"), "model not found")


def test_unknown_recipe_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("objective: clm\n")
    assert_one_line_error(lmtune("train", recipe, "--train.lrr", "1"), "did you mean 'train.lr'")


def test_prepare_then_train_then_generate(tmp_path, corpus_dir):
    out = tmp_path / "prepared"
    result = lmtune("prepare", corpus_dir, "--model", "gpt-tiny", "--out", out, "--block-size", "32")
    assert result.returncode == 0, result.stderr
    assert (out / "stats.json").exists() and (out / "dataset_dict.json").exists()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"objective: clm\noutput_dir: {tmp_path / 'run'}\nmodel: {{name: gpt-tiny}}\n"
        f"data: {{train: {out}}}\ntrain: {{max_steps: 3, precision: fp32}}\n"
    )
    result = lmtune("train", recipe)
    assert result.returncode == 0, result.stderr
    assert "val_perplexity" in result.stdout
    result = lmtune("generate", tmp_path / "run", "--prompt", "The king", "--max-new-tokens", "5", "--seed", "1")
    assert result.returncode == 0 and result.stdout.startswith("The king")
    result = lmtune("eval", tmp_path / "run", corpus_dir / "story00.txt", "--block-size", "32")
    assert result.returncode == 0 and "val_perplexity" in result.stdout
