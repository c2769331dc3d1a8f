"""GGUF models through llama.cpp (llama-cpp-python, an optional extra): a tuned model exported to GGUF
generates through the same functions and server routes as on the PyTorch path. Skipped where
llama-cpp-python is not installed (`pip install 'lmtune[llama-cpp]'`); the error without it is tested here."""

import json
import threading
from pathlib import Path

import pytest

from lmtune.errors import LmtuneError
from lmtune.infer import llama_cpp, load
from lmtune.infer.generate import GenerationSettings, Stream, generate

needs_llama_cpp = pytest.mark.skipif(
    not llama_cpp.available(), reason="llama-cpp-python is not installed (pip install 'lmtune[llama-cpp]')"
)


@pytest.fixture(scope="module")
def exported_gguf(tiny_clm_run, tmp_path_factory) -> str:
    """The tiny tuned GPT exported to GGUF (f32), as a user would: lmtune export RUN --format gguf."""
    from lmtune.export import export_model
    from tests.conftest import converter_or_skip

    converter_or_skip()
    out = export_model(
        str(Path(tiny_clm_run).parent), tmp_path_factory.mktemp("gguf") / "model", format="gguf", gguf_type="f32"
    )
    return str(next(out.glob("*.gguf")))


def test_the_engine_is_refused_for_what_it_cannot_run(tiny_clm_run, monkeypatch):
    with pytest.raises(LmtuneError, match="runs GGUF files"):
        load(tiny_clm_run, engine="llama.cpp")
    with pytest.raises(LmtuneError, match="unknown engine"):
        load(tiny_clm_run, engine="onnx")
    monkeypatch.setattr(llama_cpp, "available", lambda: False)
    with pytest.raises(LmtuneError, match=r"pip install 'lmtune\[llama-cpp\]'"):
        llama_cpp.LlamaCppModel(Path("model.gguf"))


@needs_llama_cpp
def test_an_exported_model_generates_through_llama_cpp(exported_gguf, tiny_clm_run):
    loaded = load(exported_gguf)  # auto: a .gguf path with llama-cpp-python installed
    assert loaded.model.engine == "llama.cpp"
    greedy = GenerationSettings(max_new_tokens=20, temperature=0, ignore_eos=True)
    text = generate(loaded, "The king", greedy)[0]
    assert text == generate(loaded, "The king", greedy)[0]  # greedy is deterministic
    assert "".join(Stream(loaded, "The king", greedy)) == text
    # The same weights in PyTorch (f32 GGUF): llama.cpp's kernels may round differently, but the text starts alike.
    torch_text = generate(load(tiny_clm_run, dtype="fp32"), "The king", greedy)[0]
    assert text[:12] == torch_text[:12]
    sampled = GenerationSettings(max_new_tokens=12, temperature=1.0, top_k=50, seed=5, num_return_sequences=3)
    first, again = generate(loaded, "A ghost", sampled), generate(loaded, "A ghost", sampled)
    assert first == again and len(set(first)) > 1  # seeded: reproducible; three different samples


@needs_llama_cpp
def test_a_stream_stops_within_a_token_when_closed(exported_gguf):
    loaded = load(exported_gguf)
    pieces = Stream(loaded, "The king", GenerationSettings(max_new_tokens=400, temperature=0, ignore_eos=True))
    next(pieces)
    closer = threading.Thread(target=pieces.close)
    closer.start()
    closer.join(timeout=5)
    assert not closer.is_alive()
    assert loaded.model.lock.acquire(timeout=1)  # the model is free again
    loaded.model.lock.release()


@needs_llama_cpp
def test_the_server_runs_a_gguf_model_on_every_generation_route(exported_gguf):
    from fastapi.testclient import TestClient

    from lmtune.serve.app import create_app

    with TestClient(create_app([exported_gguf], ui=False)) as client:
        models = client.get("/v1/models").json()["data"]
        assert models[0]["capabilities"] == ["generate", "completions", "chat"]
        r = client.post("/v1/generate", json={"prompt": "The king", "max_new_tokens": 8, "temperature": 0})
        assert r.status_code == 200 and r.json()["completions"][0]
        r = client.post("/v1/completions", json={"prompt": ["The king", "A ghost"], "max_tokens": 5, "n": 2, "seed": 1})
        assert r.status_code == 200 and len(r.json()["choices"]) == 4
        with client.stream(
            "POST", "/v1/generate", json={"prompt": "The queen", "max_new_tokens": 8, "temperature": 0, "stream": True}
        ) as response:
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and "".join(json.loads(e)["text"] for e in events[:-1])
        r = client.post("/v1/generate", json={"prompt": "x", "max_new_tokens": 480})  # beyond the context
        assert r.status_code in (200, 400)
        assert client.get("/health").json()["load"][exported_gguf]["busy"] is False


@needs_llama_cpp
def test_cli_generate_with_the_engine(exported_gguf, cli):
    result = cli(
        "generate", exported_gguf, "The king", "--max-new-tokens", "6", "--temperature", "0", "--engine", "llama.cpp"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The king") and len(result.stdout.strip()) > len("The king")


def test_cli_engine_error_is_one_line(tiny_clm_run, cli):
    result = cli("generate", tiny_clm_run, "The king", "--engine", "llama.cpp")
    assert result.returncode != 0 and len(result.error_lines) == 1 and "GGUF" in result.error_lines[0]
    assert "Traceback" not in result.stderr
