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
    outs = generate(
        loaded, "A ghost", max_new_tokens=5, num_return_sequences=3, seed=1, ignore_eos=True, temperature=1.0
    )
    assert len(outs) == 3
    for text in outs:
        assert len(loaded.tokenizer(text, add_special_tokens=False).input_ids) <= 6  # re-tokenizing may merge


def test_stream_matches_generate(tiny_clm_run):
    settings = GenerationSettings(max_new_tokens=15, temperature=0)
    assert "".join(stream(tiny_clm_run, "The play", settings)) == generate(tiny_clm_run, "The play", settings)[0]


def test_repetition_penalty_changes_greedy_output(tiny_clm_run):
    plain = generate(tiny_clm_run, "the king the king", max_new_tokens=20, temperature=0)
    penalised = generate(tiny_clm_run, "the king the king", max_new_tokens=20, temperature=0, repetition_penalty=5.0)
    assert plain != penalised


def test_not_a_causal_model_is_refused(tiny_clm_run):
    from lmtune.errors import LmtuneError
    from lmtune.infer import as_loaded

    with pytest.raises(LmtuneError, match="clm model: it cannot fill-mask"):
        as_loaded(tiny_clm_run, "fill-mask")


def test_greedy_with_several_sequences_gives_copies(tiny_clm_run):
    outs = generate(tiny_clm_run, "The king", max_new_tokens=6, temperature=0, num_return_sequences=3)
    assert len(outs) == 3 and len(set(outs)) == 1


def test_a_stop_event_ends_generation_early(tiny_clm_run):
    import threading

    stop = threading.Event()
    stop.set()  # already set: the first token is the last
    settings = GenerationSettings(max_new_tokens=50, temperature=0, ignore_eos=True)
    stopped, full = (
        generate(tiny_clm_run, "The king", settings, stop=stop)[0],
        generate(tiny_clm_run, "The king", settings)[0],
    )
    assert full.startswith(stopped) and len(stopped) <= 2 and len(full) >= 40  # one token, not fifty


def test_a_prompt_beyond_the_context_keeps_its_end(tiny_clm_run, caplog):
    loaded = load(tiny_clm_run)
    long_prompt = "the castle at night " * 400  # far beyond the 512-token context
    with caplog.at_level("WARNING", logger="lmtune"):
        out = generate(loaded, long_prompt, max_new_tokens=500, temperature=0, ignore_eos=True)
    assert len(out) == 1 and "only its last 12 fit" in caplog.text
    assert "".join(stream(loaded, long_prompt, max_new_tokens=8, temperature=0))  # the stream too


@pytest.mark.parametrize(
    "values,message",
    [
        ({"temperature": -1}, "temperature must be >= 0 (got -1)"),
        ({"top_p": 0}, "top_p must be > 0 (got 0)"),
        ({"top_k": -1}, "top_k must be >= 0 (got -1)"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1 (got 0)"),
        ({"repetition_penalty": 0}, "repetition_penalty must be >= 0.01 (got 0)"),
        ({"num_return_sequences": 0}, "num_return_sequences must be >= 1 (got 0)"),
        ({"seed": 10**30}, f"seed must be <= {2**32 - 1} (got {10**30})"),
        ({"seed": -1}, "seed must be >= 0 (got -1)"),
        ({"temperature": "hot"}, "temperature: input should be a valid number"),
    ],
)
def test_bad_settings_are_one_line_naming_the_field(values, message):
    from lmtune.errors import LmtuneError

    with pytest.raises(LmtuneError) as err:
        GenerationSettings(**values)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_no_room_for_the_prompt_is_refused_clearly(tiny_clm_run):
    from lmtune.errors import LmtuneError

    with pytest.raises(LmtuneError, match="max_new_tokens 512 leaves no room for the prompt"):
        generate(tiny_clm_run, "hi", max_new_tokens=512)


def test_a_tiny_temperature_is_greedy(tiny_clm_run):
    greedy = generate(tiny_clm_run, "The queen", max_new_tokens=8, temperature=0)
    assert generate(tiny_clm_run, "The queen", max_new_tokens=8, temperature=1e-300, seed=1) == greedy
