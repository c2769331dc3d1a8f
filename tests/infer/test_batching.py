"""Continuous batching gives each sequence what it would get alone: greedy text equal to `generate`'s (fp32),
seeded samples independent of who shares the batch, newcomers joining mid-flight, leavers dropped."""

import copy
import dataclasses
import threading

import pytest
import torch

from lmtune.infer import load
from lmtune.infer.batching import Batcher, Job, generate_many
from lmtune.infer.generate import GenerationSettings, generate

PROMPTS = ["The king", "A ghost walks", "", "The queen said to the prince that", "Night", "Long live"]


@pytest.fixture(scope="module")
def model(tiny_clm_run):
    return load(tiny_clm_run, dtype="fp32")  # exactness is a property of fp32; bf16 rounds per batch shape


@pytest.fixture
def batcher(model):
    b = Batcher(model, max_batch=4)
    yield b
    b.close()


def test_greedy_batched_equals_one_at_a_time(model, batcher):
    settings = GenerationSettings(max_new_tokens=24, temperature=0, ignore_eos=True)
    alone = [generate(model, p, settings)[0] for p in PROMPTS]
    jobs = [batcher.submit(p, settings) for p in PROMPTS]  # 6 jobs, 4 rows: two wait, then join
    assert [job.text() for job in jobs] == alone
    assert batcher.widest == 4 and all(job.finish_reason == "length" for job in jobs)
    assert all(len(job.ids) == 24 for job in jobs)


def test_a_burst_of_newcomers_shares_one_prefill(model):
    settings = GenerationSettings(max_new_tokens=12, temperature=0, ignore_eos=True)
    alone = [generate(model, p, settings)[0] for p in PROMPTS]
    batcher = Batcher(model, max_batch=8)
    try:
        with batcher.model_lock:  # the engine cannot start a pass until all six have arrived (bar the first)
            jobs = [batcher.submit(p, settings) for p in PROMPTS]
        assert [job.text() for job in jobs] == alone  # prompts of 1 to 8 tokens, left-padded together
        assert batcher.prefills <= 2
    finally:
        batcher.close()


def test_prompts_of_very_different_lengths_prefill_apart():
    from lmtune.infer.batching import _prefill_groups

    jobs = [Job(torch.zeros(1, n, dtype=torch.long), GenerationSettings(), 0, None) for n in (300, 1, 40, 10, 100)]
    groups = _prefill_groups(jobs, slack=32)
    assert [[j.prompt_ids.shape[1] for j in g] for g in groups] == [[1, 10], [40, 100], [300]]


def test_a_newcomer_joins_a_running_batch(model, batcher):
    long = GenerationSettings(max_new_tokens=200, temperature=0, ignore_eos=True)
    short = GenerationSettings(max_new_tokens=10, temperature=0, ignore_eos=True)
    first = batcher.submit("The king", long)
    pieces = iter(first)
    text = "".join(next(pieces) for _ in range(5))  # it is running
    late = batcher.submit("A ghost walks", short)
    assert late.text() == generate(model, "A ghost walks", short)[0]
    assert first.finish_reason is None  # the late one finished while the first still ran: they shared steps
    text += "".join(pieces)
    assert text == generate(model, "The king", long)[0]
    assert batcher.widest == 2


def test_seeded_samples_do_not_depend_on_the_batch(model, batcher):
    settings = GenerationSettings(
        max_new_tokens=20, temperature=1.0, top_k=20, top_p=0.9, repetition_penalty=1.3, seed=11
    )
    alone = batcher.submit("The king", settings).text()
    crowd = [batcher.submit(p, settings.model_copy(update={"seed": 100 + i})) for i, p in enumerate(PROMPTS)]
    mine = batcher.submit("The king", settings)
    assert mine.text() == alone
    assert len({job.text() for job in crowd}) > 1


