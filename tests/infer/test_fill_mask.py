import pytest
import torch

from lmtune.errors import LmtuneError
from lmtune.infer import load
from lmtune.infer.fill_mask import fill_mask


@pytest.fixture(scope="module")
def tiny_mlm_run(tmp_path_factory):
    from lmtune.config import build_config
    from lmtune.train.loop import train
    from tests.conftest import make_story

    root = tmp_path_factory.mktemp("mlm")
    (root / "book.txt").write_text("\n\n".join(make_story(i) for i in range(12)))
    config = build_config(
        {
            "objective": "mlm",
            "output_dir": str(root / "run"),
            "model": {"name": "bert-tiny", "dropout": 0.0},
            "data": {"train": str(root / "book.txt"), "block_size": 32},
            "train": {"batch_size": 16, "lr": 3e-3, "max_steps": 40, "eval_every": 100, "precision": "fp32"},
            "report": {"compare_base": False},
        }
    )
    return train(config, progress=False)


def test_mlm_training_lowers_loss(tiny_mlm_run):
    assert tiny_mlm_run["final"]["val_loss"] < tiny_mlm_run["base"]["val_loss"] - 1.0
    assert tiny_mlm_run["final"]["val_top5_accuracy"] > tiny_mlm_run["base"]["val_top5_accuracy"]


def test_fill_mask_shape_order_probabilities(tiny_mlm_run):
    model = tiny_mlm_run["final_model"]
    out = fill_mask(model, "the [MASK] walks the castle and the [MASK] speaks", top_k=4)
    assert len(out) == 2  # one list per mask
    for preds in out:
        assert len(preds) == 4
        scores = [p["score"] for p in preds]
        assert all(0.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)
        assert all(not p["token"].startswith("##") and not p["token"].startswith("[") for p in preds)
        assert all(p["token"] in p["sequence"] for p in preds)
    several = fill_mask(model, ["the [MASK] walks", "a ghost [MASK]"], top_k=3)
    assert len(several) == 2 and len(several[0]) == 1 and len(several[0][0]) == 3


def test_reload_gives_identical_predictions(tiny_mlm_run):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    folder = tiny_mlm_run["final_model"]
    model = AutoModelForMaskedLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok("the [MASK] walks the castle", return_tensors="pt")
    with torch.no_grad():
        probs = model(**enc).logits[0, 2].softmax(-1)
    ours = fill_mask(load(folder, dtype="fp32"), "the [MASK] walks the castle", top_k=3)[0]  # exact: fp32
    for pred in ours:
        assert pred["score"] == pytest.approx(
            float(probs[pred["token_id"]]) / (1 - float(probs[tok.all_special_ids].sum())), rel=1e-4
        )


def test_no_mask_is_a_clear_error(tiny_mlm_run):
    with pytest.raises(LmtuneError, match="no mask in the input"):
        fill_mask(tiny_mlm_run["final_model"], "nothing to fill here")


def test_roberta_style_mask_token(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForMaskedLM

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        ["the king and the queen walk in the castle"] * 20,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
    )
    torch.manual_seed(0)
    model = RobertaForMaskedLM(
        RobertaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            pad_token_id=1,
        )
    )
    model.save_pretrained(tmp_path / "roberta")
    tok.save_pretrained(tmp_path / "roberta")
    out = fill_mask(str(tmp_path / "roberta"), "the king [MASK] the castle", top_k=2)
    assert len(out) == 1 and len(out[0]) == 2
    out2 = fill_mask(str(tmp_path / "roberta"), "the king <mask> the castle", top_k=2)
    assert [p["token_id"] for p in out[0]] == [p["token_id"] for p in out2[0]]


def test_eval_reports_mlm_metrics_for_base_and_tuned(tiny_mlm_run, tmp_path):
    from lmtune.train.evaluate import evaluate_model
    from tests.conftest import make_story

    text = tmp_path / "held_out.txt"
    text.write_text(make_story(99))
    tuned = evaluate_model(tiny_mlm_run["final_model"], str(text), block_size=32)
    assert {"val_loss", "val_top1_accuracy", "val_top5_accuracy"} <= set(tuned)
    again = evaluate_model(tiny_mlm_run["final_model"], str(text), block_size=32)
    assert again == tuned  # the masks are fixed by a seed: the same numbers every time
