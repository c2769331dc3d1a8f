import pytest

from lmtune.data.pack import Framing, pack as pack_arrays, pack_splits, split_documents

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


@pytest.mark.parametrize("docs,block_size,val_fraction,fragment", [
    ([[1] * 5], 16, 0.1, "no validation split: the corpus (5 tokens) is too small"),  # 10% of 5 tokens is none
    ([[1] * 30], 64, 0.1, "the training text (27 tokens) is shorter than one block (64)"),
    ([[1] * 30], 64, 0.1, "the validation split holds only 3 tokens"),
    ([[1] * 30], 64, 0.0, "the training text (30 tokens) is shorter than one block (64)"),
    ([[1] * 1000], 64, 0.1, None),
    ([[1] * 100] * 20, 64, 0.1, None),  # by document: 2 documents held out
])
def test_a_corpus_too_small_for_a_block_or_a_split_says_so(docs, block_size, val_fraction, fragment):
    splits, info = pack_splits(docs, block_size, CLM, 0, val_fraction, seed=0)
    assert splits["train"]  # never an empty training split from a non-empty corpus
    if fragment is None:
        assert "warning" not in info and splits["validation"]
    else:
        assert fragment in info["warning"], info
