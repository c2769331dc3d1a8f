"""The server holds: clients that leave (waiting in line or mid-answer, streamed or not) never keep a model,
the line is first come first served, over-long and odd inputs never give a 5xx, a failing generation ends
its stream with an error event, and SIGTERM stops the server within seconds with requests in flight.
Most of it against a real `lmtune serve` process on a loopback port; /health shows who holds a model."""

import asyncio
import json
import time

import httpx
import pytest

from tests.serve.conftest import Gone, ServerProcess, send_raw

LONG = {"prompt": "The king", "max_new_tokens": 480, "temperature": 0, "ignore_eos": True}  # seconds of work


@pytest.fixture(scope="module")
def server(tiny_models):
    """One sequence at a time (--batch-size 1), so that requests wait in line for the batch."""
    server = ServerProcess(tiny_models, "--batch-size", "1")
    yield server
    server.close()


def clm_load(server) -> dict:
    """{'busy': whether a request holds the causal model, 'running': sequences being generated, 'waiting':
    sequences in line for it}."""
    return httpx.get(server.url + "/health", timeout=10).json()["load"][server.models["clm"]]


def wait_until(condition, timeout: float) -> float:
    """Seconds until `condition()` held; fails after `timeout`."""
    start = time.perf_counter()
    while not condition():
        assert time.perf_counter() - start < timeout, f"not within {timeout} s"
        time.sleep(0.02)
    return time.perf_counter() - start


def open_stream(url: str, body: dict) -> httpx.Response:
    """A streaming request whose headers have arrived; the caller closes it (a client that leaves)."""
    client = httpx.Client(timeout=60)
    response = client.send(client.build_request("POST", url, json={**body, "stream": True}), stream=True)
    # Both kept: an httpx line iterator that is garbage-collected closes the connection.
    response.extensions.update(client=client, lines=response.iter_lines())
    return response


def next_event(response: httpx.Response) -> str:
    return next(line for line in response.extensions["lines"] if line.startswith("data: "))


def hang_up(response: httpx.Response) -> None:
    response.close()
    response.extensions["client"].close()


def test_clients_that_leave_free_the_model(server):
    url = server.url + "/v1/generate"
    busy = open_stream(url, LONG)
    assert next_event(busy) != "data: [DONE]"  # it holds the model, generating
    queued_stream = open_stream(url, LONG)
    queued_plain = send_raw(server.port, "/v1/generate", LONG)
    wait_until(lambda: clm_load(server)["waiting"] == 2, timeout=10)
    hang_up(queued_stream)
    queued_plain.close()
    left = wait_until(lambda: clm_load(server)["waiting"] == 0, timeout=2)
    assert clm_load(server)["busy"]  # they left the line, not served: the long one still holds the model ...
    assert next_event(busy) != "data: [DONE]"  # ... and still streams
    hang_up(busy)
    stopped = wait_until(lambda: not clm_load(server)["busy"], timeout=1)  # the rest of 480 tokens takes seconds
    start = time.perf_counter()
    done = httpx.post(url, json={"prompt": "The queen", "max_new_tokens": 5, "temperature": 0}, timeout=30)
    assert done.status_code == 200 and len(done.json()["completions"]) == 1
    print(
        f"\nqueued clients left the line in {left:.2f} s; a dropped stream freed the model in {stopped:.2f} s; "
        f"the next request took {time.perf_counter() - start:.2f} s"
    )


def test_a_plain_request_whose_client_leaves_stops_generating(server):
    sock = send_raw(server.port, "/v1/completions", {"prompt": "The king", "max_tokens": 480, "temperature": 0})
    wait_until(lambda: clm_load(server)["busy"], timeout=10)
    time.sleep(0.2)
    sock.close()
    stopped = wait_until(lambda: not clm_load(server)["busy"], timeout=1)
    print(f"\na dropped plain request freed the model in {stopped:.2f} s")


