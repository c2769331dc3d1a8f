"""Broken and unusual files, really written to disk: one clear error naming the file, or the data read
correctly; and bounded memory for a huge one-line file."""

import array
import bz2
import csv
import gzip
import json
import logging
import lzma
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from lmtune.data.ingest import is_plain_text, read_documents, read_lines
from lmtune.data.pack import _pieces, tokenize
from lmtune.errors import LmtuneError

TEXT = ("The play is the thing wherein I'll catch the conscience of the king. " * 40).encode()


@pytest.mark.parametrize(
    "name,content",
    [
        ("cut.txt.gz", gzip.compress(TEXT, mtime=0)[:60]),  # mtime 0: the same bytes (test id) in every worker
        ("junk.txt.gz", b"not gzip at all" * 20),
        ("cut.csv.bz2", bz2.compress(b"text\n" + TEXT)[:50]),
        ("junk.jsonl.bz2", b"BZh9 but not really" * 5),
        ("cut.txt.xz", lzma.compress(TEXT)[:40]),
    ],
)
def test_corrupt_compressed_files_are_named(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LmtuneError, match=rf"{name}: corrupt or truncated"):
        read_documents(path)


@pytest.mark.parametrize(
    "lines,fragment",
    [
        (['{"text": "a"}', "[1, 2]"], ":2: not a JSON object"),
        (['{"text": "a"}', '"just a string"'], ":2: not a JSON object"),
        (['{"text": "a"}', "3"], ":2: not a JSON object"),
        (['{"text": "a"}', '{"text": '], ":2: not valid JSON"),
    ],
)
def test_jsonl_lines_that_are_not_records(tmp_path, lines, fragment):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LmtuneError, match=rf"rows.jsonl{fragment}"):
        read_documents(path)


ROWS = [{"text": "good film", "label": 1}, {"text": "bad film", "label": 0}]


@pytest.mark.parametrize(
    "layout,data",
    [
        ("records", ROWS),  # pandas orient="records"
        ("column lists", {"text": ["good film", "bad film"], "label": [1, 0]}),  # to_dict(orient="list")
        ("orient=columns", {"text": {"0": "good film", "1": "bad film"}, "label": {"0": 1, "1": 0}}),
        ("orient=index", {"0": {"text": "good film", "label": 1}, "1": {"text": "bad film", "label": 0}}),
        ("orient=split", {"columns": ["text", "label"], "index": [0, 1], "data": [["good film", 1], ["bad film", 0]]}),
        ("wrapped", {"data": ROWS}),
    ],
)
def test_json_layouts_that_pandas_and_people_write_are_read_as_rows(tmp_path, layout, data):
    path = tmp_path / "reviews.json"
    path.write_text(json.dumps(data))
    docs = read_documents(path)
    assert [d.text for d in docs] == ["good film", "bad film"], layout
    assert [d.fields["label"] for d in docs] == [1, 0], layout


