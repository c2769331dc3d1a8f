"""QLoRA (`model.quantize: nf4`): LoRA adapters trained on a 4-bit (bitsandbytes) base.

Where the installed bitsandbytes runs 4-bit layers on this CPU (0.50.2 does), a real tiny run: its loss
falls, only the adapters train, and final/ is a plain full-precision model that computes what the
trained 4-bit model computed. Elsewhere those tests are skipped with the reason; the error messages
(no bitsandbytes, no LoRA, FSDP, a preset, a CPU bitsandbytes cannot use) are tested either way."""

from __future__ import annotations

import contextlib
import copy
import json
import sys

import pytest
import torch
import yaml

from tests.conftest import make_story


def _cpu_qlora_unavailable() -> str | None:
    """None where bitsandbytes runs 4-bit layers on this CPU, else why not (the skip reason)."""
    from lmtune.errors import LmtuneError
    from lmtune.models.qlora import check_bitsandbytes

    try:
        check_bitsandbytes("nf4", torch.device("cpu"))
    except LmtuneError as err:
        return str(err)
    return None


needs_cpu_qlora = pytest.mark.skipif(
    _cpu_qlora_unavailable() is not None, reason=f"QLoRA cannot run here: {_cpu_qlora_unavailable()}"
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The story corpus and a small pretrained causal LM (a tiny GPT-2 trained on it for a few steps, so that
    adapters have something left to learn): QLoRA's base."""
    from lmtune.config import build_config
    from lmtune.train.loop import train

    root = tmp_path_factory.mktemp("qlora")
    stories = root / "stories"
    stories.mkdir()
    for i in range(12):
        (stories / f"story{i:02d}.txt").write_text(make_story(i))
    base = train(
        build_config(
            {
                "objective": "clm",
                "output_dir": str(root / "base"),
                "model": {"name": "gpt-tiny", "dropout": 0.0},
                "tokenizer": {"train": {"kind": "bpe", "vocab_size": 300, "min_frequency": 1}},
                "data": {"train": str(stories), "block_size": 32},
                "train": {
                    "batch_size": 8,
                    "lr": 3e-3,
                    "max_steps": 8,
                    "eval_every": 0,
                    "precision": "fp32",
                    "threads": 2,
                },
                "report": {"compare_base": False},
            }
        ),
        progress=False,
    )["final_model"]
    return root, stories, base


def _recipe(workspace, run_name: str, **model) -> dict:
    root, stories, base = workspace
    return {
        "objective": "clm",
        "output_dir": str(root / run_name),
        "model": {
            "name": base,
            "dropout": 0.0,
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "quantize": "nf4",
            **model,
        },
        "data": {"train": str(stories), "block_size": 32},
        "train": {
            "batch_size": 8,
            "lr": 1e-2,
            "max_steps": 30,
            "eval_every": 10,
            "log_every": 5,
            "precision": "fp32",
            "threads": 2,
        },
        "report": {"compare_base": False},
    }


@pytest.fixture(scope="module")
def qlora_run(workspace):
    from lmtune.config import build_config
    from lmtune.train.loop import train

    summary = train(build_config(_recipe(workspace, "qlora")), progress=False)
    return summary


# ---- a real run (bitsandbytes' CPU backend) ----------------------------------------------------------


@needs_cpu_qlora
def test_qlora_trains_only_the_adapters_and_the_loss_falls(qlora_run):
    from pathlib import Path

    run = Path(qlora_run["run"])
    # gpt-tiny: 2 blocks of width 64; "all-linear" puts r=8 adapters on c_attn (64->192), attn.c_proj (64->64),
    # mlp.c_fc (64->256) and mlp.c_proj (256->64): r * (in + out) each. Nothing else trains.
    per_block = 8 * ((64 + 192) + (64 + 64) + (64 + 256) + (256 + 64))
    assert qlora_run["parameters"]["trainable"] == 2 * per_block == 16_384

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["train_loss"] for r in records if r["event"] == "train"]
    base, best = qlora_run["base"]["val_loss"], qlora_run["best"]["val_loss"]
    # Measured here: train loss 4.56 (first 5 steps) -> 4.47 (last 5); held-out 4.57 (the 4-bit base) -> 4.46
    # (plain LoRA on the full-precision base, same recipe: 4.57 -> 4.47).
    assert train_losses[-1] < train_losses[0] - 0.05, train_losses
    assert best < base - 0.05, (base, best)
    assert qlora_run["beats_base"] is True

    # Checkpoints and adapter/ hold the adapter alone; final/ the merged model.
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    assert (checkpoint / "adapter_model.safetensors").exists() and not (checkpoint / "model.safetensors").exists()
    assert (run / "adapter" / "adapter_config.json").exists()
    assert (run / "final" / "model.safetensors").exists()


