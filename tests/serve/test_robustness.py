"""The server holds: clients that leave (queued or mid-stream) never keep a model, over-long and odd
inputs never give a 5xx, and SIGTERM always stops it within seconds. A real `lmtune serve` process."""
import json
import socket
import threading
import time

import httpx

LONG = {"prompt": "The king", "max_new_tokens": 400, "temperature": 0, "ignore_eos": True, "stream": True}


def first_chunk(url: str, body: dict) -> httpx.Response:
    """Open a streaming request and read its first event; the caller closes it (a client that leaves)."""
    client = httpx.Client(timeout=60)
    response = client.send(client.build_request("POST", url, json=body), stream=True)
    next(response.iter_lines())
    response.client = client
    return response


def raw_request_then_hang_up(port: int, path: str, body: dict) -> None:
    """Send a complete HTTP request and close the socket without reading the answer."""
    payload = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)


def test_clients_that_leave_free_the_model(server_process):
    url = server_process.url + "/v1/generate"
    busy = first_chunk(url, LONG)  # holds the model for a while
    # Queued behind it: a streaming client and a plain one, both of which hang up while waiting.
    queued = httpx.Client(timeout=60)
    queued_response = queued.send(queued.build_request("POST", url, json={**LONG, "max_new_tokens": 300}),
                                  stream=True)
    raw_request_then_hang_up(server_process.port, "/v1/generate", {"prompt": "A ghost", "max_new_tokens": 300,
                                                                    "ignore_eos": True})
    time.sleep(0.3)
    queued_response.close()
    queued.close()
    busy.close()  # and the one being served leaves mid-stream
    busy.client.close()
    start = time.time()
    done = httpx.post(url, json={"prompt": "The queen", "max_new_tokens": 5, "temperature": 0}, timeout=30)
    assert done.status_code == 200 and len(done.json()["completions"]) == 1
    # Neither the 400-token stream nor the two queued 300-token requests ran to the end first.
    assert time.time() - start < 2, time.time() - start  # each of them alone takes ~2 s here


def test_odd_inputs_get_4xx_never_5xx(server_process):
    base = server_process.url
    long_prompt = "the castle at night " * 390  # ~1,600 tokens: beyond the 512-token context
    cases = [
        ("/v1/generate", {"prompt": long_prompt[:7900], "max_new_tokens": 8}),
        ("/v1/completions", {"prompt": long_prompt[:7900], "max_tokens": 8}),
        ("/v1/generate", {"prompt": "hi", "seed": 10**30}),
        ("/v1/generate", {"prompt": "hi", "max_new_tokens": 480}),  # no room left for the prompt
        ("/v1/generate", {"prompt": "hi", "temperature": -1}),
        ("/v1/fill-mask", {"text": []}),
        ("/v1/fill-mask", {"text": "no mask here"}),
        ("/v1/classify", {"text": ["", "x"]}),
        ("/v1/chat/completions", {"messages": []}),
    ]
    for path, body in cases:
        response = httpx.post(base + path, json=body, timeout=60)
        assert response.status_code < 500, (path, body, response.text[:300])
        assert "error" in response.json() or response.status_code == 200
    # Streaming with a prompt beyond the context: a proper stream (truncated prompt), ended by [DONE].
    with httpx.stream("POST", base + "/v1/generate", json={"prompt": long_prompt[:7900], "max_new_tokens": 4,
                                                           "stream": True}, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert response.status_code == 200 and lines[-1] == "data: [DONE]"


def test_sigterm_stops_the_server_within_seconds(server_process):
    busy = first_chunk(server_process.url + "/v1/generate", {**LONG, "max_new_tokens": 470})
    waiting = []
    thread = threading.Thread(target=lambda: waiting.append(
        httpx.post(server_process.url + "/v1/generate", json={"prompt": "x", "max_new_tokens": 400, "ignore_eos": True}, timeout=30)))
    thread.start()
    time.sleep(0.3)
    assert server_process.stop(timeout=10) < 8
    busy.close()
    busy.client.close()
    thread.join(timeout=30)
