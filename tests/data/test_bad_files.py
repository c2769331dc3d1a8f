"""Broken and unusual files, really written to disk: one clear error naming the file, or the data read
correctly; and bounded memory for a huge one-line file."""
import bz2
import csv
import gzip
import json
import logging
import lzma
import subprocess
import sys

import pytest

from lmtune.data.ingest import read_documents, read_lines
from lmtune.data.pack import _pieces, tokenize
from lmtune.errors import LmtuneError

TEXT = ("The play is the thing wherein I'll catch the conscience of the king. " * 40).encode()


@pytest.mark.parametrize("name,content", [
    ("cut.txt.gz", gzip.compress(TEXT)[:60]),
    ("junk.txt.gz", b"not gzip at all" * 20),
    ("cut.csv.bz2", bz2.compress(b"text\n" + TEXT)[:50]),
    ("junk.jsonl.bz2", b"BZh9 but not really" * 5),
    ("cut.txt.xz", lzma.compress(TEXT)[:40]),
])
def test_corrupt_compressed_files_are_named(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LmtuneError, match=rf"{name}: corrupt or truncated"):
        read_documents(path)


@pytest.mark.parametrize("lines,fragment", [
    (['{"text": "a"}', "[1, 2]"], ":2: not a JSON object"),
    (['{"text": "a"}', '"just a string"'], ":2: not a JSON object"),
    (['{"text": "a"}', "3"], ":2: not a JSON object"),
    (['{"text": "a"}', '{"text": '], ":2: not valid JSON"),
])
def test_jsonl_lines_that_are_not_records(tmp_path, lines, fragment):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LmtuneError, match=rf"rows.jsonl{fragment}"):
        read_documents(path)


def test_json_in_column_layout_is_read_as_rows(tmp_path):
    path = tmp_path / "columns.json"
    path.write_text(json.dumps({"text": ["good film", "bad film"], "label": [1, 0]}))
    docs = read_documents(path)
    assert [d.text for d in docs] == ["good film", "bad film"] and docs[1].fields["label"] == 0
    path.write_text(json.dumps(["a", "b"]))
    with pytest.raises(LmtuneError, match="columns.json: item 0 of the JSON list is not an object"):
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
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(LmtuneError, match="binary"):
        read_documents(binary)


def test_read_lines_detects_the_encoding(tmp_path):
    path = tmp_path / "inputs.txt"
    path.write_bytes("Caf\u00e9 au lait [MASK].\nNa\u00efve [MASK] idea.\n".encode("cp1252"))
    assert read_lines(path) == ["Caf\u00e9 au lait [MASK].", "Na\u00efve [MASK] idea."]
    with pytest.raises(LmtuneError, match="file not found"):
        read_lines(tmp_path / "missing.txt")
    with pytest.raises(LmtuneError, match="is a folder"):
        read_lines(tmp_path)


def test_a_truncated_pdf_is_one_line_and_pypdf_stays_quiet(tmp_path, caplog):
    from reportlab.pdfgen import canvas

    path = tmp_path / "book.pdf"
    pdf = canvas.Canvas(str(path))
    for page in range(3):
        pdf.drawString(72, 720, f"Page {page} of a book about kings and ghosts.")
        pdf.showPage()
    pdf.save()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with caplog.at_level(logging.WARNING):
        with pytest.raises(LmtuneError, match="book.pdf: cannot read PDF"):
            read_documents(path)
    assert not [r for r in caplog.records if r.name.startswith("pypdf")]


def test_pieces_cut_before_whitespace_give_the_same_tokens():
    from lmtune.models.load import load_tokenizer

    text = " ".join(f"word{i % 97} king's castle," for i in range(8_000))  # ~140k characters, one line
    pieces = _pieces(text, size=10_000)
    assert "".join(pieces) == text and len(pieces) > 10
    for name in ("gpt2-bpe", "minilm-l6"):
        tok = load_tokenizer(name, "gpt-tiny")
        whole = tok(text, add_special_tokens=False)["input_ids"]
        assert tokenize(tok, [text])[0] == whole, name


def test_a_huge_file_without_newlines_keeps_memory_bounded(tmp_path):
    """8 MB on one line: peak memory grows by well under the ~1 GB the whole-text tokenizer call took."""
    path = tmp_path / "oneline.txt"
    path.write_text(" ".join(["the", "ghost", "walks", "at", "night"] * 320_000))
    script = f"""
import resource, sys
from lmtune.config import build_config
from lmtune.train.data import prepare_data
from lmtune.models.load import load_tokenizer
load_tokenizer("gpt2-bpe", "gpt-tiny")  # imports and the tokenizer: the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
prepared = prepare_data(build_config({{"model": {{"name": "gpt-tiny"}}, "data": {{"train": r"{path}",
                        "block_size": 256}}}}), r"{tmp_path / 'out'}", quiet=True)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(prepared.stats["tokens"], (peak - base) // 1024)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    tokens, growth_mb = map(int, done.stdout.split()[-2:])
    assert tokens == 1_600_000
    print("peak growth MB", growth_mb)
    assert growth_mb < 500, growth_mb
