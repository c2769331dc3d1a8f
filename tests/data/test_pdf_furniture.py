"""A real PDF (reportlab) laid out like a manual: odd pages carry the chapter's running header with the
page number ("Chapter 2: Function reference 9"), even pages the book's title with the number in front,
footers alternate too; a table of contents with dot leaders opens it. After `prepare`-style reading and
cleaning, none of the furniture is left and at least 99% of the body's words are."""

import random
import re

from lmtune.config import CleanConfig
from lmtune.data.clean import clean_documents
from lmtune.data.ingest import read_documents

WORDS = (
    "function returns value the argument list table index string buffer memory error handler call "
    "stack frame object field method class module import export parse token stream file path"
).split()


def build_manual(path, pages=24, lines_per_page=14, seed=3):
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    rng = random.Random(seed)
    pdf = canvas.Canvas(str(path), pagesize=A4)
    body = []
    toc = [
        "Contents",
        "Introduction ........................ 1",
        "Function reference .................. 9",
        "Error handling ...................... 17",
    ]
    for i, line in enumerate(toc):
        pdf.drawString(72, 760 - 16 * i, line)
    pdf.showPage()
    chapters = ["Introduction", "Function reference", "Error handling"]
    for n in range(1, pages + 1):
        chapter = chapters[(n - 1) * len(chapters) // pages]
        header = f"Chapter {chapters.index(chapter) + 1}: {chapter} {n}" if n % 2 else f"{n} The Library Manual"
        footer = f"- {n} -" if n % 2 else "The Library Manual, second edition"
        pdf.drawString(72, 800, header)
        for i in range(lines_per_page):
            line = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(6, 11))).capitalize() + "."
            body.append(line)
            pdf.drawString(72, 760 - 18 * i, line)
        pdf.drawString(72, 40, footer)
        pdf.showPage()
    pdf.save()
    return body


def test_numbered_alternating_headers_and_toc_go_body_stays(tmp_path):
    body = build_manual(tmp_path / "manual.pdf")
    docs = read_documents(tmp_path / "manual.pdf")
    cleaned, report = clean_documents(docs, CleanConfig(drop_toc=True))
    text = cleaned[0].text
    for furniture in (r"Chapter \d: \w+", r"\d+ The Library Manual", r"- \d+ -", r"second edition", r"\.{5,}"):
        assert not re.search(furniture, text), furniture
    body_words = " ".join(body).lower().split()
    kept = text.lower().split()
    remaining = {}
    for word in kept:
        remaining[word] = remaining.get(word, 0) + 1
    found = 0
    for word in body_words:
        if remaining.get(word, 0) > 0:
            remaining[word] -= 1
            found += 1
    assert found / len(body_words) >= 0.99, found / len(body_words)
    assert report["pdf header/footer/page-number lines"] >= 2 * 24
    assert report["table-of-contents lines dropped"] == 3


def test_toc_lines_stay_unless_asked(tmp_path):
    build_manual(tmp_path / "manual.pdf", pages=6)
    cleaned, report = clean_documents(read_documents(tmp_path / "manual.pdf"), CleanConfig())
    assert "Function reference ......" in cleaned[0].text and "table-of-contents lines dropped" not in report