def test_odd_inputs_get_4xx_never_5xx(server):
    base = server.url
    long_prompt = ("the castle at night " * 400)[:7900]  # ~1,600 tokens: beyond the 512-token context
    cases = [
        ("/v1/generate", {"prompt": long_prompt, "max_new_tokens": 8}, 200),  # keeps the prompt's end
        ("/v1/completions", {"prompt": long_prompt, "max_tokens": 8}, 200),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": long_prompt}], "max_tokens": 8}, 200),
        ("/v1/generate", {"prompt": long_prompt, "max_new_tokens": 480}, 200),  # room for 32 prompt tokens
        ("/v1/generate", {"prompt": "hi", "temperature": 1e-300, "max_new_tokens": 4}, 200),  # greedy
        ("/v1/generate", {"prompt": "hi", "repetition_penalty": 0.01, "max_new_tokens": 4}, 200),
        ("/v1/generate", {"prompt": "hi", "top_k": 10**30, "max_new_tokens": 4}, 200),
        ("/v1/generate", {"prompt": "", "max_new_tokens": 4}, 200),
        ("/v1/completions", {"prompt": "hi", "n": 3, "temperature": 0, "max_tokens": 4}, 200),  # 3 greedy copies
        ("/v1/generate", {"prompt": "hi", "seed": 10**30}, 422),
        ("/v1/generate", {"prompt": "hi", "seed": -1}, 422),
        ("/v1/generate", {"prompt": "hi", "repetition_penalty": 1e-300}, 422),
        ("/v1/generate", {"prompt": "hi", "max_new_tokens": 10**6}, 422),
        ("/v1/generate", {"prompt": "hi", "temperature": float("nan")}, 422),
        ("/v1/generate", {"prompt": "hi", "top_k": True}, 422),  # JSON true is not the integer 1
        ("/v1/completions", {"prompt": "hi", "max_tokens": "4"}, 422),
        ("/v1/completions", {"prompt": "hi", "n": 100}, 422),
        ("/v1/fill-mask", {"text": []}, 422),
        ("/v1/fill-mask", {"text": "no mask here"}, 400),
        ("/v1/classify", {"text": ["", "x"]}, 422),
        ("/v1/classify", {"text": "x" * 9000}, 422),
        ("/v1/chat/completions", {"messages": []}, 422),
        ("/v1/nowhere", {}, 404),
    ]
    for path, body, status in cases:
        response = httpx.post(
            base + path, content=json.dumps(body), timeout=60, headers={"content-type": "application/json"}
        )
        assert response.status_code == status, (path, str(body)[:100], response.text[:300])
        assert "error" in response.json() if status >= 400 else response.json()
    for payload in (b"{not json", b"[]", b"\xff\xfe", b'"text"'):
        response = httpx.post(base + "/v1/generate", content=payload, headers={"content-type": "application/json"})
        assert response.status_code == 422 and "error" in response.json(), response.text
    # Streams: the prompt beyond the context keeps its end; no room at all is a 400 before the stream starts.
    for path, body in [
        ("/v1/generate", {"prompt": long_prompt, "max_new_tokens": 4}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": long_prompt}], "max_tokens": 4}),
    ]:
        with httpx.stream("POST", base + path, json={**body, "stream": True}, timeout=60) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert response.status_code == 200 and lines[-1] == "data: [DONE]"
        assert not any("error" in json.loads(line[6:]) for line in lines[:-1]), lines


def test_stream_errors_before_and_during_the_stream(tiny_models):
    """A request that cannot fit the context is a 400 before any stream; a bug of ours mid-generation ends
    the stream with an error event and [DONE] (a plain request: a JSON 500), and frees the model."""
    from fastapi.testclient import TestClient

    from lmtune.infer import load
    from lmtune.serve.app import create_app

    loaded = load(tiny_models["clm"])

    def failing(*args, **kwargs):
        raise RuntimeError("boom")

    loaded.model.forward = failing  # the batcher calls the model step by step
    try:
        with TestClient(create_app({"m": loaded}, ui=False), raise_server_exceptions=False) as client:
            response = client.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 512, "stream": True})
            assert response.status_code == 400 and "leaves no room" in response.json()["error"]["message"]
            with client.stream("POST", "/v1/generate", json={"prompt": "hi", "stream": True}) as response:
                lines = [line for line in response.iter_lines() if line.startswith("data: ")]
            assert response.status_code == 200 and lines[-1] == "data: [DONE]"
            assert json.loads(lines[-2][6:]) == {
                "error": {"message": "internal error: RuntimeError", "type": "server_error"}
            }
            response = client.post("/v1/generate", json={"prompt": "hi"})
            assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
            assert client.get("/health").json()["load"]["m"] == {"busy": False, "running": 0, "waiting": 0}
    finally:
        del loaded.model.forward


