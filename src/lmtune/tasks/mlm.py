"""Masked language modelling: BERT-style 15% masking (80% [MASK] / 10% random / 10% unchanged),
optionally whole-word, applied in the collator so every epoch sees fresh masks."""

from __future__ import annotations

import logging
import math

import torch

from lmtune.data.pack import Framing
from lmtune.tasks.base import Objective
from lmtune.tasks.common import eval_batches, pad_batch, pad_id
from lmtune.tasks.heads import masked_logits
from lmtune.tasks.losses import IGNORE_INDEX, cross_entropy

log = logging.getLogger("lmtune")
EVAL_MASK_SEED = 1234  # the same masks for every evaluation, run and model sharing a tokenizer


def word_start_table(tokenizer) -> torch.Tensor:
    """For each vocabulary id: does this token begin a word? (WordPiece '##' continues one; byte-level
    BPE 'Ġ' and SentencePiece '▁' begin one)."""
    vocab = tokenizer.get_vocab()
    table = torch.ones(max(len(tokenizer), max(vocab.values()) + 1), dtype=torch.bool)
    markers = [t for t in vocab if t.startswith(("Ġ", "▁"))]
    uses_space_marker = len(markers) > len(vocab) // 10
    for token, idx in vocab.items():
        if token.startswith("##"):
            table[idx] = False
        elif uses_space_marker and not token.startswith(("Ġ", "▁")) and token not in tokenizer.all_special_tokens:
            table[idx] = False
    return table


class MaskingCollator:
    """Pads a batch and masks it. `generator` None: the global RNG (saved in checkpoints, so resume is exact)."""

    def __init__(
        self, tokenizer, probability: float = 0.15, whole_word: bool = False, generator: torch.Generator | None = None
    ):
        if tokenizer.mask_token_id is None:
            raise ValueError("the tokenizer has no mask token")
        self.tokenizer = tokenizer
        self.probability = probability
        self.whole_word = whole_word
        self.generator = generator
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        self.word_start = word_start_table(tokenizer) if whole_word else None
        self.pad_id = pad_id(tokenizer)

    def mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        special = torch.isin(input_ids, self.special_ids) | (attention_mask == 0)
        draw = torch.rand(input_ids.shape, generator=self.generator)
        if self.whole_word:
            # Each token takes the draw of the first token of its word, so a word is masked as a group.
            starts = self.word_start[input_ids] | special
            positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
            start_of_word = torch.cummax(torch.where(starts, positions, torch.zeros_like(positions)), dim=1).values
            draw = torch.gather(draw, 1, start_of_word)
        masked = (draw < self.probability) & ~special
        labels = input_ids.masked_fill(~masked, -100)
        decide = torch.rand(input_ids.shape, generator=self.generator)
        inputs = input_ids.clone()
        inputs[masked & (decide < 0.8)] = self.tokenizer.mask_token_id
        random_slots = masked & (decide >= 0.8) & (decide < 0.9)
        inputs[random_slots] = torch.randint(len(self.tokenizer), input_ids.shape, generator=self.generator)[
            random_slots
        ]
        return inputs, labels

    def __call__(self, examples):
        batch = pad_batch([ex["input_ids"] for ex in examples], self.pad_id)
        batch["input_ids"], batch["labels"] = self.mask(batch["input_ids"], batch["attention_mask"])
        return batch


def make_collator(tokenizer, config=None):
    tc = config.train if config is not None else None
    return MaskingCollator(tokenizer, tc.mlm_probability if tc else 0.15, tc.whole_word_mask if tc else False)


