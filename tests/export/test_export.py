"""`lmtune export`: what it writes loads in the tools people use (transformers' pipeline, ONNX Runtime,
GGUF readers) and gives the same outputs as the trained model; it never writes where it must not."""

import json
from pathlib import Path

import pytest
import torch
import transformers
import yaml

from lmtune.config import build_config
from lmtune.export import export_model
from lmtune.infer import load
from lmtune.infer.classify import classify
from lmtune.infer.fill_mask import fill_mask
from lmtune.infer.generate import generate
from lmtune.train.loop import train
from tests.conftest import converter_or_skip, make_story, snapshot, write_tasks


def card_metadata(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def stories(root: Path) -> Path:
    folder = root / "stories"
    folder.mkdir(exist_ok=True)
    for i in range(12):
        (folder / f"story{i:02d}.txt").write_text(make_story(i))
    return folder


def tiny_run(root: Path, objective: str, model_name: str, data: Path, **extra) -> Path:
    settings = {
        "objective": objective,
        "output_dir": str(root / "run"),
        "model": {"name": model_name, "dropout": 0.0},
        "data": {"train": str(data), "block_size": 32},
        "train": {"max_steps": 6, "batch_size": 8, "lr": 3e-3, "precision": "fp32", "eval_every": 3},
        "report": {"compare_base": False},
    }
    for key, value in extra.items():
        settings[key] = {**settings.get(key, {}), **value}
    train(build_config(settings), progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlm")
    return tiny_run(root, "mlm", "bert-tiny", stories(root))


def test_causal_export_loads_in_a_pipeline_and_generates_the_same(tiny_clm_run, tmp_path, cli):
    run = Path(tiny_clm_run).parent
    before = snapshot(run)
    result = cli("export", run, "--out", tmp_path / "export")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "export"
    assert (out / "model.safetensors").exists() and (out / "generation_config.json").exists()
    assert not (out / "trainer_state.pt").exists()
    pipe = transformers.pipeline("text-generation", model=str(out))
    prompt = "The king"
    exported = pipe(prompt, max_new_tokens=12, do_sample=False, return_full_text=False)[0]["generated_text"]
    # transformers loads fp32 weights: compare with lmtune in fp32 (its default may be bf16 on this CPU)
    assert exported == generate(load(tiny_clm_run, dtype="fp32"), prompt, max_new_tokens=12, temperature=0)[0]
    meta = card_metadata(out)
    assert meta["pipeline_tag"] == "text-generation" and "lmtune" in meta["tags"]
    card = (out / "README.md").read_text()
    assert "## Results on held-out text" in card and "val_loss" in card and "## Training recipe" in card
    assert snapshot(run) == before  # the run is only read


def test_classifier_export_gives_the_same_labels_and_scores(tiny_classifier, tmp_path):
    final, _ = tiny_classifier
    out = export_model(str(Path(final).parent), tmp_path / "export")
    pipe = transformers.pipeline("text-classification", model=str(out), top_k=None)
    texts = ["great film 3", "awful film 7"]
    ours = classify(load(final, dtype="fp32"), texts)
    for text, mine in zip(texts, ours):
        theirs = {r["label"]: r["score"] for r in pipe([text])[0]}
        assert set(theirs) == {"pos", "neg"}
        for label, score in mine["scores"].items():
            assert theirs[label] == pytest.approx(score, abs=1e-5)
    assert card_metadata(out)["pipeline_tag"] == "text-classification"


def test_masked_lm_export_fills_masks_like_lmtune(mlm_run, tmp_path):
    out = export_model(str(mlm_run), tmp_path / "export")
    pipe = transformers.pipeline("fill-mask", model=str(out), top_k=3)
    sentence = "the king walks the [MASK] at night"
    theirs = [r["token_str"].strip() for r in pipe(sentence)]
    ours = [
        m["token"].strip() for m in fill_mask(load(str(mlm_run / "final"), dtype="fp32"), [sentence], top_k=3)[0][0]
    ]
    assert theirs == ours
    assert card_metadata(out)["pipeline_tag"] == "fill-mask"


def test_multitask_export_is_a_text_generation_model_with_its_task_prompts(tmp_path):
    run = tiny_run(tmp_path, "sft", "gpt-tiny", write_tasks(tmp_path / "tasks.csv"))
    out = export_model(str(run), tmp_path / "export")
    assert card_metadata(out)["pipeline_tag"] == "text-generation"
    assert (out / "lmtune_tasks.json").exists()  # `lmtune generate --task` works on the export too
    pipe = transformers.pipeline("text-generation", model=str(out))
    prompt = "[SHOUT] say hot loudly\n"
    exported = pipe(prompt, max_new_tokens=4, do_sample=False, return_full_text=False)[0]["generated_text"]
    assert exported == generate(load(str(run / "final"), dtype="fp32"), prompt, max_new_tokens=4, temperature=0)[0]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    return tiny_run(
        root,
        "clm",
        "gpt-tiny",
        stories(root),
        model={"lora": {"r": 4, "alpha": 8}},
        train={"save_every": 3, "keep_checkpoints": 5, "lr": 1e-2},
    )


def test_lora_run_keeps_adapter_only_checkpoints_and_counts_trainable_parameters(lora_run):
    summary = json.loads((lora_run / "summary.json").read_text())
    assert 0 < summary["parameters"]["trainable"] < summary["parameters"]["total"] / 5
    step = lora_run / "checkpoints" / "step-3"
    assert (step / "adapter_config.json").exists() and not (step / "model.safetensors").exists()


def test_lora_export_merges_by_default_and_keeps_the_adapter_with_no_merge(lora_run, tmp_path, cli):
    merged = export_model(str(lora_run), tmp_path / "merged")
    assert (merged / "model.safetensors").exists() and not (merged / "adapter_config.json").exists()
    assert "lora" in card_metadata(merged)["tags"]
    ids = torch.tensor([[5, 6, 7, 8]])
    want = transformers.AutoModelForCausalLM.from_pretrained(lora_run / "final")(ids).logits
    got = transformers.AutoModelForCausalLM.from_pretrained(merged)(ids).logits
    torch.testing.assert_close(got, want)

    result = cli("export", lora_run, "--out", tmp_path / "adapter", "--no-merge")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    assert (tmp_path / "adapter" / "tokenizer_config.json").exists()  # usable without the run folder
    assert "LoRA adapter" in (tmp_path / "adapter" / "README.md").read_text()


def test_an_adapter_checkpoint_is_merged_onto_its_base(lora_run, tmp_path):
    from peft import PeftModel

    step = lora_run / "checkpoints" / "step-3"
    out = export_model(str(step), tmp_path / "step3")
    ids = torch.tensor([[5, 6, 7, 8]])
    exported = transformers.AutoModelForCausalLM.from_pretrained(out)(ids).logits
    # The reference: the checkpoint's adapter on a fresh base model, as peft loads it.
    from lmtune.models.load import load_model

    base = load_model("clm", "gpt-tiny", transformers.AutoTokenizer.from_pretrained(step))
    reference = PeftModel.from_pretrained(base, step)(ids).logits
    torch.testing.assert_close(exported, reference, atol=1e-5, rtol=1e-5)
    final = transformers.AutoModelForCausalLM.from_pretrained(lora_run / "final")(ids).logits
    assert not torch.allclose(exported, final)  # step 3 is not the end of the run


# ---- ONNX ------------------------------------------------------------------------------------------------
def test_onnx_export_of_a_classifier_matches_pytorch(tiny_classifier, tmp_path):
    import numpy as np
    import onnxruntime

    final, _ = tiny_classifier
    out = export_model(str(Path(final).parent), tmp_path / "onnx", format="onnx")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    enc = tokenizer(["great film 1", "awful film and more words 2"], return_tensors="np", padding=True)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    got = session.run(None, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})[0]
    model = load(final, dtype="fp32").model
    with torch.no_grad():
        want = model(
            input_ids=torch.tensor(enc["input_ids"]), attention_mask=torch.tensor(enc["attention_mask"])
        ).logits
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
    assert json.loads((out / "config.json").read_text())["id2label"]  # label names travel with it
    assert card_metadata(out)["library_name"] == "onnx"


def test_onnx_export_of_a_masked_lm_matches_pytorch(mlm_run, tmp_path):
    import onnxruntime

    out = export_model(str(mlm_run), tmp_path / "onnx", format="onnx")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    enc = tokenizer(["the [MASK] walks"], return_tensors="np")
    got = onnxruntime.InferenceSession(str(out / "model.onnx")).run(
        None, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    )[0]
    with torch.no_grad():
        want = load(str(mlm_run / "final"), dtype="fp32").model(input_ids=torch.tensor(enc["input_ids"])).logits.numpy()
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    assert abs(got - want).max() < 1e-3


def test_onnx_refuses_a_causal_model_in_one_line(tiny_clm_run, tmp_path, cli):
    result = cli("export", Path(tiny_clm_run).parent, "--out", tmp_path / "x", "--format", "onnx")
    assert result.returncode != 0 and len(result.error_lines) == 1 and "gguf" in result.error_lines[0]
    assert not (tmp_path / "x").exists()


# ---- GGUF (llama.cpp's converter) --------------------------------------------------------------------------
def test_gguf_export_of_a_llama_model_loads_and_generates_the_same(tmp_path):
    """A tiny model of SmolLM2's architecture and tokenizer (the demo's family), trained a few steps."""
    from lmtune.models.load import load_tokenizer

    converter_or_skip()
    tokenizer = load_tokenizer(None, "smollm2-135m")
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    run = tiny_run(tmp_path, "clm", str(tmp_path / "base"), stories(tmp_path))
    out = export_model(str(run), tmp_path / "gguf", format="gguf", gguf_type="f32")
    files = list(out.glob("*.gguf"))
    assert [f.name for f in files] == ["run-f32.gguf"]
    assert card_metadata(out)["library_name"] == "gguf"
    from_gguf = transformers.AutoModelForCausalLM.from_pretrained(out, gguf_file=files[0].name)
    trained = transformers.AutoModelForCausalLM.from_pretrained(run / "final")
    ids = tokenizer("The king walks the castle", return_tensors="pt").input_ids
    assert torch.equal(
        from_gguf.generate(ids, max_new_tokens=16, do_sample=False),
        trained.generate(ids, max_new_tokens=16, do_sample=False),
    )


def test_gguf_export_of_a_gpt2_preset_is_a_readable_gguf_that_lmtune_runs(tiny_clm_run, tmp_path, monkeypatch):
    """Read back by transformers' GGUF loader too (GPT-2 with a 512-token context: transformers maps the
    context to n_ctx only, and the position table did not fit), so `lmtune generate x.gguf` works without
    llama.cpp."""
    from gguf import GGUFReader

    converter_or_skip()
    monkeypatch.setenv("LMTUNE_CACHE", str(tmp_path / "cache"))
    out = export_model(str(Path(tiny_clm_run).parent), tmp_path / "gguf", format="gguf", gguf_type="f32")
    gguf_path = next(out.glob("*.gguf"))
    reader = GGUFReader(gguf_path)
    names = {t.name for t in reader.tensors}
    assert "token_embd.weight" in names and "blk.1.attn_qkv.weight" in names
    settings = dict(max_new_tokens=12, temperature=0.0)
    from lmtune.infer.generate import GenerationSettings

    from_gguf = generate(load(str(gguf_path), engine="torch", dtype="fp32"), "The king", GenerationSettings(**settings))
    trained = generate(load(tiny_clm_run, dtype="fp32"), "The king", GenerationSettings(**settings))
    assert from_gguf == trained


def test_an_unfinished_or_damaged_checkpoint_is_not_exported(tiny_clm_run, tmp_path, cli):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(Path(tiny_clm_run).parent, run)
    step = sorted((run / "checkpoints").iterdir())[-1]
    cut = step.with_name(step.name + ".tmp")
    shutil.copytree(step, cut)
    result = cli("export", cut, "--out", tmp_path / "a")
    assert result.returncode == 1 and "is an unfinished checkpoint" in result.error_lines[0]
    weights = step / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # cut short by a full disk or a kill
    result = cli("export", step, "--out", tmp_path / "b")
    assert result.returncode == 1 and len(result.error_lines) == 1, result.stderr
    assert "corrupt or truncated weights file" in result.error_lines[0]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_gguf_without_a_converter_says_how_to_get_one(tiny_clm_run, tmp_path, cli, monkeypatch):
    monkeypatch.setattr("lmtune.export.gguf.BUNDLED", tmp_path / "nothing")
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    result = cli("export", Path(tiny_clm_run).parent, "--out", tmp_path / "x", "--format", "gguf")
    assert result.returncode != 0 and len(result.error_lines) == 1
    assert "pip download --no-binary :all: --no-deps llama-cpp-python" in result.error_lines[0]
    assert not (tmp_path / "x").exists()


def test_a_failing_converter_leaves_nothing_behind(tiny_clm_run, tmp_path, cli):
    fake = tmp_path / "llama.cpp"
    fake.mkdir()
    (fake / "convert_hf_to_gguf.py").write_text("import sys\nsys.exit('boom: unsupported model')\n")
    (tmp_path / "out").mkdir()
    result = cli(
        "export", Path(tiny_clm_run).parent, "--out", tmp_path / "out" / "x", "--format", "gguf", "--converter", fake
    )
    assert result.returncode != 0 and "boom: unsupported model" in result.error_lines[0]
    assert list((tmp_path / "out").iterdir()) == []  # neither the export nor its working copies


# ---- where it writes -------------------------------------------------------------------------------------
def test_export_never_writes_into_a_users_folder_or_over_an_export(tiny_clm_run, tmp_path, cli):
    run = Path(tiny_clm_run).parent
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = cli("export", run, "--out", mine)
    assert result.returncode != 0 and "not empty" in result.error_lines[0]
    assert snapshot(mine) == {"notes.txt": b"keep me"}

    assert cli("export", run, "--out", tmp_path / "e").returncode == 0
    again = cli("export", run, "--out", tmp_path / "e")
    assert again.returncode != 0 and "--overwrite" in again.error_lines[0]
    assert cli("export", run, "--out", tmp_path / "e", "--overwrite").returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e", "mine"]  # no temporary folders left

    inside = cli("export", run, "--out", run / "final" / "copy")
    assert inside.returncode != 0 and len(inside.error_lines) == 1


def test_export_of_a_missing_or_unfinished_run_is_one_line(tmp_path, cli):
    result = cli("export", tmp_path / "nope", "--out", tmp_path / "x")
    assert result.returncode != 0 and len(result.error_lines) == 1
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("objective: clm\n")
    result = cli("export", run, "--out", tmp_path / "x")
    assert result.returncode != 0 and "without a final model" in result.error_lines[0]
