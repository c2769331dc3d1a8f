"""Inputs that used to hang or flood memory, really made on disk: symlink loops, FIFOs, devices, a
decompression bomb; formats that are not text; lmtune's own outputs next to the data."""

import gzip
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmtune.data.files import list_folder
from lmtune.data.ingest import read_documents
from lmtune.errors import LmtuneError

# The reader alone, in a process with a hard memory cap and a timeout: a hang or a flood fails the test.
READ_CAPPED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from lmtune.data.ingest import read_documents
from lmtune.errors import LmtuneError
try:
    docs = read_documents(sys.argv[1])
    print(f"read {len(docs)} documents:", sorted({d.source for d in docs}))
except LmtuneError as err:
    print(f"error: {err}")
"""


def read_capped(path, timeout=60) -> str:
    result = subprocess.run(
        [sys.executable, "-c", READ_CAPPED, str(path)], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip() + result.stderr


def test_symlink_loops_are_walked_once_and_named(tmp_path, caplog):
    folder = tmp_path / "stories"
    folder.mkdir()
    for i in range(3):
        (folder / f"s{i}.txt").write_text(f"story {i} " * 20)
    (folder / "self").symlink_to(".")
    (folder / "up").symlink_to("..")
    (folder / "again.txt").symlink_to(folder / "s0.txt")
    out = read_capped(folder)
    assert out.startswith("read 3 documents:"), out
    with caplog.at_level(logging.WARNING, logger="lmtune.data"):
        listing = list_folder(folder)
        listing.warn()
    assert sorted(p.resolve().name for p in listing.files) == ["s0.txt", "s1.txt", "s2.txt"]
    assert len(listing.files) == 3 and len(listing.loops) == 2 and listing.repeats == 1
    assert "2 symlink loop(s)" in caplog.text and "self ->" in caplog.text and "up ->" in caplog.text


def test_fifos_devices_and_sockets_are_named_not_read(tmp_path, caplog):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    assert "error: " in (out := read_capped(fifo, timeout=30)) and "a FIFO (named pipe), not a regular file" in out
    for device, kind in (("/dev/zero", "a character device"), ("/dev/urandom", "a character device")):
        out = read_capped(device, timeout=30)
        assert out.startswith(f"error: {device} is {kind}, not a regular file"), out
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "book.txt").write_text("a real book " * 30)
    os.mkfifo(folder / "stuck.txt")
    with caplog.at_level(logging.WARNING, logger="lmtune.data"):
        docs = read_documents(folder)
    assert [Path(d.source).name for d in docs] == ["book.txt"]
    assert "not regular files" in caplog.text and "stuck.txt" in caplog.text


def test_eval_and_prepare_of_a_device_give_one_line_at_once(cli, tiny_clm_run, tmp_path):
    for args in (
        ["eval", tiny_clm_run, "/dev/zero"],
        ["prepare", "/dev/urandom", "--model", "gpt-tiny", "--out", tmp_path / "p"],
    ):
        result = cli(*args)
        assert result.returncode == 1 and len(result.error_lines) == 1, result.stderr
        assert "is a character device, not a regular file" in result.error_lines[0]


def test_a_decompression_bomb_and_an_oversized_file_hit_the_cap(tmp_path, monkeypatch):
    monkeypatch.setenv("LMTUNE_MAX_INPUT_MB", "1")
    bomb = tmp_path / "small.txt.gz"
    bomb.write_bytes(gzip.compress(b"a" * (3 << 20)))
    assert bomb.stat().st_size < 50_000
    with pytest.raises(LmtuneError, match=r"small.txt.gz decompresses to more than that.*LMTUNE_MAX_INPUT_MB"):
        read_documents(bomb)
    big = tmp_path / "big.txt"
    big.write_bytes(b"word " * 300_000)
    with pytest.raises(LmtuneError, match=r"big.txt is 1 MB, more than lmtune reads from one file \(1 MB\)"):
        read_documents(big)


@pytest.mark.parametrize(
    "name,content",
    [("letter.rtf", rb"{\rtf1\ansi Hello}"), ("notes.docx", b"PK\x03\x04..."), ("letter", rb"{\rtf1\ansi Hello}")],
)
def test_formats_that_are_not_text_are_refused_by_name(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LmtuneError, match=r"(RTF|Word).*lmtune reads \.txt"):
        read_documents(path)


def test_lmtune_outputs_beside_the_data_are_skipped_and_named(cli, tmp_path, caplog):
    data = tmp_path / "in"
    data.mkdir()
    for i in range(12):
        (data / f"story{i:02d}.txt").write_text(f"Once upon a time, story number {i}. " * 20)
    # A prepared dataset written into the input's folder (allowed for a file input), then a run beside it.
    assert (
        cli(
            "prepare", data / "story00.txt", "--model", "gpt-tiny", "--out", data / "sub", "--block-size", "16"
        ).returncode
        == 0
    )
    run_dir = data / "run"
    run_dir.mkdir()
    (run_dir / ".lmtune").write_text(json.dumps({"kind": "run"}))
    (run_dir / "config.json").write_text('{"not": "text"}')
    with caplog.at_level(logging.WARNING, logger="lmtune.data"):
        docs = read_documents(data)
    assert sorted(Path(d.source).name for d in docs) == [f"story{i:02d}.txt" for i in range(12)]
    assert "2 lmtune output folder(s)" in caplog.text
    result = cli("prepare", run_dir, "--model", "gpt-tiny", "--out", tmp_path / "p")
    assert result.returncode == 1 and "is an lmtune run folder, not data" in result.error_lines[0]


def test_a_half_written_prepared_folder_is_not_read_as_data(tmp_path):
    folder = tmp_path / "prepared"
    folder.mkdir()
    (folder / ".lmtune").write_text(json.dumps({"kind": "prepared"}))
    (folder / "dataset_dict.json").write_text('{"splits": ["train"]}')
    with pytest.raises(LmtuneError, match="unfinished lmtune prepare output"):
        read_documents(folder)


def test_missing_labels_are_dropped_and_label_ids_are_stable(tmp_path, caplog):
    from lmtune.config import build_config
    from lmtune.models.load import load_tokenizer
    from lmtune.tasks.classify import prepare_splits

    rows = [("good", "1"), ("bad", "0"), ("meh", "NaN"), ("fine", "1"), ("awful", "0"), ("?", "nan"), ("x", "")]
    table = tmp_path / "t.csv"
    table.write_text("text,label\n" + "".join(f"{t} film {i},{label}\n" for i in range(6) for t, label in rows))
    config = build_config({"objective": "classify", "data": {"train": str(table), "block_size": 16}})
    with caplog.at_level(logging.WARNING, logger="lmtune"):
        columns, _, stats = prepare_splits(config, load_tokenizer(None, "bert-tiny"))
    assert stats["labels"] == ["0", "1"] and stats["rows"] == 24  # NaN, nan and empty are not classes
    assert "18 row(s) without a label" in caplog.text and stats["cleaning"]["rows without a label"] == 18
    assert sorted(set(columns["train"]["label"])) == [0, 1]
