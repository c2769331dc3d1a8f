"""Chat fine-tuning: conversations (OpenAI `messages`, ShareGPT `conversations`) rendered with the model's chat
template, the loss on every reply and its end-of-turn token only; bad rows named; long ones cut at turns; a
trained model that plain transformers and `lmtune chat` answer alike."""

import json
import os
import subprocess
import sys

import pytest

from lmtune.errors import LmtuneError
from lmtune.models.load import load_tokenizer
from lmtune.tasks.chat import BadRow, conversation, encode, ensure_template, fit
from tests.conftest import write_chats

CHAT = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is the castle called?"},
    {"role": "assistant", "content": "Elsinore."},
    {"role": "user", "content": "And who walks there at night?"},
    {"role": "assistant", "content": "The ghost of the old king."},
]


def expected_mask(tokenizer, messages, opening: str, closing: str) -> list[int]:
    """Independently of `encode`: the rendered text's characters from each reply's first character through
    the end-of-turn marker after it (`closing`), mapped to tokens by their character offsets."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans, at = [], 0
    for message in messages:
        if message["role"] == "assistant":
            start = text.index(opening, at) + len(opening)
            end = text.index(closing, start) + len(closing)
            spans.append((start, end))
            at = end
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [int(any(a <= start < b for a, b in spans)) for start, _ in offsets]


@pytest.mark.parametrize("template", ["smollm2", "default"])
def test_the_loss_covers_the_replies_and_their_end_of_turn_token_only(template):
    if template == "smollm2":
        tokenizer = load_tokenizer(None, "smollm2-135m")  # its own ChatML template (with a default system prompt)
        opening, closing = "<|im_start|>assistant\n", "<|im_end|>\n"
    else:
        tokenizer = ensure_template(load_tokenizer("gpt2-bpe", "gpt-tiny"))  # no template: lmtune's default
        opening, closing = "<|assistant|>\n", tokenizer.eos_token + "\n"
    for messages in (CHAT, CHAT[1:]):  # with and without a system prompt
        ids, mask = encode(tokenizer, messages)
        assert mask == expected_mask(tokenizer, messages, opening, closing)
        learned = tokenizer.decode([i for i, m in zip(ids, mask) if m])
        assert "Elsinore." in learned and "The ghost of the old king." in learned
        assert "castle" not in learned and "briefly" not in learned and learned.count(closing.strip()) == 2


def test_sharegpt_rows_and_bad_rows():
    shared = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}
    assert conversation(shared, "row 1") == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
    for row, message in (
        ({"messages": "hi"}, "row 7: 'messages' must be a list of turns, not str"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "row 7: turn 1 has role 'robot'"),
        ({"messages": [{"role": "user", "content": ["x"]}]}, "row 7: turn 1's content is a list"),
        ({"messages": ["hi"]}, "row 7: turn 1 is a str, not an object"),
    ):
        with pytest.raises(LmtuneError, match=message):
            conversation(row, "row 7")
    for row, why in (
        ({"messages": [{"role": "user", "content": "Hi"}]}, "no assistant turn"),
        (
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}]},
            "an empty assistant turn",
        ),
    ):
        with pytest.raises(BadRow, match=why):
            conversation(row, "row 7")


def test_a_long_conversation_loses_its_oldest_turns_and_keeps_its_system_prompt():
    tokenizer = ensure_template(load_tokenizer("gpt2-bpe", "gpt-tiny"))
    long = [CHAT[0]] + [
        {"role": role, "content": f"{role} turn {i} " + "word " * 12}
        for i in range(6)
        for role in ("user", "assistant")
    ]
    whole, _ = encode(tokenizer, long)
    ids, mask, dropped = fit(tokenizer, long, len(whole) // 2)
    text = tokenizer.decode(ids)
    assert len(ids) <= len(whole) // 2 and dropped >= 2 and dropped % 2 == 0
    assert text.startswith("<|system|>\nYou answer briefly.") and "user turn 0" not in text
    assert "assistant turn 5" in text
    with pytest.raises(BadRow, match="longer than data.block_size"):
        fit(tokenizer, long, 8)


def test_train_on_conversations_then_transformers_and_lmtune_chat_answer_alike(tiny_chat_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmtune.infer.chat import ChatSession
    from lmtune.infer.generate import GenerationSettings

    summary = json.loads((tiny_chat_run / "summary.json").read_text())
    assert summary["final"]["val_loss"] < summary["base"]["val_loss"]
    stats = json.loads((tiny_chat_run / "data" / "stats.json").read_text())
    assert stats["train conversations"] + stats["validation conversations"] == 48
    final = tiny_chat_run / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert tokenizer.chat_template  # lmtune's default, saved with the model
    model = AutoModelForCausalLM.from_pretrained(final)
    messages = [{"role": "user", "content": "Who guards the gate number 3?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(
        **ids,
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    theirs = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    session = ChatSession(str(final), settings=GenerationSettings(max_new_tokens=12, temperature=0.0))
    from lmtune.infer import load

    session.loaded = load(str(final), dtype="fp32")
    ours = "".join(session.reply(messages[0]["content"])).strip()
    assert ours == theirs and ours  # the same greedy reply through transformers and lmtune chat


def test_messages_rows_are_recognised(tmp_path):
    from lmtune.train.defaults import guess_objective

    assert guess_objective([str(write_chats(tmp_path / "a.jsonl", "messages"))]) == "chat"
    assert guess_objective([str(write_chats(tmp_path / "b.jsonl", "conversations"))]) == "chat"


def test_lmtune_chat_in_the_terminal(tiny_chat_run):
    """Multi-turn through stdin: a reply, /reset, another, /quit."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmtune.cli",
            "chat",
            str(tiny_chat_run),
            "--temperature",
            "0",
            "--max-new-tokens",
            "8",
            "--dtype",
            "fp32",
        ],
        input="Who guards the gate number 2?\n/reset\nWho guards the gate number 4?\n/quit\n",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    replies = [
        line.removeprefix("assistant> ") for line in result.stdout.splitlines() if line.startswith("assistant> ")
    ]
    assert len(replies) == 2 and "(conversation reset)" in result.stdout
    # After /reset the second question is answered as the first of a conversation.
    from lmtune.infer.chat import ChatSession
    from lmtune.infer.generate import GenerationSettings

    fresh = ChatSession(str(tiny_chat_run), settings=GenerationSettings(max_new_tokens=8, temperature=0.0))
    from lmtune.infer import load

    fresh.loaded = load(str(tiny_chat_run), dtype="fp32")
    assert "".join(fresh.reply("Who guards the gate number 4?")).strip() == replies[1].strip()