def test_repetition_penalty_greedy_matches_generate(model, batcher):
    settings = GenerationSettings(max_new_tokens=20, temperature=0, repetition_penalty=5.0)
    others = [batcher.submit(p, GenerationSettings(max_new_tokens=20, temperature=0)) for p in PROMPTS[:2]]
    job = batcher.submit("the king the king", settings)
    assert job.text() == generate(model, "the king the king", settings)[0]
    assert all(o.text() for o in others)


def test_a_cancelled_row_leaves_and_the_others_go_on(model, batcher):
    settings = GenerationSettings(max_new_tokens=60, temperature=0, ignore_eos=True)
    leaver, stayer = batcher.submit("The king", settings), batcher.submit("A ghost walks", settings)
    next(iter(leaver))
    leaver.cancel()
    assert stayer.text() == generate(model, "A ghost walks", settings)[0]
    "".join(leaver)  # ends (no more pieces) instead of hanging
    assert leaver.finish_reason == "cancelled" and len(leaver.ids) < 60
    assert batcher.running == 0 and batcher.waiting == 0


def test_end_of_text_stops_a_row(model):
    """The tiny model rarely ends a text, so make the 4th token it would say greedily its end-of-text."""
    greedy = GenerationSettings(max_new_tokens=30, temperature=0)
    ids = generated_ids(model, "The king", greedy)
    end = ids[3]
    tokenizer = copy.deepcopy(model.tokenizer)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(end)
    batcher = Batcher(dataclasses.replace(model, tokenizer=tokenizer), max_batch=4)
    try:
        jobs = [batcher.submit(p, greedy) for p in ["The king", *PROMPTS[1:3]]]
        for job in jobs:
            job.text()
    finally:
        batcher.close()
    assert jobs[0].ids == ids[: ids.index(end)] and jobs[0].finish_reason == "stop"
    assert jobs[0].full_text == model.tokenizer.decode(ids[: ids.index(end)])
    assert all(end not in job.ids and job.finish_reason == "stop" for job in jobs)


def generated_ids(model, prompt, settings) -> list[int]:
    batcher = Batcher(model)
    try:
        job = batcher.submit(prompt, settings)
        job.text()
        return job.ids
    finally:
        batcher.close()


def test_close_ends_waiting_and_running_jobs(model):
    batcher = Batcher(model, max_batch=1)
    settings = GenerationSettings(max_new_tokens=400, temperature=0, ignore_eos=True)
    running, waiting = batcher.submit("The king", settings), batcher.submit("A ghost", settings)
    next(iter(running))
    closer = threading.Thread(target=batcher.close)
    closer.start()
    closer.join(timeout=10)
    assert not closer.is_alive()
    assert running.finish_reason == "cancelled" and waiting.finish_reason == "cancelled"
    assert len(running.ids) < 400


def test_generate_many(model):
    settings = GenerationSettings(max_new_tokens=8, temperature=0)
    assert generate_many(model, PROMPTS[:3], settings) == [generate(model, p, settings)[0] for p in PROMPTS[:3]]


def test_only_plain_caches_are_batched(model, tiny_classifier):
    assert Batcher.supports(model)
    assert not Batcher.supports(load(tiny_classifier[0]))  # cannot generate at all


def test_sampling_keeps_to_the_top_k_and_top_p(model, batcher):
    """Sampled rows are warped together over their top-k candidates: a top-k of 1, or a tiny top-p, leaves
    only the greedy token."""
    want = generate(model, "The king", max_new_tokens=12, temperature=0, ignore_eos=True)[0]
    for cut in ({"top_k": 1, "top_p": 1.0}, {"top_k": 0, "top_p": 1e-6}):
        settings = GenerationSettings(max_new_tokens=12, temperature=1.5, ignore_eos=True, seed=3, **cut)
        jobs = [batcher.submit("The king", settings, seed=i) for i in range(3)]
        assert [job.text() for job in jobs] == [want] * 3
