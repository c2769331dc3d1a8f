"""What the server's routes take and give: request bodies whose schema carries this server's caps (so
`/docs` and clients see them, and anything beyond them is a 422 before any work), response bodies, and
the events a stream sends."""

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lmtune.infer.generate import (
    GenerationSettings,
    NewTokens,
    SamplingSettings,
    Seed,
    Sequences,
    Temperature,
    TopP,
)


@dataclass
class Limits:
    max_input_chars: int = 8000
    max_new_tokens: int = 512
    max_batch: int = 64  # texts per request
    batch_size: int = 8  # sequences generated together per model (continuous batching); 1: one at a time


ModelName = Annotated[
    str | None, Field(description="a served model's name (GET /v1/models); default: the first that can")
]


class _OpenAIBody(BaseModel):
    """The OpenAI fields lmtune honours, with SamplingSettings' ranges; other OpenAI fields are ignored."""

    # strict: JSON's true is not the integer 1, nor "5" a number (a client's bug should be a 422).
    model_config = ConfigDict(extra="allow", strict=True)
    model: ModelName = None
    max_tokens: NewTokens = 16
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    n: Sequences = 1
    stream: bool = False
    seed: Seed | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


def request_bodies(limits: Limits) -> SimpleNamespace:
    """The request bodies, with this server's caps in their schema: `/docs` and clients see them, and
    anything beyond them is a 422 before any work."""
    Prompt = Annotated[str, Field(max_length=limits.max_input_chars)]  # may be empty: generate from nothing
    Prompts = Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=limits.max_batch)]
    Text = Annotated[str, Field(min_length=1, max_length=limits.max_input_chars)]
    Texts = Text | Annotated[list[Text], Field(min_length=1, max_length=limits.max_batch)]
    cap = limits.max_new_tokens
    Tokens = Annotated[NewTokens, Field(le=cap, description=f"tokens to generate (this server: at most {cap})")]

    class _Body(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        model: ModelName = None

    class FillMaskRequest(_Body):
        text: Texts
        top_k: int = Field(5, ge=1, le=100)

    class ClassifyRequest(_Body):
        text: Texts

    class GenerateRequest(_Body, SamplingSettings):
        """The sampling fields and their ranges are `SamplingSettings`': the same as the CLI's."""

        prompt: Prompt
        max_new_tokens: Tokens = min(64, cap)
        stream: bool = False

    class CompletionRequest(_OpenAIBody):
        prompt: Prompts
        max_tokens: Tokens = min(16, cap)

    class ChatRequest(_OpenAIBody):
        messages: list[ChatMessage] = Field(min_length=1, max_length=limits.max_batch)
        max_tokens: Tokens = min(128, cap)

    return SimpleNamespace(
        FillMaskRequest=FillMaskRequest,
        ClassifyRequest=ClassifyRequest,
        GenerateRequest=GenerateRequest,
        CompletionRequest=CompletionRequest,
        ChatRequest=ChatRequest,
    )


def generation_settings(body: BaseModel) -> GenerationSettings:
    """The one place a request body becomes generation settings (validated again there, as the CLI's are)."""
    if isinstance(body, _OpenAIBody):
        return GenerationSettings(
            max_new_tokens=body.max_tokens,
            temperature=body.temperature,
            top_k=None,
            top_p=body.top_p,
            num_return_sequences=body.n,
            seed=body.seed,
        )
    return GenerationSettings(**body.model_dump(include=set(SamplingSettings.model_fields)))


class ErrorDetail(BaseModel):
    message: str
    type: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class ModelLoad(BaseModel):
    busy: bool
    running: int = Field(description="requests (sequences) being generated or served now")
    waiting: int = Field(description="requests waiting for their turn")


class Health(BaseModel):
    status: str
    models: list[str]
    load: dict[str, ModelLoad]


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    owned_by: str = "lmtune"
    created: int = 0
    objective: str
    capabilities: list[str]
    labels: list[str] | None


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class MaskPrediction(BaseModel):
    token: str
    score: float
    continues_word: bool
    token_id: int
    sequence: str


class FillMaskResult(BaseModel):
    text: str
    masks: list[list[MaskPrediction]]


class FillMaskResponse(BaseModel):
    model: str
    results: list[FillMaskResult]


class ClassifyResult(BaseModel):
    text: str
    label: str
    score: float
    scores: dict[str, float]


class ClassifyResponse(BaseModel):
    model: str
    results: list[ClassifyResult]


class GenerateResponse(BaseModel):
    model: str
    prompt: str
    completions: list[str]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: Literal["stop", "length"]


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]


# What a stream's events carry (`data: {...}`), per route.
class GenerateChunk(BaseModel):
    text: str


class CompletionChunkChoice(BaseModel):
    text: str
    index: int
    finish_reason: Literal["stop"] | None


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChunkChoice]


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Literal["stop"] | None


class ChatChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 404, 413, 422, 500)}
EVENT_BODIES = (GenerateChunk, CompletionChunk, ChatChunk, ErrorBody)


def streamed(chunk: type[BaseModel]) -> dict:
    """The 200 of a route that streams when asked: server-sent events, each `data:` a `chunk` (or, when the
    stream fails, an error), the last `[DONE]`. OpenAPI 3.1: the schema describes one event."""
    payload = {
        "anyOf": [{"$ref": f"#/components/schemas/{chunk.__name__}"}, {"$ref": "#/components/schemas/ErrorBody"}]
    }
    data = {
        "anyOf": [
            {"const": "[DONE]"},
            {"type": "string", "contentMediaType": "application/json", "contentSchema": payload},
        ]
    }
    event = {"type": "object", "required": ["data"], "properties": {"data": data}}
    return {
        **ERRORS,
        200: {
            "description": "JSON, or server-sent events when `stream` is true",
            "content": {"text/event-stream": {"schema": event}},
        },
    }
