from lmtune.config import CleanConfig
from lmtune.data.clean import clean_documents, strip_pdf_page_furniture
from lmtune.data.ingest import Document


def clean(texts, **settings):
    docs, report = clean_documents([Document(t, "x") for t in texts], CleanConfig(**settings))
    return [d.text for d in docs], report


def test_regex_removal_counts():
    text = "<sos>Story one.<nl>Please subscribe to /r/stories<eos><sos>Story two.<eos>"
    out, report = clean([text], regex_remove=[r"<nl>[^<]*?(subscribe|/r/).*?(?=<eos>)"], normalize_whitespace=False)
    assert out == ["<sos>Story one.<eos><sos>Story two.<eos>"]
    assert sum(v for k, v in report.items() if k.startswith("regex")) == 1


def test_delimiters_map_to_newlines_specials_and_documents():
    text = "<sos>Line one<nl>line two<eos><sos>Other story<eos>"
    docs, report = clean_documents(
        [Document(text, "x")],
        CleanConfig(delimiters={"<nl>": "\n", "<sos>": "", "<eos>": "doc"}),
        specials={"eos": "</s>"},
    )
    assert [d.text for d in docs] == ["Line one\nline two", "Other story"]
    docs, _ = clean_documents(
        [Document("a<eos>b", "x")], CleanConfig(delimiters={"<eos>": "eos"}), specials={"eos": "</s>"}
    )
    assert docs[0].text == "a</s>b"


def test_dehyphenation():
    out, report = clean(["An exam-\nple of hyphen-\n ation, but well-known stays."])
    assert out == ["An example of hyphenation, but well-known stays."]
    assert report["de-hyphenated words"] == 2


def test_unicode_and_whitespace_normalisation():
    out, report = clean(["ﬁne   text\t\twith\u00a0spaces\n\n\n\nnext"])
    assert out == ["fine text with spaces\n\nnext"]
    assert report["unicode-normalized documents"] == 1


def test_dedup_and_empty():
    out, report = clean(["same", "same", "other", "   "])
    assert out == ["same", "other"]
    assert report["duplicate documents dropped"] == 1 and report["empty/short documents dropped"] == 1


def test_pdf_headers_footers_page_numbers():
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
    pages = [
        f"THE GREAT BOOK\n{words[i]} opens page {i}.\nThen {words[i + 6]} closes it.\nChapter 1 - {i + 10}\n{i + 1}"
        for i in range(6)
    ]
    cleaned, removed = strip_pdf_page_furniture(pages)
    joined = "\n".join(cleaned)
    assert "THE GREAT BOOK" not in joined and "Chapter 1 -" not in joined
    assert cleaned[3] == "delta opens page 3.\nThen juliet closes it."
    assert removed == 6 * 3


def test_pdf_cleaning_through_documents():
    pages = [f"Header\nText {i}.\n{i}" for i in range(4)]
    docs, report = clean_documents([Document("\n".join(pages), "b.pdf", pages=pages)], CleanConfig())
    assert docs[0].text == "Text 0.\nText 1.\nText 2.\nText 3."
    assert report["pdf header/footer/page-number lines"] == 8


def test_whitespace_normalised_in_slices_equals_the_whole_text():
    """Long texts are normalised in slices (bounded memory); every cut must be invisible."""
    import random

    from lmtune.data.clean import normalize_whitespace

    rng = random.Random(0)
    parts = ["word", "ab", "x", " ", "  ", "\t", "\n", "\n\n", " \n \n\n", "\u00a0", "end."]
    for trial in range(30):
        text = "".join(rng.choice(parts) for _ in range(rng.randrange(50, 400)))
        whole = normalize_whitespace(text, slice_chars=10**9)
        for size in (1, 3, 7, 40):
            assert normalize_whitespace(text, slice_chars=size) == whole, (trial, size, text)
    # and the reference: what the one-pass version gave
    assert normalize_whitespace(" a  b\t\n\n\n\n  c \n", slice_chars=2) == "a b\n\nc"


def test_fast_cleaning_steps_equal_the_plain_regexes():
    """dehyphenate, normalize_whitespace and drop_toc_lines are written for speed (str methods, a regex
    anchored on its hyphen, a dot count before the TOC regex); on random text made of the characters
    they care about, each gives exactly what the plain regex version gives."""
    import random

    from lmtune.data.clean import (
        BLANK_LINES,
        HYPHEN_BREAK,
        NON_SPACE_PAIR,
        SPACES,
        TOC_LINE,
        _tidy_lines,
        dehyphenate,
        drop_toc_lines,
        normalize_whitespace,
    )

    def plain_whitespace(text, slice_chars):
        out, start = [], 0
        while start < len(text):
            cut = NON_SPACE_PAIR.search(text, start + slice_chars) if len(text) - start > slice_chars else None
            end = cut.end() if cut else len(text)
            piece = "\n".join(line.strip() for line in SPACES.sub(" ", text[start:end]).split("\n"))
            out.append(BLANK_LINES.sub("\n\n", piece))
            start = end
        return "".join(out).strip()

    def plain_toc(text):
        lines = text.split("\n")
        kept = [line for line in lines if not TOC_LINE.match(line)]
        return "\n".join(kept), len(lines) - len(kept)

    rng = random.Random(7)
    parts = [
        "a",
        "b",
        "é",
        "_",
        "7",
        "-",
        "--",
        "\n",
        " ",
        "  ",
        "\t",
        "\r",
        "\r\n",
        "\u00a0",
        "\u2028",
        "\u3000",
        "\x0b",
        "\x1c",
        "\x85",
        ".",
        "...",
        " . ",
        "x-\n",
        "-\n",
        " \n",
        "\n ",
        "iv",
        "12",
    ]
    for _trial in range(5_000):
        text = "".join(rng.choice(parts) for _ in range(rng.randrange(0, 60)))
        assert dehyphenate(text) == HYPHEN_BREAK.subn(r"\1\2", text), repr(text)
        assert _tidy_lines(text) == "\n".join(line.strip() for line in SPACES.sub(" ", text).split("\n")), repr(text)
        for size in (3, 1_000_000):
            assert normalize_whitespace(text, size) == plain_whitespace(text, size), (size, repr(text))
        assert drop_toc_lines(text) == plain_toc(text), repr(text)
    # the cases the rewrite had to get right
    assert dehyphenate("a-\nb-\nc d-\n\te") == ("ab-\nc de", 2)  # a joined letter starts no second join
    assert normalize_whitespace("\u3000a\u00a0\u00a0b \r\n c\x0b") == "a b\nc"


def test_whitespace_characters_are_those_of_str_split():
    """normalize_whitespace replaces exactly what `\\s` matches; its list of characters must be complete."""
    import re
    import sys

    from lmtune.data.clean import ASCII_SPACES, OTHER_SPACES

    spaces = re.compile(r"\s")
    every = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if spaces.match(c) and c not in " \n")
    assert every == OTHER_SPACES and ASCII_SPACES == "".join(c for c in every if c.isascii())
    assert all(c.isspace() for c in every)