@needs_cpu_qlora
def test_final_is_a_full_precision_model_that_computes_what_was_trained(qlora_run, workspace):
    from pathlib import Path

    from peft import PeftModel
    from safetensors import safe_open

    from lmtune.config import load_config
    from lmtune.infer import load
    from lmtune.models.load import load_model, load_tokenizer
    from lmtune.models.qlora import is_quantized, merge_lora
    from lmtune.tasks import get_objective
    from lmtune.train.data import prepare_data

    run = Path(qlora_run["run"])
    final = run / "final"
    config = json.loads((final / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["GPT2LMHeadModel"]
    with safe_open(str(final / "model.safetensors"), framework="pt") as f:
        dtypes = {f.get_tensor(key).dtype for key in f.keys()}
        # GPT-2's Conv1D layout (in, out), not the transposed one bitsandbytes quantized
        assert f.get_tensor("transformer.h.0.attn.c_attn.weight").shape == (64, 192)
    assert dtypes == {torch.float32}

    # The trained model in memory: the 4-bit base, computing in fp32, with the run's adapter.
    tokenizer = load_tokenizer(None, workspace[2])
    base = load_model("clm", workspace[2], tokenizer, quantize="nf4", compute_dtype=torch.float32, device="cpu")
    trained = PeftModel.from_pretrained(base, run / "adapter").eval()
    assert is_quantized(trained)
    ids = torch.tensor([tokenizer("The king the queen the prince a ghost walks the castle at night")["input_ids"]] * 2)
    with torch.no_grad():
        quantized_logits = trained(input_ids=ids).logits
        # last/ is merged from a copy while training goes on (the best adapter is loaded back afterwards)
        copy_logits = merge_lora(copy.deepcopy(trained)).eval()(input_ids=ids).logits
        assert is_quantized(trained)
        merged = merge_lora(trained).eval()
        merged_logits = merged(input_ids=ids).logits
        loaded = load(str(final), dtype="fp32").model
        final_logits = loaded(input_ids=ids).logits
    assert not is_quantized(merged)
    # final/ holds exactly the merged weights (max difference measured here: 0.0)
    assert torch.allclose(final_logits, merged_logits, rtol=0, atol=1e-6)
    assert torch.equal(copy_logits, merged_logits)
    # dequantized base + adapter update in one fp32 matrix vs the 4-bit layer plus the adapter's own path: the
    # same function, summed in another order (measured here: 3.6e-7 on logits up to 1.6)
    assert torch.allclose(merged_logits, quantized_logits, rtol=0, atol=1e-4)
    with torch.no_grad():  # the adapter did act: final/ is not the base model
        base_logits = load(str(workspace[2]), dtype="fp32").model(input_ids=ids).logits
    assert (final_logits - base_logits).abs().max() > 0.1

    # final/ scores on the held-out split what the run reported for it (evaluated as the 4-bit model)
    recipe = load_config(run / "config.yaml")
    prepared = prepare_data(recipe, run / "data", quiet=True)
    metrics = get_objective("clm").evaluate(
        loaded, prepared.dataset["validation"], prepared.tokenizer, recipe, contextlib.nullcontext, batch_size=8
    )
    assert metrics["val_loss"] == pytest.approx(qlora_run["final"]["val_loss"], abs=1e-4)


@needs_cpu_qlora
def test_export_merges_a_qlora_checkpoint_as_the_run_merged_it(qlora_run, tmp_path):
    """`lmtune export RUN/checkpoints/step-N` merges the checkpoint's adapter into the dequantized 4-bit
    base, as the run did for its own model of that step (final/, or last/ when an earlier one was best)."""
    from pathlib import Path

    from safetensors.torch import load_file

    from lmtune.export import export_model

    run = Path(qlora_run["run"])
    steps = qlora_run["steps"]
    same_step = run / ("final" if qlora_run["best_step"] == steps else "last")
    out = export_model(str(run / "checkpoints" / f"step-{steps}"), tmp_path / "export")
    exported, saved = load_file(out / "model.safetensors"), load_file(same_step / "model.safetensors")
    assert exported.keys() == saved.keys()
    assert max(float((exported[k] - saved[k]).abs().max()) for k in saved) <= 1e-6  # measured here: 0.0
    assert "quantization_config" not in json.loads((out / "config.json").read_text())


# ---- errors: one line each, whether or not bitsandbytes is installed ------------------------------------


def _train_cli(cli, workspace, tmp_path, recipe: dict, *args):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = cli("train", path, *args)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and len(result.error_lines) == 1, result.stderr
    return result.error_lines[0]


def test_quantize_without_lora_is_refused(cli, workspace, tmp_path):
    recipe = _recipe(workspace, "no-lora")
    del recipe["model"]["lora"]
    line = _train_cli(cli, workspace, tmp_path, recipe)
    assert "model.quantize nf4 (QLoRA)" in line and "model.lora" in line
    assert not (workspace[0] / "no-lora").exists()


def test_quantize_with_fsdp_is_refused(cli, workspace, tmp_path):
    line = _train_cli(cli, workspace, tmp_path, _recipe(workspace, "fsdp"), "--train.distributed", "fsdp")
    assert "does not work with train.distributed fsdp" in line and "ddp" in line
    assert not (workspace[0] / "fsdp").exists()  # nothing trained: no half-made run folder


def test_missing_bitsandbytes_says_how_to_install_it(cli, workspace, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` fails as if not installed
    line = _train_cli(cli, workspace, tmp_path, _recipe(workspace, "no-bnb"))
    assert "needs bitsandbytes, which is not installed: pip install 'lmtune[qlora]'" in line
    assert not (workspace[0] / "no-bnb").exists()


def test_a_preset_or_an_encoder_cannot_be_quantized(cli, workspace, tmp_path):
    from lmtune.errors import LmtuneError
    from lmtune.models.load import load_model

    line = _train_cli(cli, workspace, tmp_path, _recipe(workspace, "preset", name="gpt-tiny"))
    assert "gpt-tiny is a from-scratch preset" in line
    with pytest.raises(LmtuneError, match="QLoRA.* is for causal models"):
        load_model("mlm", "minilm-l6", None, quantize="nf4")
    native = _recipe(workspace, "native", impl="native")
    assert "model.impl native" in _train_cli(cli, workspace, tmp_path, native)


def test_a_bitsandbytes_without_cpu_support_asks_for_cuda(monkeypatch):
    """As an older bitsandbytes (CUDA only) reports itself: QLoRA needs a CUDA GPU."""
    bnb = pytest.importorskip("bitsandbytes")
    from lmtune.errors import LmtuneError
    from lmtune.models.qlora import check_bitsandbytes

    monkeypatch.setattr(bnb, "supported_torch_devices", {"cuda"}, raising=False)
    with pytest.raises(LmtuneError, match="cannot run 4-bit layers on cpu .*QLoRA needs a CUDA GPU here"):
        check_bitsandbytes("nf4", torch.device("cpu"))