def test_the_line_is_first_come_first_served_and_a_leaver_gives_up_its_place():
    from lmtune.serve.scheduling import ClientGone, Served

    async def main():
        model, order = Served("m", loaded=None), []
        leaver = Gone()

        async def request(name, client=None):
            try:
                async with model.turn(client):
                    order.append(name)
                    await asyncio.sleep(0.2)  # long enough for "c" to notice its client left
            except ClientGone:
                order.append(f"{name} left")

        tasks = []
        for name in ["a", "b", "c", "d", "e"]:
            tasks.append(asyncio.create_task(request(name, leaver if name == "c" else None)))
            await asyncio.sleep(0.005)  # arrival order
        leaver.leave.set()
        tasks[3].cancel()  # "d": a stream whose client left
        await asyncio.gather(*tasks, return_exceptions=True)
        return order, model

    order, model = asyncio.run(main())
    assert order == ["a", "c left", "b", "e"] and not model.line and not model.lock.locked()


def test_a_running_request_stops_and_frees_the_model_only_when_its_thread_is_done():
    from lmtune.serve.scheduling import ClientGone, Served, run_stoppable

    async def main(cancel: bool):
        model, client, log = Served("m", loaded=None), Gone(), []

        def work(stop):  # like model.generate with a stop criterion: notices `stop` within a "token"
            while not stop.wait(0.1):
                pass
            time.sleep(0.2)  # the last token
            log.append("thread done")

        async def request():
            async with model.turn(client):
                await run_stoppable(work, client)

        task = asyncio.create_task(request())
        await asyncio.sleep(0.2)
        assert model.lock.locked()
        start = time.perf_counter()
        task.cancel() if cancel else client.leave.set()
        with pytest.raises(asyncio.CancelledError if cancel else ClientGone):
            await task
        log.append("lock free" if not model.lock.locked() else "lock held")
        return log, time.perf_counter() - start

    for cancel in (False, True):  # the client left; the server shuts down
        log, seconds = asyncio.run(main(cancel))
        assert log == ["thread done", "lock free"] and seconds < 1.5


@pytest.mark.parametrize("active", ["stream", "plain"])
def test_sigterm_stops_the_server_within_seconds(tiny_models, active):
    """With generations running (a batch of 8) and more in line (~20 s of work here), SIGTERM still ends the
    server in seconds: 3 s of grace for open requests (`timeout_graceful_shutdown`), then each stops within a
    token."""
    server = ServerProcess(tiny_models)
    try:
        url = server.url + "/v1/generate"
        many = {"prompt": "The king", "max_tokens": 480, "n": 16, "seed": 1}  # ~12 s here
        if active == "stream":
            running = open_stream(url, LONG)
            next_event(running)
        else:
            running = send_raw(server.port, "/v1/completions", many)
            wait_until(lambda: clm_load(server)["busy"], timeout=10)
        waiting = [
            open_stream(url, LONG),
            send_raw(server.port, "/v1/generate", LONG),
            send_raw(server.port, "/v1/completions", many),
        ]
        sequences = (1 if active == "stream" else 16) + 1 + 1 + 16
        wait_until(
            lambda: (load := clm_load(server))["running"] == 8 and load["running"] + load["waiting"] == sequences,
            timeout=10,
        )
        seconds = server.stop(timeout=15)
        print(f"\nSIGTERM with a {active} request running and 3 waiting: stopped in {seconds:.1f} s")
        assert seconds < 6
        for client in [running, *waiting]:
            hang_up(client) if isinstance(client, httpx.Response) else client.close()
    finally:
        server.close()


def test_concurrent_streams_are_batched_and_each_gets_its_own_text(tiny_models):
    """4 streaming clients at once share decode steps (/health shows 4 running) and each receives exactly
    the text it gets alone (fp32: batching changes no number that decides a greedy token)."""
    server = ServerProcess(tiny_models, "--dtype", "fp32")
    try:
        url = server.url + "/v1/generate"
        prompts = ["The king", "A ghost walks", "The queen said", "Night falls"]
        body = {"max_new_tokens": 120, "temperature": 0, "ignore_eos": True}
        alone = [httpx.post(url, json={**body, "prompt": p}, timeout=60).json()["completions"][0] for p in prompts]
        streams = [open_stream(url, {**body, "prompt": p}) for p in prompts]
        firsts = [json.loads(next_event(s)[6:])["text"] for s in streams]
        assert clm_load(server)["running"] == 4
        texts = []
        for first, response in zip(firsts, streams):
            rest = [line[6:] for line in response.extensions["lines"] if line.startswith("data: ")]
            assert rest[-1] == "[DONE]"
            texts.append(first + "".join(json.loads(event)["text"] for event in rest[:-1]))
            hang_up(response)
        assert texts == alone
    finally:
        server.close()
