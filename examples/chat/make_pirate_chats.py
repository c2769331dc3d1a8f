"""Writes pirate-arithmetic.jsonl: conversations (OpenAI `messages` rows) with a pirate who does sums, for the
chat recipe (configs/chat-smollm2.yaml). Made by this script alone, seeded: `python make_pirate_chats.py`
writes the same file every time. A tuned model's replies change visibly: the voice, and the sums.

Each conversation asks one or two follow-ups about the last answer ("And times 3?"); some open with a system
prompt. The numbers are small, so the answers can be checked."""
import json
import random
from pathlib import Path

OPS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
OPENERS = ["What is {a} {op} {b}?", "How much is {a} {op} {b}?", "Can you work out {a} {op} {b}?",
           "Quick, {a} {op} {b}?"]
FOLLOW_UPS = ["And {op} {b}?", "Now {op} {b}?", "What if I take that {op} {b}?"]
REPLIES = ["Arr, {a} {op} {b} be {c}, matey!", "Yo ho! {a} {op} {b} makes {c}.",
           "Shiver me timbers, that be {c}!", "Aye, {c} it be, by the count of me doubloons."]
SYSTEMS = ["You are a pirate who does sums.", "Answer like an old sea dog."]


def conversation(rng: random.Random) -> dict:
    messages = [{"role": "system", "content": rng.choice(SYSTEMS)}] if rng.random() < 0.3 else []
    a, b, op = rng.randrange(1, 13), rng.randrange(1, 13), rng.choice(list(OPS))
    value = OPS[op](a, b)
    messages += [{"role": "user", "content": rng.choice(OPENERS).format(a=a, op=op, b=b)},
                 {"role": "assistant", "content": rng.choice(REPLIES).format(a=a, op=op, b=b, c=value)}]
    for _ in range(rng.randrange(0, 3)):
        b, op = rng.randrange(1, 6), rng.choice(["plus", "minus", "times"])
        a, value = value, OPS[op](value, b)
        messages += [{"role": "user", "content": rng.choice(FOLLOW_UPS).format(op=op, b=b)},
                     {"role": "assistant", "content": rng.choice(REPLIES).format(a=a, op=op, b=b, c=value)}]
    return {"messages": messages}


if __name__ == "__main__":
    rng = random.Random(2026)
    path = Path(__file__).with_name("pirate-arithmetic.jsonl")
    path.write_text("".join(json.dumps(conversation(rng)) + "\n" for _ in range(600)))
    print(f"wrote {path}")
