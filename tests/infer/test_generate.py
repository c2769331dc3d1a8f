import pytest

from lmtune.infer import load
from lmtune.infer.generate import GenerationSettings, generate, stream


def test_seeded_sampling_is_reproducible(tiny_clm_run):
    settings = dict(max_new_tokens=12, temperature=1.0, top_k=50, top_p=1.0)
    a = generate(tiny_clm_run, "The king", seed=7, **settings)
    b = generate(tiny_clm_run, "The king", seed=7, **settings)
    assert a == b
    outs = {generate(tiny_clm_run, "The king", seed=s, **settings)[0] for s in range(5)}
    assert len(outs) > 1  # different seeds, different samples


def test_top_k_one_equals_greedy(tiny_clm_run):
    greedy = generate(tiny_clm_run, "The queen", max_new_tokens=10, temperature=0)
    top1 = generate(tiny_clm_run, "The queen", max_new_tokens=10, temperature=1.3, top_k=1, seed=3)
    assert greedy == top1


def test_max_new_tokens_and_num_sequences(tiny_clm_run):
    loaded = load(tiny_clm_run)
    outs = generate(loaded, "A ghost", max_new_tokens=5, num_return_sequences=3, seed=1, ignore_eos=True,
                    temperature=1.0)
    assert len(outs) == 3
    for text in outs:
        assert len(loaded.tokenizer(text, add_special_tokens=False).input_ids) <= 6  # re-tokenizing may merge


def test_stream_matches_generate(tiny_clm_run):
    settings = GenerationSettings(max_new_tokens=15, temperature=0)
    assert "".join(stream(tiny_clm_run, "The play", settings)) == generate(tiny_clm_run, "The play", settings)[0]


def test_repetition_penalty_changes_greedy_output(tiny_clm_run):
    plain = generate(tiny_clm_run, "the king the king", max_new_tokens=20, temperature=0)
    penalised = generate(tiny_clm_run, "the king the king", max_new_tokens=20, temperature=0,
                         repetition_penalty=5.0)
    assert plain != penalised


def test_not_a_causal_model_is_refused(tiny_clm_run):
    from lmtune.errors import LmtuneError
    from lmtune.infer import as_loaded

    with pytest.raises(LmtuneError, match="clm model: it cannot fill-mask"):
        as_loaded(tiny_clm_run, "fill-mask")