@pytest.mark.parametrize(
    "name,content,fragment",
    [
        (
            "cols.json",
            {"text": ["a", "b"], "label": [0]},
            "cols.json: the columns have different lengths (text: 2, label: 1)",
        ),
        ("items.json", ["a", "b"], "items.json: item 0 of the JSON list is not an object"),
        ("number.json", 3, "number.json: expected JSON records"),
        ("nested.jsonl", {"text": ["a", "b"]}, "nested.jsonl: record 1: 'text' is a JSON list, not text"),
        ("object.json", [{"text": {"en": "a"}}], "object.json: record 1: 'text' is a JSON object, not text"),
    ],
)
def test_json_that_holds_no_text_records_is_named(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_text(json.dumps(content))
    with pytest.raises(LmtuneError, match=re.escape(fragment)):
        read_documents(path)


def test_csv_fields_beyond_the_csv_modules_default_limit(tmp_path):
    path = tmp_path / "long.csv"
    chapter = "word " * 60_000  # 300,000 characters in one cell (the default limit is 131,072)
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([["text", "label"], [chapter, "x"]])
    assert read_documents(path)[0].text == chapter


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_bom_is_text_not_binary(tmp_path, encoding):
    path = tmp_path / "notes.txt"
    path.write_bytes("Ophelia, in thy orisons be all my sins remember'd.\n".encode(encoding) * 20)
    assert read_documents(path)[0].text.startswith("Ophelia, in thy orisons")


@pytest.mark.parametrize(
    "content",
    [
        bytes(range(256)) * 20,
        b"\x00\x01" * 500,  # NUL in every even byte, like UTF-16-BE ASCII, but control characters
        array.array("h", [i % 200 for i in range(4000)]).tobytes(),  # 16-bit samples: NUL in every odd byte
    ],
    ids=["all-bytes", "nul-01", "int16"],
)
@pytest.mark.parametrize("name", ["data.txt", "page.html"])
def test_binary_files_stay_binary(tmp_path, content, name):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LmtuneError, match=f"{name} looks like a binary file"):
        read_documents(path)
    if name.endswith(".txt"):
        with pytest.raises(LmtuneError, match=f"{name} looks like a binary file"):
            read_lines(path)


@pytest.mark.parametrize(
    "name,encode",
    [
        ("inputs.txt", lambda text: text.encode("cp1252")),
        ("inputs.txt", lambda text: text.encode("latin-1")),
        ("inputs.txt", lambda text: text.encode("utf-16")),
        ("inputs.txt.gz", lambda text: gzip.compress(text.encode("cp1252"))),
    ],
    ids=["cp1252", "latin-1", "utf-16", "cp1252-gz"],
)
def test_read_lines_detects_the_encoding(tmp_path, name, encode):
    path = tmp_path / name
    lines = ["Caf\u00e9 au lait [MASK].", "Na\u00efve [MASK] idea, tr\u00e8s cr\u00e8me br\u00fbl\u00e9e."]
    path.write_bytes(encode("\n".join(lines) + "\n"))
    assert is_plain_text(path) and not is_plain_text(tmp_path / "inputs.csv.gz")
    assert read_lines(path) == lines
    with pytest.raises(LmtuneError, match="file not found"):
        read_lines(tmp_path / "missing.txt")
    with pytest.raises(LmtuneError, match="is a folder"):
        read_lines(tmp_path)


def write_pdf(path, encrypt=None) -> bytes:
    from reportlab.pdfgen import canvas

    pdf = canvas.Canvas(str(path), encrypt=encrypt)
    for page in range(3):
        pdf.drawString(72, 720, f"Page {page} of a book about kings and ghosts.")
        pdf.showPage()
    pdf.save()
    return path.read_bytes()


def wrong_startxref(data: bytes) -> bytes:
    """pypdf repairs it, logging "incorrect startxref pointer"."""
    start = data.rindex(b"startxref") + len(b"startxref\n")
    end = data.index(b"\n", start)
    return data[:start] + str(int(data[start:end]) + 7).encode() + data[end:]


