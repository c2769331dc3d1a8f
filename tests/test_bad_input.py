"""Bad input, table-driven across every command: a non-zero exit, exactly one `error:` line naming the
problem (and the file or key), no traceback, nothing partial left behind, nothing of the user's changed.

Cases run through the real entry point in this process (`conftest.run_cli_in_process`); a few run as
real subprocesses at the end to show the console script behaves the same."""

import gzip
import json
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port, make_story, run_cli_in_process, snapshot


@dataclass
class Workspace:
    user: Path  # the user's files: must never change
    out: Path  # where outputs may be created: must stay as it was after a failure
    clm: str
    classifier: str
    corrupt_model: Path


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_clm_run, tiny_classifier):
    import shutil

    root = tmp_path_factory.mktemp("bad-input")
    user, out = root / "user", root / "out"
    user.mkdir()
    out.mkdir()
    (user / "book.txt").write_text(make_story(1, 60))
    (user / "empty.txt").write_bytes(b"")
    (user / "binary.txt").write_bytes(b"\x00\x01\x02binary\x00" * 200)
    (user / "half.txt.gz").write_bytes(gzip.compress(make_story(2).encode() * 50)[:200])
    (user / "junk.csv.bz2").write_bytes(b"this is not bzip2 at all" * 10)
    (user / "nested.jsonl").write_text('{"text": "fine"}\n[1, 2, 3]\n')
    (user / "broken.jsonl").write_text('{"text": "fine"}\n{"text": \n')
    (user / "no-text-col.csv").write_text("review,label\ngood,1\nbad,0\n")
    (user / "fake.pdf").write_bytes(b"%PDF-1.4\n" + b"garbage " * 100)
    (user / "lines.txt").write_text("To be or not to be.\nThe play is the thing.\n")
    (user / "images").mkdir()
    (user / "images" / "a.png").write_bytes(b"\x89PNG....")
    (user / "bad.yaml").write_text("objective: clm\ntrain:\n  lr: [1e-4\n")
    (user / "list.yaml").write_text("- objective\n- clm\n")
    (user / "notes.md").write_text("the user's notes\n")
    corrupt = root / "corrupt-model"
    shutil.copytree(tiny_classifier[0], corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return Workspace(user, out, str(tiny_clm_run), str(tiny_classifier[0]), corrupt)


def recipe(ws: Workspace, name: str, **sections) -> Path:
    """A recipe file in the output area (not the user's): tiny model, the user's book."""
    body = {
        "objective": "clm",
        "output_dir": str(ws.out / f"run-{name}"),
        "model": {"name": "gpt-tiny"},
        "data": {"train": str(ws.user / "book.txt"), "block_size": 32},
        "train": {"max_steps": 2, "precision": "fp32"},
        "report": {"compare_base": False},
    }
    for key, value in sections.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    path = ws.out.parent / f"recipe-{name}.yaml"
    path.write_text(json.dumps(body))
    return path


def busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


U = lambda ws, name: ws.user / name  # noqa: E731
PREP = lambda ws, *a: ["prepare", *a, "--model", "gpt-tiny", "--out", ws.out / "prepared"]  # noqa: E731

# (id, args(ws), fragment the one error line must contain)
CASES = [
    # prepare: unreadable or unusable input
    ("prepare-missing", lambda ws: PREP(ws, U(ws, "nope.txt")), "file not found"),
    ("prepare-empty", lambda ws: PREP(ws, U(ws, "empty.txt")), "no text found"),
    ("prepare-binary", lambda ws: PREP(ws, U(ws, "binary.txt")), "binary"),
    ("prepare-truncated-gz", lambda ws: PREP(ws, U(ws, "half.txt.gz")), "half.txt.gz"),
    ("prepare-corrupt-bz2", lambda ws: PREP(ws, U(ws, "junk.csv.bz2")), "junk.csv.bz2"),
    ("prepare-jsonl-not-object", lambda ws: PREP(ws, U(ws, "nested.jsonl")), "nested.jsonl:2"),
    ("prepare-jsonl-invalid", lambda ws: PREP(ws, U(ws, "broken.jsonl")), "broken.jsonl:2"),
    ("prepare-csv-no-column", lambda ws: PREP(ws, U(ws, "no-text-col.csv")), "no column 'text'"),
    ("prepare-fake-pdf", lambda ws: PREP(ws, U(ws, "fake.pdf")), "fake.pdf"),
    ("prepare-no-readable-files", lambda ws: PREP(ws, U(ws, "images")), "no readable files"),
    ("prepare-block-0", lambda ws: PREP(ws, U(ws, "book.txt"), "--block-size", "0"), "--block-size"),
    ("prepare-block-negative", lambda ws: PREP(ws, U(ws, "book.txt"), "--block-size", "-5"), "--block-size"),
    (
        "prepare-block-beyond-context",
        lambda ws: PREP(ws, U(ws, "book.txt"), "--block-size", "4096"),
        "beyond the context of gpt-tiny (512 tokens)",
    ),
    (
        "prepare-unknown-key",
        lambda ws: PREP(ws, U(ws, "book.txt"), "--data.blok_size", "3"),
        "did you mean 'data.block_size'",
    ),
    ("prepare-bad-objective", lambda ws: PREP(ws, U(ws, "book.txt"), "--objective", "summarize"), "objective"),
    (
        "prepare-out-is-file",
        lambda ws: ["prepare", U(ws, "book.txt"), "--model", "gpt-tiny", "--out", U(ws, "notes.md")],
        "notes.md",
    ),
    (
        "prepare-out-input-folder",
        lambda ws: ["prepare", U(ws, "book.txt"), "--model", "gpt-tiny", "--out", ws.user],
        "refusing to write",
    ),
    (
        "prepare-out-parent-of-input",
        lambda ws: ["prepare", U(ws, "book.txt"), "--model", "gpt-tiny", "--out", ws.user.parent],
        "refusing to write",
    ),
    (
        "prepare-unknown-model",
        lambda ws: ["prepare", U(ws, "book.txt"), "--model", "no-such-model-xyz", "--out", ws.out / "prepared"],
        "no-such-model-xyz",
    ),
    (
        "prepare-stride-too-big",
        lambda ws: PREP(ws, U(ws, "book.txt"), "--block-size", "16", "--data.stride", "16"),
        "data.stride",
    ),
    ("prepare-val-fraction", lambda ws: PREP(ws, U(ws, "book.txt"), "--data.val_fraction", "1.5"), "data.val_fraction"),
    # train: recipes
    ("train-no-recipe", lambda ws: ["train", ws.out / "missing.yaml"], "recipe not found"),
    ("train-invalid-yaml", lambda ws: ["train", U(ws, "bad.yaml")], "bad.yaml:3"),
    ("train-yaml-not-mapping", lambda ws: ["train", U(ws, "list.yaml")], "mapping"),
    ("train-batch-0", lambda ws: ["train", recipe(ws, "b0", train={"batch_size": 0})], "train.batch_size"),
    ("train-grad-accum-negative", lambda ws: ["train", recipe(ws, "ga", train={"grad_accum": -1})], "train.grad_accum"),
    ("train-max-steps-0", lambda ws: ["train", recipe(ws, "ms", train={"max_steps": 0})], "train.max_steps"),
    ("train-lr-negative", lambda ws: ["train", recipe(ws, "lr", train={"lr": -1})], "train.lr"),
    (
        "train-every-problem-at-once",
        lambda ws: ["train", recipe(ws, "all", train={"batch_size": 0, "epochs": -1})],
        "train.batch_size' must be"[:16],
    ),
    ("train-unknown-key", lambda ws: ["train", recipe(ws, "uk"), "--train.lrr", "1"], "did you mean 'train.lr'"),
    ("train-bad-precision", lambda ws: ["train", recipe(ws, "p"), "--train.precision", "fp8"], "train.precision"),
    ("train-dropout-range", lambda ws: ["train", recipe(ws, "d"), "--model.dropout", "1.5"], "model.dropout"),
    (
        "train-block-beyond-context",
        lambda ws: ["train", recipe(ws, "ctx"), "--data.block_size", "4096"],
        "beyond the context",
    ),
    ("train-resume-and-overwrite", lambda ws: ["train", recipe(ws, "ro"), "--resume", "--overwrite"], "choose one"),
    (
        "train-output-is-input-folder",
        lambda ws: ["train", recipe(ws, "oi"), "--output-dir", ws.user],
        "refusing to write",
    ),
    (
        "train-missing-data",
        lambda ws: ["train", recipe(ws, "md", data={"train": str(ws.user / "gone.txt")})],
        "file not found",
    ),
    (
        "train-no-label-column",
        lambda ws: [
            "train",
            recipe(
                ws,
                "nl",
                objective="classify",
                model={"name": "bert-tiny"},
                data={"train": str(ws.user / "nested.jsonl")},
            ),
        ],
        "nested.jsonl",
    ),
    # eval
    ("eval-missing-model", lambda ws: ["eval", ws.out / "no-model", U(ws, "book.txt")], "model not found"),
    ("eval-missing-data", lambda ws: ["eval", ws.clm, U(ws, "gone.txt")], "file not found"),
    ("eval-block-0", lambda ws: ["eval", ws.clm, U(ws, "book.txt"), "--block-size", "0"], "--block-size"),
    ("eval-max-batches-0", lambda ws: ["eval", ws.clm, U(ws, "book.txt"), "--max-batches", "0"], "--max-batches"),
    ("eval-corrupt-weights", lambda ws: ["eval", ws.corrupt_model, U(ws, "book.txt")], "model.safetensors"),
    # generate
    ("generate-no-prompt", lambda ws: ["generate", ws.clm], "give a prompt"),
    ("generate-temperature", lambda ws: ["generate", ws.clm, "hi", "--temperature", "-1"], "temperature"),
    ("generate-top-p", lambda ws: ["generate", ws.clm, "hi", "--top-p", "1.5"], "top_p"),
    ("generate-top-k", lambda ws: ["generate", ws.clm, "hi", "--top-k", "-1"], "top_k"),
    ("generate-max-new-0", lambda ws: ["generate", ws.clm, "hi", "--max-new-tokens", "0"], "max_new_tokens"),
    ("generate-n-0", lambda ws: ["generate", ws.clm, "hi", "-n", "0"], "num_return_sequences"),
    ("generate-seed-huge", lambda ws: ["generate", ws.clm, "hi", "--seed", str(10**30)], "seed"),
    ("generate-preset", lambda ws: ["generate", "gpt-tiny", "hi"], "untrained preset"),
    ("generate-classifier", lambda ws: ["generate", ws.classifier, "hi"], "cannot generate"),
    ("generate-corrupt", lambda ws: ["generate", ws.corrupt_model, "hi"], "model.safetensors"),
    ("generate-unknown-option", lambda ws: ["generate", ws.clm, "hi", "--temprature", "1"], "--temprature"),
    # fill-mask
    ("fill-mask-no-text", lambda ws: ["fill-mask", ws.clm], "give a text"),
    ("fill-mask-no-mask", lambda ws: ["fill-mask", "minilm-l6", "no mask here"], "no mask"),
    ("fill-mask-top-k-0", lambda ws: ["fill-mask", "minilm-l6", "a [MASK].", "--top-k", "0"], "--top-k"),
    ("fill-mask-input-missing", lambda ws: ["fill-mask", "minilm-l6", "--input", U(ws, "gone.txt")], "gone.txt"),
    ("fill-mask-input-binary", lambda ws: ["fill-mask", "minilm-l6", "--input", U(ws, "binary.txt")], "binary"),
    ("fill-mask-causal-model", lambda ws: ["fill-mask", ws.clm, "a [MASK]."], "cannot fill-mask"),
    # classify
    ("classify-no-text", lambda ws: ["classify", ws.classifier], "give text"),
    ("classify-input-missing", lambda ws: ["classify", ws.classifier, "--input", U(ws, "gone.csv")], "gone.csv"),
    (
        "classify-output-dir-missing",
        lambda ws: ["classify", ws.classifier, "--input", U(ws, "lines.txt"), "--output", ws.out / "no" / "p.csv"],
        "does not exist",
    ),
    (
        "classify-output-is-input",
        lambda ws: ["classify", ws.classifier, "--input", U(ws, "nested.jsonl"), "--output", U(ws, "nested.jsonl")],
        "is the input file",
    ),
    (
        "classify-output-exists",
        lambda ws: ["classify", ws.classifier, "a", "--output", U(ws, "notes.md")],
        "--overwrite",
    ),
    ("classify-batch-0", lambda ws: ["classify", ws.classifier, "a", "--batch-size", "0"], "--batch-size"),
    ("classify-causal-model", lambda ws: ["classify", ws.clm, "a"], "cannot classify"),
    (
        "classify-no-text-column",
        lambda ws: ["classify", ws.classifier, "--input", U(ws, "no-text-col.csv")],
        "no column 'text'",
    ),
    ("classify-corrupt-input", lambda ws: ["classify", ws.classifier, "--input", U(ws, "half.txt.gz")], "half.txt.gz"),
    # serve
    ("serve-port-0", lambda ws: ["serve", ws.clm, "--port", "0"], "--port"),
    ("serve-port-too-big", lambda ws: ["serve", ws.clm, "--port", "70000"], "--port"),
    ("serve-port-busy", lambda ws: ["serve", ws.clm, "--port", ws.busy], "is another server running"),
    ("serve-missing-model", lambda ws: ["serve", ws.out / "gone", "--port", free_port()], "model not found"),
    (
        "serve-bad-host",
        lambda ws: ["serve", ws.clm, "--host", "no.such.host.invalid", "--port", free_port()],
        "no.such.host.invalid",
    ),
    ("serve-max-new-0", lambda ws: ["serve", ws.clm, "--max-new-tokens", "0"], "--max-new-tokens"),
    # bench
    ("bench-unknown-section", lambda ws: ["bench", "--only", "everything"], "unknown bench section"),
    ("bench-out-user-folder", lambda ws: ["bench", "--only", "data", "--out", ws.user], "refusing to write"),
    # the command line itself
    ("unknown-command", lambda ws: ["trian", "x.yaml"], "trian"),
]


@pytest.fixture(scope="module")
def busy(ws):
    sock = busy_port()
    ws.busy = sock.getsockname()[1]
    yield
    sock.close()


@pytest.mark.parametrize("case_id,make_args,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(ws, busy, case_id, make_args, fragment):
    args = make_args(ws)
    before_user, before_out = snapshot(ws.user), sorted(p.name for p in ws.out.iterdir())
    result = run_cli_in_process(*args)
    assert result.returncode != 0, (case_id, result.stdout[-500:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.error_lines) == 1, result.stderr
    assert fragment in result.error_lines[0], (fragment, result.error_lines[0])
    assert snapshot(ws.user) == before_user, "a user file changed"
    assert sorted(p.name for p in ws.out.iterdir()) == before_out, "something partial was left behind"


def test_there_are_enough_cases():
    assert len(CASES) >= 60
    assert {c[0].split("-")[0] for c in CASES} >= {
        "prepare",
        "train",
        "eval",
        "generate",
        "fill",
        "classify",
        "serve",
        "bench",
    }


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["train", "{user}/bad.yaml"], "bad.yaml:3"),
        (["generate", "{clm}", "hi", "--top-p", "1.5"], "top_p"),
        (["serve", "{clm}", "--port", "70000"], "--port"),
    ],
)
def test_the_console_script_behaves_the_same(ws, args, fragment):
    args = [a.format(user=ws.user, clm=ws.clm) for a in args]
    done = subprocess.run(
        [sys.executable, "-m", "lmtune.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], done.stderr


def test_a_failing_report_does_not_fail_a_good_run(ws, monkeypatch):
    import lmtune.train.report as report

    def broken(*args, **kwargs):
        raise RuntimeError("the comparison broke")

    monkeypatch.setattr(report, "print_report", broken)
    run = ws.out.parent / "report-run"
    path = recipe(ws, "report", output_dir=str(run))
    result = run_cli_in_process("train", path)
    assert result.returncode == 0, result.stderr
    assert "warning: the end-of-run report failed" in result.stderr
    assert (run / "final" / "config.json").exists()
