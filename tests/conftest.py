import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any accidental hub access fails loudly
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random  # noqa: E402

import pytest  # noqa: E402

WORDS = ("the king the queen the prince a ghost walks the castle at night and speaks of murder "
         "revenge is sworn the play is the thing to catch the conscience of the king").split()


def make_story(seed: int, sentences: int = 30) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(sentences):
        start = rng.randrange(len(WORDS) - 8)
        lines.append(" ".join(WORDS[start : start + rng.randrange(5, 9)]).capitalize() + ".")
    return "\n".join(lines)


@pytest.fixture
def corpus_dir(tmp_path):
    """A folder of 12 small stories (enough for a by-document split)."""
    folder = tmp_path / "stories"
    folder.mkdir()
    for i in range(12):
        (folder / f"story{i:02d}.txt").write_text(make_story(i))
    return folder


@pytest.fixture
def tiny_clm_config(tmp_path, corpus_dir):
    from lmtune.config import build_config

    def make(**train):
        return build_config({
            "objective": "clm", "output_dir": str(tmp_path / "run"),
            "model": {"name": "gpt-tiny", "dropout": 0.0},
            "tokenizer": {"train": {"kind": "bpe", "vocab_size": 300, "min_frequency": 1}},
            "data": {"train": str(corpus_dir), "block_size": 32},
            "train": {"batch_size": 8, "lr": 3e-3, "max_steps": 30, "eval_every": 10, "log_every": 5,
                      "warmup_steps": 0, "precision": "fp32", "threads": 2, **train},
            "report": {"compare_base": False},
        })

    return make


@pytest.fixture(scope="session")
def tiny_clm_run(tmp_path_factory):
    """A tiny GPT trained for a few steps on the story corpus; shared by inference and serving tests."""
    from lmtune.config import build_config
    from lmtune.train.loop import train

    root = tmp_path_factory.mktemp("clm")
    folder = root / "stories"
    folder.mkdir()
    for i in range(12):
        (folder / f"story{i:02d}.txt").write_text(make_story(i))
    config = build_config({
        "objective": "clm", "output_dir": str(root / "run"), "model": {"name": "gpt-tiny", "dropout": 0.0},
        "data": {"train": str(folder), "block_size": 32},
        "train": {"batch_size": 8, "lr": 3e-3, "max_steps": 20, "eval_every": 100, "precision": "fp32"},
        "report": {"compare_base": False}})
    return train(config, progress=False)["final_model"]


class CliResult:
    def __init__(self, code: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = code, stdout, stderr

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def run_cli_in_process(*args) -> CliResult:
    """`lmtune ARGS` through the real entry point (`lmtune.cli.main`), in this process: the same
    parsing, error handling and exit codes as the console script, without a fresh interpreter per case."""
    import contextlib
    import io
    import logging
    import sys

    from lmtune.cli import main

    out, err = io.StringIO(), io.StringIO()
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    streams = [h.setStream(err) for h in handlers]
    argv = sys.argv
    sys.argv = ["lmtune", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = argv
        for handler, stream in zip(handlers, streams):
            handler.setStream(stream)
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    return run_cli_in_process


def snapshot(folder) -> dict:
    """Every file under `folder` with its bytes: to prove nothing of the user's changed."""
    from pathlib import Path

    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory):
    """A tiny BERT classifier (pos/neg) and its JSONL training file, whose rows carry nested values."""
    import json

    from lmtune.config import build_config
    from lmtune.train.loop import train

    root = tmp_path_factory.mktemp("cls")
    rows = [{"text": f"{w} film {i}", "label": "pos" if w == "great" else "neg", "meta": {"id": i, "tags": [w]}}
            for i in range(40) for w in ("great", "awful")]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = build_config({"objective": "classify", "output_dir": str(root / "run"), "model": {"name": "bert-tiny"},
                           "data": {"train": str(root / "train.jsonl"), "block_size": 32},
                           "train": {"max_steps": 3, "precision": "fp32", "eval_every": 0},
                           "report": {"compare_base": False}})
    return train(config, progress=False)["final_model"], root / "train.jsonl"


def twin_models(model_class, config):
    """Two copies of one freshly initialised model: one for lmtune's loss, one for the library's own."""
    import torch

    torch.manual_seed(0)
    ours, theirs = model_class(config), model_class(config)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def assert_same_gradients(ours, theirs) -> None:
    import torch

    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4), name
