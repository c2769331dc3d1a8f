"""Talking to a model: a conversation rendered with the model's chat template (lmtune's default one for models
without their own, as chat training saves it), the reply streamed, the history kept. The one way lmtune turns
messages into a prompt: `lmtune chat`, the web UI's Chat tab and /v1/chat/completions all use `chat_prompt`."""

from __future__ import annotations

from collections.abc import Iterator

from lmtune.errors import LmtuneError
from lmtune.infer import LoadedModel, as_loaded
from lmtune.infer.generate import GenerationSettings, stream
from lmtune.tasks.common import DEFAULT_TEMPLATE


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The conversation so far and the assistant's turn opened, rendered by the model's chat template (or
    lmtune's default, the one chat training saves with models that had none)."""
    template = getattr(tokenizer, "chat_template", None) or DEFAULT_TEMPLATE
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, chat_template=template
        )
    except Exception as err:  # templates refuse some conversations (e.g. roles that do not alternate)
        raise LmtuneError(f"the model's chat template refused these messages: {err}") from None


class ChatSession:
    """A multi-turn conversation with one model: `reply(text)` streams the answer and keeps both turns."""

    def __init__(self, model: str | LoadedModel, system: str | None = None, settings: GenerationSettings | None = None):
        self.loaded = as_loaded(model, "chat")
        self.system, self.settings = system, settings or GenerationSettings(max_new_tokens=256, temperature=0.0)
        self.messages: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, text: str) -> Iterator[str]:
        """The assistant's answer to `text`, piece by piece; the exchange joins the history when it ends (an
        answer cut short, by Ctrl-C say, joins it as far as it went)."""
        self.messages.append({"role": "user", "content": text})
        answer = []
        try:
            for piece in stream(self.loaded, chat_prompt(self.loaded.tokenizer, self.messages), self.settings):
                answer.append(piece)
                yield piece
        finally:
            self.messages.append({"role": "assistant", "content": "".join(answer).strip()})
