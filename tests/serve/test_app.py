"""A real server on a loopback port with tiny models, every route exercised over HTTP."""

import json
import threading
import time

import httpx
import pytest

from tests.conftest import free_port

KEY = "test-key"


@pytest.fixture(scope="module")
def labelled_classifier(tmp_path_factory):
    """An untrained classifier whose labels have names (rotten/fresh)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from lmtune.models.load import load_tokenizer

    folder = tmp_path_factory.mktemp("cls") / "model"
    tok = load_tokenizer(None, "minilm-l6")
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=2,
            id2label={0: "rotten", 1: "fresh"},
            label2id={"rotten": 0, "fresh": 1},
        )
    )
    model.config.architectures = ["BertForSequenceClassification"]
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def server(tiny_models, labelled_classifier):
    import uvicorn

    from lmtune.serve.app import create_app
    from lmtune.serve.schemas import Limits

    tiny_clm_run, mlm, tiny_classifier = tiny_models["clm"], tiny_models["mlm"], labelled_classifier
    app = create_app(
        [tiny_clm_run, mlm, tiny_classifier],
        api_key=KEY,
        limits=Limits(max_input_chars=200, max_new_tokens=32, max_batch=4),
    )
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not srv.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "clm": tiny_clm_run, "mlm": mlm, "cls": tiny_classifier}
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server["url"], headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        yield c


def sse_events(response):
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append(line[6:])
    return events


def test_health_models_and_openapi(server, client):
    assert httpx.get(server["url"] + "/health").json()["status"] == "ok"
    data = client.get("/v1/models").json()["data"]
    objectives = {m["id"]: m["objective"] for m in data}
    assert objectives == {server["clm"]: "clm", server["mlm"]: "mlm", server["cls"]: "classify"}
    schema = client.get("/openapi.json").json()
    for route in ("/v1/fill-mask", "/v1/generate", "/v1/classify", "/v1/completions", "/v1/chat/completions"):
        assert route in schema["paths"]


def test_api_key_is_required(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(server["url"] + "/v1/classify", json={"text": "hi"}, headers=headers)
        assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    assert httpx.get(server["url"] + "/v1/models", headers={"X-API-Key": KEY}).status_code == 200


def test_fill_mask(client):
    r = client.post("/v1/fill-mask", json={"text": "the [MASK] walks the [MASK]", "top_k": 3})
    assert r.status_code == 200
    masks = r.json()["results"][0]["masks"]
    assert len(masks) == 2 and all(len(m) == 3 for m in masks)
    assert all(m[0]["score"] >= m[1]["score"] >= m[2]["score"] for m in masks)
    r = client.post("/v1/fill-mask", json={"text": "no mask here"})
    assert r.status_code == 400 and "no mask" in r.json()["error"]["message"]


def test_classify(client):
    r = client.post("/v1/classify", json={"text": ["good film", "bad film"]})
    results = r.json()["results"]
    assert r.status_code == 200 and len(results) == 2
    assert set(results[0]["scores"]) == {"rotten", "fresh"}
    assert sum(results[0]["scores"].values()) == pytest.approx(1.0, abs=1e-5)


def test_generate_and_stream(client):
    body = {"prompt": "The king", "max_new_tokens": 8, "temperature": 0}
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 200
    full = r.json()["completions"][0]
    with client.stream("POST", "/v1/generate", json={**body, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["text"] for e in events[:-1]) == full


def test_openai_completions(client):
    r = client.post("/v1/completions", json={"model": None, "prompt": "The queen", "max_tokens": 5, "temperature": 0})
    body = r.json()
    assert r.status_code == 200 and body["object"] == "text_completion"
    assert body["choices"][0]["text"] and body["usage"]["completion_tokens"] <= 5
    with client.stream(
        "POST", "/v1/completions", json={"prompt": "The queen", "max_tokens": 5, "temperature": 0, "stream": True}
    ) as response:
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    streamed = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert streamed == body["choices"][0]["text"]


def test_openai_chat(client):
    messages = [{"role": "user", "content": "Who is the king?"}]
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 6, "temperature": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
    with client.stream(
        "POST", "/v1/chat/completions", json={"messages": messages, "max_tokens": 6, "stream": True}
    ) as response:
        events = sse_events(response)
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["object"] == "chat.completion.chunk" and chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "route,body,status,message",
    [
        ("/v1/generate", {"prompt": "x" * 500}, 422, "prompt: string should have at most 200 characters"),
        ("/v1/generate", {"prompt": "hi", "max_new_tokens": 1000}, 422, "max_new_tokens must be <= 32 (got 1000)"),
        ("/v1/classify", {"text": ["a", "b", "c", "d", "e"]}, 422, "text: list should have at most 4 items"),
        ("/v1/classify", {"text": ["a", ""]}, 422, "text.1: string should have at least 1 character"),
        ("/v1/generate", {"prompt": "hi", "temperature": -1}, 422, "temperature must be >= 0 (got -1)"),
        ("/v1/generate", {"prompt": "hi", "seed": 10**30}, 422, f"seed must be <= {2**32 - 1} (got {10**30})"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, 422, "max_tokens must be >= 1 (got 0)"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x" * 150}] * 2},
            413,
            "messages too long: 300 characters > 200",
        ),
        ("/v1/chat/completions", {"messages": [{"role": "king", "content": "hi"}]}, 422, "messages.0.role"),
        ("/v1/fill-mask", {"txt": "oops"}, 422, "text is required"),
        ("/v1/generate", {"model": "nope", "prompt": "hi"}, 404, "model 'nope' is not served"),
    ],
)
def test_bad_requests_get_4xx_json(client, route, body, status, message):
    r = client.post(route, json=body)
    assert r.status_code == status and r.json()["error"]["message"].startswith(message), r.text


def test_bad_json(client):
    r = client.post("/v1/classify", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]["message"]


def test_wrong_capability(server, client):
    r = client.post("/v1/generate", json={"model": server["mlm"], "prompt": "hi"})
    assert r.status_code == 400 and "cannot generate" in r.json()["error"]["message"]


def test_concurrent_requests_are_queued(client):
    from concurrent.futures import ThreadPoolExecutor

    def call(i):
        return client.post("/v1/generate", json={"prompt": f"The king {i}", "max_new_tokens": 4}).status_code

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(call, range(6))) == [200] * 6


def test_ui_is_mounted(server):
    r = httpx.get(server["url"] + "/")
    assert r.status_code == 200 and "gradio" in r.text.lower()


def test_every_route_sits_behind_the_key_rest_and_ui(server):
    """With --api-key, no route that computes answers without it: every route the OpenAPI schema lists, and
    every function of the web UI's own (Gradio) API, which needs a login with the key as password."""
    url = server["url"]
    schema = httpx.get(url + "/openapi.json").json()
    checked = 0
    for path, methods in schema["paths"].items():
        if path == "/health":  # liveness only: no model is touched
            continue
        for method in methods:
            response = httpx.request(method, url + path, json={"text": "x", "prompt": "x"})
            assert response.status_code == 401, (method, path, response.status_code)
            checked += 1
    assert checked >= 6
    assert httpx.get(url + "/gradio_api/info").status_code == 401
    assert httpx.post(url + "/login", data={"username": "me", "password": "wrong"}).status_code >= 400
    login = httpx.post(url + "/login", data={"username": "me", "password": KEY})
    assert login.status_code == 200
    info = httpx.get(url + "/gradio_api/info", cookies=login.cookies).json()
    endpoints = list(info["named_endpoints"])
    assert "/run" in endpoints and "/predict_class" in endpoints
    for endpoint in endpoints:
        for route in ("/gradio_api/call" + endpoint, "/gradio_api/run" + endpoint):
            response = httpx.post(url + route, json={"data": [server["clm"], "x"]})
            assert response.status_code == 401, (route, response.status_code)


def test_the_ui_routes_keep_the_servers_caps(server):
    """A 1 MB prompt through the UI's API used to stream back 100 MB; it gets the REST limit's error."""
    url = server["url"]
    cookies = httpx.post(url + "/login", data={"username": "me", "password": KEY}).cookies
    for endpoint, data in (
        ("/run", [server["clm"], "x" * 1_000_000, 0.8, 50, 0.95, 30]),
        ("/run", [server["clm"], "Once", 0.8, 50, 0.95, 10_000]),
        ("/predict_class", [server["cls"], "y" * 1_000_000]),
    ):
        event = httpx.post(url + "/gradio_api/call" + endpoint, json={"data": data}, cookies=cookies).json()
        with httpx.stream(
            "GET", f"{url}/gradio_api/call{endpoint}/{event['event_id']}", cookies=cookies, timeout=60
        ) as response:
            body = b"".join(response.iter_bytes())
        assert len(body) < 20_000 and b"event: error" in body, body[:500]
        assert b"this server takes at most 200" in body or b"greater than maximum value 32" in body, body[:500]
