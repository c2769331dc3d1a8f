"""Fill-mask and classify requests that arrive while their model is busy are answered by one call."""

import asyncio
import threading
import time

import pytest

from lmtune.serve.scheduling import ClientGone, MicroBatcher, Served
from tests.serve.conftest import Gone


def test_waiting_requests_share_one_call_and_get_their_own_answers():
    calls = []

    def run(texts, options):  # stands in for fill_mask / classify: one answer per text
        calls.append((list(texts), options))
        time.sleep(0.2)
        if "bad" in texts:
            raise RuntimeError("boom")
        return [f"{t}:{options}" for t in texts]

    async def main():
        micro = MicroBatcher(Served("m", loaded=None), run, max_texts=5)
        leaver = Gone()

        async def ask(texts, options=1, client=None):
            try:
                return await micro(texts, options, client or Gone())
            except ClientGone:
                return "left"
            except RuntimeError as err:
                return f"failed: {err}"

        first = asyncio.create_task(ask(["a"]))
        await asyncio.sleep(0.05)  # "a" runs; these arrive meanwhile
        rest = [
            asyncio.create_task(ask(texts, options, client))
            for texts, options, client in [
                (["b", "c"], 1, None),
                (["d"], 1, leaver),
                (["e"], 2, None),
                (["f", "g"], 1, None),
                (["h", "i"], 1, None),
                (["bad"], 3, None),
            ]
        ]
        await asyncio.sleep(0.02)
        leaver.leave.set()
        return await asyncio.gather(first, *rest), micro

    answers, micro = asyncio.run(main())
    assert answers == [["a:1"], ["b:1", "c:1"], "left", ["e:2"], ["f:1", "g:1"], ["h:1", "i:1"], "failed: boom"]
    assert calls[0] == (["a"], 1)
    assert calls[1] == (["b", "c", "f", "g"], 1)  # merged, in arrival order; "d" left; "h i" would exceed 5
    assert sorted(calls[2:]) == sorted([(["e"], 2), (["h", "i"], 1), (["bad"], 3)])
    assert not micro.pending


@pytest.mark.parametrize("route", ["fill-mask", "classify"])
def test_concurrent_requests_through_the_app_equal_one_at_a_time(tiny_models, route):
    from fastapi.testclient import TestClient

    from lmtune.serve.app import create_app

    name = tiny_models["mlm" if route == "fill-mask" else "cls"]
    texts = [f"The king [MASK] the {w}." for w in ("queen", "ghost", "play", "night", "sword", "crown")]
    body = (lambda t: {"text": t, "top_k": 3}) if route == "fill-mask" else (lambda t: {"text": t})
    with TestClient(create_app([name], ui=False, dtype="fp32")) as client:
        alone = [client.post(f"/v1/{route}", json=body(t)).json()["results"] for t in texts]
        together = [None] * len(texts)

        def call(i):
            together[i] = client.post(f"/v1/{route}", json=body(texts[i])).json()["results"]

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for a, b in zip(alone, together):  # same labels/tokens; scores to float tolerance (batch padding)
        assert len(a) == len(b) == 1
        if route == "classify":
            assert a[0]["label"] == b[0]["label"] and a[0]["score"] == pytest.approx(b[0]["score"], abs=1e-4)
        else:
            assert [p["token"] for p in a[0]["masks"][0]] == [p["token"] for p in b[0]["masks"][0]]