@pytest.mark.parametrize(
    "damage,fragment",
    [
        (lambda data: data[: len(data) // 3], "book.pdf: cannot read PDF, the file is damaged"),
        (lambda data: data[: len(data) // 2], "book.pdf: cannot read PDF, the file is damaged"),
        (wrong_startxref, None),  # read after all: no remark
    ],
    ids=["a-third", "half", "wrong-startxref"],
)
def test_damaged_pdfs_give_one_line_and_pypdf_stays_quiet(tmp_path, caplog, damage, fragment):
    path = tmp_path / "book.pdf"
    path.write_bytes(damage(write_pdf(path)))
    pypdf_level = logging.getLogger("pypdf").level
    with caplog.at_level(logging.DEBUG):
        if fragment:
            with pytest.raises(LmtuneError, match=fragment):
                read_documents(path)
        else:
            assert "Page 2 of a book" in read_documents(path)[0].text
    assert not [r for r in caplog.records if r.name.startswith("pypdf")]
    assert logging.getLogger("pypdf").level == pypdf_level  # quiet only while reading


def test_a_truncated_pdf_through_the_cli_prints_only_the_error_line(tmp_path):
    """A fresh process with the CLI's own logging: pypdf's "EOF marker not found" must not show."""
    path = tmp_path / "book.pdf"
    path.write_bytes(write_pdf(path)[:1500])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmtune.cli",
            "prepare",
            str(path),
            "--model",
            "gpt-tiny",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {path}: cannot read PDF"), lines[0]


def test_encrypted_and_compressed_pdfs(tmp_path):
    from reportlab.lib.pdfencrypt import StandardEncryption

    locked = tmp_path / "locked.pdf"
    write_pdf(locked, encrypt=StandardEncryption("secret"))
    with pytest.raises(LmtuneError, match="locked.pdf: the PDF is password-protected"):
        read_documents(locked)
    packed = tmp_path / "book.pdf.gz"
    packed.write_bytes(gzip.compress(write_pdf(tmp_path / "book.pdf")))
    assert "Page 1 of a book" in read_documents(packed)[0].text


@pytest.mark.parametrize("name", ["empty.txt.gz", "empty.csv.bz2", "empty.txt.xz"])
def test_an_empty_compressed_file_is_empty_not_corrupt(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(LmtuneError, match=f"no text found in {tmp_path / name}$"):
        read_documents(tmp_path / name)


def test_empty_files_in_a_folder_are_named(tmp_path, caplog):
    folder = tmp_path / "stories"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"")
    (folder / "b.md").write_text("  \n")
    with pytest.raises(LmtuneError, match=r"no text found in .*stories \(2 files, all empty\)"):
        read_documents(folder)
    (folder / "c.txt").write_text("Once upon a time.")
    with caplog.at_level(logging.WARNING):
        docs = read_documents(folder)
    assert [d.text for d in docs if d.text.strip()] == ["Once upon a time."]
    assert "2 file(s) without text skipped" in caplog.text and "a.txt" in caplog.text and "b.md" in caplog.text


def test_a_folder_where_a_file_is_expected_and_an_unsupported_folder(tmp_path):
    (tmp_path / "notes.txt").mkdir()  # a folder with a file's name
    with pytest.raises(LmtuneError, match="notes.txt: no readable files"):
        read_documents(tmp_path / "notes.txt")
    with pytest.raises(LmtuneError, match="notes.txt is a folder"):
        read_lines(tmp_path / "notes.txt")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "cover.png").write_bytes(b"\x89PNG")
    with pytest.raises(LmtuneError, match="images: no readable files"):
        read_documents(tmp_path / "images")


def test_unreadable_files_and_folders_are_named(tmp_path):
    """chmod 000 for real; as root (which reads anything) the reading process turns into the user nobody
    once its imports are done (nobody may not run this Python)."""
    folder = Path(tempfile.mkdtemp(prefix="lmtune-perm-"))  # /tmp: nobody may enter it, not tmp_path
    try:
        folder.chmod(0o755)
        for name in ("secret.txt", "secret.csv.gz", "stories/locked/b.txt", "stories/open/a.txt"):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(gzip.compress(b"text\nhidden\n") if name.endswith(".gz") else b"hidden")
            (folder / name).chmod(0o644 if "open" in name else 0)
        (folder / "stories" / "locked").chmod(0)  # Path.rglob would skip it without a word
        script = f"""
import codecs, os
from lmtune.data.ingest import read_documents, read_lines
from lmtune.errors import LmtuneError
codecs.lookup("utf-8-sig")  # nobody may not import it later
if os.geteuid() == 0:
    os.setgid(65534)
    os.setuid(65534)
for name, read in (("secret.txt", read_documents), ("secret.csv.gz", read_documents), ("secret.txt", read_lines),
                   ("stories", read_documents)):
    try:
        read(r"{folder}/" + name)
        print("read it")
    except LmtuneError as err:
        print(err)
"""
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.splitlines() == [
            f"{folder}/secret.txt: permission denied (cannot read the file)",
            f"{folder}/secret.csv.gz: permission denied (cannot read the file)",
            f"{folder}/secret.txt: permission denied (cannot read the file)",
            f"{folder}/stories/locked: permission denied (cannot list the folder)",
        ]
    finally:
        (folder / "stories" / "locked").chmod(0o755)
        shutil.rmtree(folder)


def test_pieces_cut_before_whitespace_give_the_same_tokens():
    from lmtune.models.load import load_tokenizer

    text = " ".join(f"word{i % 97} king's castle," for i in range(8_000))  # ~140k characters, one line
    pieces = list(_pieces(text, size=10_000))
    assert "".join(pieces) == text and len(pieces) > 10
    for name in ("gpt2-bpe", "minilm-l6"):
        tok = load_tokenizer(name, "gpt-tiny")
        whole = tok(text, add_special_tokens=False)["input_ids"]
        assert tokenize(tok, [text])[0].tolist() == whole, name


def test_tokenize_in_pieces_and_batches_keeps_each_text_whole(monkeypatch):
    from lmtune.data import pack
    from lmtune.models.load import load_tokenizer

    monkeypatch.setattr(pack, "CHUNK_CHARS", 1_000)
    monkeypatch.setattr(pack, "BATCH_CHARS", 2_500)
    tok = load_tokenizer("gpt2-bpe", "gpt-tiny")
    texts = ["", "A short one.", " ".join(f"ghost{i}" for i in range(900)), "Another\nshort one.", "x" * 3_500]
    ids = tokenize(tok, texts, batch_size=3)
    assert all(isinstance(x, np.ndarray) and x.dtype == np.int32 for x in ids)
    for text, got in zip(texts[:4], ids):  # cut at whitespace: identical to the whole-text call
        assert got.tolist() == tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids[4].tolist()) == texts[4]  # no whitespace to cut at: hard cuts, every character kept


def test_a_huge_file_without_newlines_keeps_memory_bounded(tmp_path):
    """8 MB on one line: every token is there, and peak memory grows by a few times the text (~30 MB
    here; ~220 MB with Python int lists for token ids and one re.sub over the whole line)."""
    path = tmp_path / "oneline.txt"
    path.write_text(" ".join(["the", "ghost", "walks", "at", "night"] * 320_000))
    (tmp_path / "warm.txt").write_text("a short text to import and warm up everything first")
    script = f"""
import json, resource
from lmtune.config import build_config
from lmtune.train.data import prepare_data

def prepare(name):
    config = build_config({{"model": {{"name": "gpt-tiny"}}, "data": {{"train": r"{tmp_path}/" + name,
                           "block_size": 256}}}})
    return prepare_data(config, r"{tmp_path}/out-" + name, quiet=True)

prepare("warm.txt")  # imports, the tokenizer, Arrow: the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
prepared = prepare("oneline.txt")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
stats = prepared.stats
first = prepared.dataset["train"][0]["input_ids"][:5]
expected = prepared.tokenizer("the ghost walks at night", add_special_tokens=False)["input_ids"]
print(json.dumps([stats["tokens"], stats["train tokens"] + stats["validation tokens"], first == expected,
                  (peak - base) // 1024]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    tokens, packed, first_ok, growth_mb = json.loads(done.stdout.splitlines()[-1])
    print("peak growth MB", growth_mb)
    assert tokens == 1_600_000 and packed == tokens + 2 and first_ok  # + one EOS after each split's text
    assert growth_mb < 120, growth_mb  # for 8 MB of text


def test_a_broken_saved_dataset_folder_is_named(tmp_path):
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{}")  # the marker without the data
    with pytest.raises(LmtuneError, match="saved: cannot read the saved dataset"):
        read_documents(folder)
