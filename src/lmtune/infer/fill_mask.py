"""Fill-mask: for each mask in the input, the top-k tokens with their probabilities."""

from __future__ import annotations

import torch

from lmtune.errors import LmtuneError
from lmtune.infer import LoadedModel, as_loaded
from lmtune.tasks.heads import masked_logits

GENERIC_MASK = "[MASK]"  # accepted for every model, whatever its own mask token (<mask> for RoBERTa)


def _with_model_mask(text: str, tokenizer) -> str:
    mask = tokenizer.mask_token
    if mask is None:
        raise LmtuneError("this model's tokenizer has no mask token; fill-mask needs a masked-LM encoder")
    text = text.replace(GENERIC_MASK, mask) if mask != GENERIC_MASK else text
    if mask not in text:
        raise LmtuneError(f"no mask in the input: write {GENERIC_MASK} where a word should be predicted")
    return text


def check_masks(tokenizer, texts: list[str]) -> None:
    """LmtuneError unless every text has a mask (the server checks each request before batching them)."""
    for text in texts:
        _with_model_mask(text, tokenizer)


def _marks_word_starts(tokenizer) -> bool:
    """Byte-level BPE ('Ġ') and SentencePiece ('▁') mark the tokens that start a word."""
    second = tokenizer("a b", add_special_tokens=False).input_ids[-1]
    return tokenizer.convert_ids_to_tokens(second).startswith(("Ġ", "▁"))


def _display(tokenizer, token_id: int, marks_starts: bool) -> tuple[str, bool]:
    """(readable token, whether it continues the previous word): '##ing' -> ('ing', True)."""
    raw = tokenizer.convert_ids_to_tokens(token_id)
    if raw.startswith("##"):
        return raw[2:], True
    text = tokenizer.decode([token_id]).strip() or raw
    return text, marks_starts and not raw.startswith(("Ġ", "▁")) and raw.isalnum()


def _mask_logits(model, enc, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Vocabulary logits at the masks only (the output layer runs only where a word is asked for), and
    (row, position) of each mask."""
    where = enc["input_ids"] == mask_id
    logits = masked_logits(model, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, where)
    return logits.float(), where.nonzero()


@torch.inference_mode()
def fill_mask(
    model: str | LoadedModel, texts: str | list[str], top_k: int = 5
) -> list[list[dict]] | list[list[list[dict]]]:
    """For one text: a list (one per mask, in order) of top-k predictions
    `{"token", "score", "continues_word", "sequence"}` sorted by score. For a list of texts: one such list each."""
    loaded = as_loaded(model, "fill-mask")
    single = isinstance(texts, str)
    batch = [_with_model_mask(t, loaded.tokenizer) for t in ([texts] if single else texts)]
    tok = loaded.tokenizer
    device = next(loaded.model.parameters()).device
    enc = tok(batch, return_tensors="pt", padding=True, truncation=True).to(device)
    logits, places = _mask_logits(loaded.model, enc, tok.mask_token_id)
    logits[:, tok.all_special_ids] = float("-inf")  # [CLS], [PAD], ... are never a word to fill in
    top_all = logits.softmax(-1).topk(min(top_k, logits.shape[-1]), dim=-1)
    marks_starts = _marks_word_starts(tok)
    results = []
    for row in range(len(batch)):
        ids = enc["input_ids"][row]
        mine = (places[:, 0] == row).nonzero().flatten().tolist()  # this row's masks, in order
        per_mask = []
        for m in mine:
            position = int(places[m, 1])
            preds = []
            for score, token_id in zip(top_all.values[m].tolist(), top_all.indices[m].tolist()):
                filled = ids.clone()
                filled[position] = token_id
                token, continues = _display(tok, token_id, marks_starts)
                preds.append(
                    {
                        "token": token,
                        "score": score,
                        "continues_word": continues,
                        "token_id": token_id,
                        "sequence": tok.decode(filled[enc["attention_mask"][row].bool()], skip_special_tokens=True),
                    }
                )
            per_mask.append(preds)
        results.append(per_mask)
    return results[0] if single else results


def compare_table(texts: list[str], base: str, tuned: str, top_k: int = 5):
    """A rich table: for each input and mask, the base model's and the tuned model's top-k side by side."""
    from rich.table import Table

    table = Table(title="fill-mask: base vs tuned", show_lines=True)
    table.add_column("input")
    table.add_column(f"base: {base}")
    table.add_column(f"tuned: {tuned}")
    base_out, tuned_out = fill_mask(base, texts, top_k), fill_mask(tuned, texts, top_k)
    for text, b, t in zip(texts, base_out, tuned_out):
        for m, (bm, tm) in enumerate(zip(b, t)):
            label = text if len(b) == 1 else f"{text}\n(mask {m + 1})"
            table.add_row(label, format_predictions(bm), format_predictions(tm))
    return table


def format_predictions(preds: list[dict]) -> str:
    return "\n".join(f"{p['score']:6.1%}  {'-' if p['continues_word'] else ''}{p['token']}" for p in preds)
