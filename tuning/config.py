"""TuneConfig: every setting of a prompt-tuning run, with defaults and self-validation; Decoding: a generation's.

The UI, the CLI and the tests all build these objects. They hold settings only; this module
loads nothing and imports neither torch nor transformers, so `python -m tuning --help` is
instant. `TuneConfig(num_virtual_tokens=0)` raises a ValueError that names the bad field and
its allowed range.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

INITS = ("random", "text", "sample_vocab", "instruction")
# init="instruction" starts the prompt from this text: every prompt of the dataset opens with it
INSTRUCTION = "I want you to act as"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# the written-prompt example counts the app, the CLI and the sweep offer (written.py); here so `--help` needs no torch
SHOTS = (1, 2, 4)

DEFAULT_MODEL = "openai-community/gpt2"
DEFAULT_DATASET = "fka/awesome-chatgpt-prompts"

# Hub ids from before the models moved into organisations: the Hub still serves the same
# repository under both, and PEFT records whichever one the trainer typed (often plain "gpt2")
HUB_ALIASES = {
    "gpt2": "openai-community/gpt2", "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large", "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}


def same_model(a: str, b: str) -> bool:
    """Whether two model names are the same model: equal, or a Hub id and its older alias.

    >>> same_model("gpt2", "openai-community/gpt2"), same_model("gpt2", "gpt2-medium")
    (True, False)
    """
    return HUB_ALIASES.get(a, a) == HUB_ALIASES.get(b, b)


@dataclass
class TuneConfig:
    # what to tune and on what
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Hub id, local folder, or .gguf file"})
    dataset: str = field(default=DEFAULT_DATASET, metadata={"help": "Hub id or local .csv/.json/.jsonl/.parquet"})
    # the soft prompt
    num_virtual_tokens: int = field(default=20, metadata={"help": "length of the soft prompt, 1-100"})
    init: str = field(default="instruction", metadata={"help": f"random | text | sample_vocab | instruction (the text {INSTRUCTION!r})"})
    init_text: str | None = field(default=None, metadata={"help": "text whose tokens seed the prompt (init=text); default: the act's prompt"})
    # optimisation
    epochs: int = field(default=10, metadata={"help": "passes over the training rows, 1-50"})
    # lr 0.3 with a 10% warm-up: the lowest held-out perplexity of the rates tried on SmolLM2 (docs/quality.md)
    learning_rate: float = field(default=0.3, metadata={"help": "AdamW step size; 1e-3 to 3e-1 is the useful range"})
    warmup_fraction: float = field(default=0.1, metadata={"help": "share of a run's steps over which the learning rate rises linearly to its full value, 0-0.5; then it decays linearly to 0"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay on the prompt, 0-1 (0: off)"})
    batch_size: int = field(default=4, metadata={"help": "rows per step, 1-64 (rows of similar length are batched together)"})
    max_length: int = field(default=512, metadata={"help": "text tokens kept per training row (also capped by the model's context)"})
    seed: int = field(default=0, metadata={"help": "seeds the split, the init, the batch order"})
    precision: str = field(default="auto", metadata={"help": "auto | fp32 | bf16 | fp16 (auto: bf16 where the hardware computes it natively, else fp32)"})
    # which rows
    acts: tuple[str, ...] = field(default=(), metadata={"help": "train on these acts only (default: all training acts)"})
    held_out_fraction: float = field(default=0.1, metadata={"help": "share of acts kept out of training for evaluation, 0-0.5"})
    text_only: bool = field(default=True, metadata={"help": "when the dataset has a `type` column, keep TEXT rows only"})

    def __post_init__(self) -> None:
        if isinstance(self.acts, str) or not isinstance(self.acts, (list, tuple)) and self.acts is not None:
            raise ValueError(f"acts must be a list of act names, got {self.acts!r}")  # "Poet" would be 4 acts
        self.acts = tuple(self.acts or ())
        if not all(isinstance(a, str) and a.strip() for a in self.acts):
            raise ValueError(f"acts must be non-empty act names, got {list(self.acts)!r}")
        _int_in("num_virtual_tokens", self.num_virtual_tokens, 1, 100)
        _int_in("epochs", self.epochs, 1, 50)
        _int_in("batch_size", self.batch_size, 1, 64)
        _int_in("max_length", self.max_length, 8, 1_000_000)
        _int_in("seed", self.seed, 0, 2**32 - 1)
        _float_in("learning_rate", self.learning_rate, 1e-6, 10.0)
        _float_in("held_out_fraction", self.held_out_fraction, 0.0, 0.5)
        _float_in("warmup_fraction", self.warmup_fraction, 0.0, 0.5)
        _float_in("weight_decay", self.weight_decay, 0.0, 1.0)
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("model", "dataset"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty Hub id or path")
        if self.init_text is not None and (not isinstance(self.init_text, str) or not self.init_text.strip()):
            raise ValueError("init_text must be non-empty text when given")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["acts"] = list(self.acts)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TuneConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _int_in(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number from {lo} to {hi}, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be from {lo} to {hi}, got {value}")


def _float_in(name: str, value, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number from {lo:g} to {hi:g}, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be from {lo:g} to {hi:g}, got {value:g}")


class GenerationError(ValueError):
    """Input or settings generation cannot use; the message is one sentence for the user."""


@dataclass
class Decoding:
    max_new_tokens: int = 64  # 1-1024, also capped by the context
    do_sample: bool = False  # False: greedy
    temperature: float = 0.8  # > 0; lower is more conservative (sampling only)
    top_p: float = 0.95  # (0, 1]; nucleus size (sampling only)
    top_k: int = 50  # 0 turns it off (sampling only)
    repetition_penalty: float = 1.0  # 1 is off; 1.1-1.3 discourages loops (over generated tokens)
    # 0 is off; n > 0: no n tokens in a row appear twice in the continuation. 3 by default: greedy
    # text looped on SmolLM2 and 3 stopped it while the tuned column's ROUGE-L held; repetition
    # penalties and sampling scored lower (docs/decoding.md)
    no_repeat_ngram_size: int = 3
    seed: int = 0  # sampling seed; the same for base and tuned

    def __post_init__(self) -> None:
        def bad(name, rule):
            raise GenerationError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        for name, lo, hi in (("max_new_tokens", 1, 1024), ("top_k", 0, 100_000), ("no_repeat_ngram_size", 0, 100),
                             ("seed", 0, 2**32 - 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                bad(name, f"a whole number from {lo} to {hi}")
        for name, lo, hi in (("temperature", 1e-3, 10.0), ("top_p", 1e-3, 1.0), ("repetition_penalty", 1.0, 10.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                bad(name, f"a number from {lo:g} to {hi:g}")
        if not isinstance(self.do_sample, bool):
            bad("do_sample", "true or false")