def training_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy at the masked positions, the output layer run only there."""
    where = batch["labels"] != IGNORE_INDEX
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    return cross_entropy(masked_logits(model, inputs, where), batch["labels"][where], consume_logits=True)


@torch.no_grad()  # not inference_mode: FSDP must reuse the gathered parameters in training
def evaluate(model, dataset, tokenizer, config, autocast, batch_size: int = 8, max_batches: int | None = None):
    """MLM loss, perplexity and top-1/top-5 accuracy on masks fixed by a seed (comparable across runs)."""
    model.eval()
    probability = config.train.mlm_probability if config is not None else 0.15
    collate = MaskingCollator(tokenizer, probability, generator=torch.Generator().manual_seed(EVAL_MASK_SEED))
    total_loss, top1, top5, count = 0.0, 0, 0, 0
    for batch in eval_batches(dataset, collate, batch_size, max_batches):
        where = batch["labels"] != IGNORE_INDEX
        with autocast():
            logits = masked_logits(
                model, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, where
            )
        picked, targets = logits.float(), batch["labels"][where]
        total_loss += float(torch.nn.functional.cross_entropy(picked, targets, reduction="sum"))
        best = picked.topk(5, dim=-1).indices
        top1 += int((best[:, 0] == targets).sum())
        top5 += int((best == targets[:, None]).any(-1).sum())
        count += int(where.sum())
    mean = total_loss / max(count, 1)
    return {
        "val_loss": mean,
        "val_perplexity": math.exp(min(mean, 50)),
        "val_top1_accuracy": top1 / max(count, 1),
        "val_top5_accuracy": top5 / max(count, 1),
        "val_masked_tokens": count,
    }


def init_missing_mlm_head(model, missing_keys: list[str], mode: str = "identity") -> None:
    """Encoders saved without their MLM head (sentence embedders like MiniLM) get one here: decoder tied to
    the input embeddings, and (mode "identity") the transform started as the identity, so the first
    predictions are similarity to the input embeddings rather than noise."""
    head_keys = [k for k in missing_keys if not k.endswith("decoder.weight")]
    if not head_keys:
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key in head_keys:
            p = params.get(key)
            if p is None:
                continue
            if mode == "identity" and key.endswith("dense.weight") and p.shape[0] == p.shape[1]:
                p.copy_(torch.eye(p.shape[0]))
            elif key.endswith("bias"):
                p.zero_()
            elif "LayerNorm" in key or "layer_norm" in key:
                p.fill_(1.0)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    log.warning(
        "%s has no masked-LM head; initialised one (%s transform, decoder tied to embeddings). "
        "Its predictions mean little until it is MLM-trained.",
        type(model).__name__,
        mode,
    )


ENCODER_TYPES = {
    "bert",
    "distilbert",
    "roberta",
    "xlm-roberta",
    "electra",
    "deberta-v2",
    "albert",
    "camembert",
    "mpnet",
    "modernbert",
}


class MaskedLM(Objective):
    name = "mlm"
    random_collate = True  # masks from the checkpointed global RNG: exact resume
    summary = "masked language modelling: BERT-style masking, fresh masks every epoch"
    auto_class = "AutoModelForMaskedLM"
    lora_task_type = None  # peft has no MLM task type; the head trains in full (modules_to_save)
    capabilities = ("fill-mask",)
    pipeline_tag = "fill-mask"
    preset_family = "bert"
    export_formats = ("hf", "onnx")
    default_model = "minilm-l6"
    own_keys = ("train.mlm_probability", "train.whole_word_mask", "model.mlm_head_init", "report.fill_mask")

    def framing(self, tokenizer):

        return Framing.encoder(tokenizer)

    def make_collator(self, tokenizer, config):
        return make_collator(tokenizer, config)

    def make_loss(self, config, train_set):
        return training_loss

    def evaluate(self, model, dataset, tokenizer, config, autocast, batch_size=8, max_batches=None):
        return evaluate(model, dataset, tokenizer, config, autocast, batch_size, max_batches)

    def init_model(self, model, missing_keys: list[str], head_init: str = "identity") -> None:
        init_missing_mlm_head(model, missing_keys, head_init)

    def lora_modules_to_save(self, model) -> list[str] | None:
        # peft has no masked-LM task type: the (possibly new) MLM head trains in full beside the adapters.
        return ["cls"] if hasattr(model, "cls") else ["lm_head"]

    def recognizes(self, hf_config) -> bool:
        archs = " ".join(getattr(hf_config, "architectures", None) or [])
        return "MaskedLM" in archs or (hf_config.model_type in ENCODER_TYPES and "LM" not in archs)


OBJECTIVE = MaskedLM()
