"""What a generation call is given, checked once where it enters: sampling settings, prompts, the number of new
tokens, stop strings.

The defaults of the keys infer.py and the Python `generate()` share are written once, in conf/infer.yaml:
`generation_defaults()` reads them, and no function or dataclass here repeats them.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from llm.config import config_dir
from llm.errors import ConfigError

INFER_YAML = config_dir() / "infer.yaml"
# keys of conf/infer.yaml that are also arguments of generate(): there they default to None, "the YAML's value"
SHARED_KEYS = (
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repetition_penalty",
    "seed",
    "stop",
    "kv_cache",
)


def generation_defaults() -> dict[str, Any]:
    """conf/infer.yaml's values of SHARED_KEYS, stop read as by read_stop: a copy of what was read once."""
    values = _read_defaults()
    return {**values, "stop": list(values["stop"])}


@functools.cache
def _read_defaults() -> dict[str, Any]:
    cfg = OmegaConf.to_container(OmegaConf.load(INFER_YAML), resolve=False)
    values = {key: cfg[key] for key in SHARED_KEYS}
    values["stop"] = tuple(read_stop(values["stop"]))
    return values


MIN_TEMPERATURE = 1e-5  # below it sampling is greedy, as vLLM's: dividing by less overflows the logits
PENALTY_RANGE = (1e-2, 1e2)  # repetition_penalty is clamped into it: dividing by less (or by more) overflows


@dataclass(frozen=True)
class SamplingParams:
    """How each next token is chosen; temperature 0 is greedy; top_k 0, top_p 1, min_p 0 and
    repetition_penalty 1 switch a control off. No field has a default here: `SamplingParams.defaults()`
    gives conf/infer.yaml's. Bad values raise ConfigError naming the key."""

    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repetition_penalty: float
    seed: int | None  # None: a fresh draw each call

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name}={value!r} must be a finite number")
        if self.temperature < 0:
            raise ConfigError(f"temperature={self.temperature} is negative: use 0 for greedy, or a value > 0")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p} is outside (0, 1]: it is the probability mass to keep")
        if not 0 <= self.min_p < 1:
            raise ConfigError(f"min_p={self.min_p} is outside [0, 1): it is a fraction of the top probability")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"top_k={self.top_k!r} must be an integer >= 0 (0: off)")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ConfigError(f"seed={self.seed!r} must be an integer, or null for a fresh draw each call")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty={self.repetition_penalty} must be > 0 (1: off)")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> SamplingParams:
        """The fields' keys of a mapping: a composed conf/infer.yaml, or generation_defaults() with changes."""
        return cls(**{f.name: cfg[f.name] for f in fields(cls)})

    @classmethod
    def defaults(cls, **changes: Any) -> SamplingParams:
        """conf/infer.yaml's settings with `changes` applied: `SamplingParams.defaults(temperature=0)`."""
        return replace(cls.from_config(generation_defaults()), **changes)

    def for_row(self, row: int) -> SamplingParams:
        """The settings of row `row` of a call (or job `row` of a request) seeded s: seed s + row, so each row draws
        its own numbers and the same call draws them again; unseeded, as they are."""
        return self if self.seed is None else replace(self, seed=self.seed + row)

    @property
    def greedy(self) -> bool:
        """temperature 0, or one so small that dividing the logits by it would overflow them (MIN_TEMPERATURE)."""
        return self.temperature < MIN_TEMPERATURE

    @property
    def penalty(self) -> float:
        """repetition_penalty clamped into PENALTY_RANGE: a positive value that underflows never makes NaN."""
        return min(max(self.repetition_penalty, PENALTY_RANGE[0]), PENALTY_RANGE[1])


def check_max_new_tokens(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"max_new_tokens={value!r} must be an integer, at least 1")
    return value


def check_prompts(prompts: Sequence[Sized]) -> None:
    """At least one prompt, none empty (text or token ids)."""
    if not prompts:
        raise ConfigError("prompt: none given: pass at least one prompt")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            name = "prompt" if len(prompts) == 1 else f"prompt {i}"
            raise ConfigError(f'{name} is empty: give some text to continue, such as "def "')


def read_prompts(prompt: object, prompt_file: str | None) -> list[str]:
    """infer.py's prompts: the non-blank lines of prompt_file when it is given, else prompt."""
    if prompt_file:
        path = Path(prompt_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"prompt_file={prompt_file}: no such file")
        prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise ConfigError(f"prompt_file={prompt_file} has no prompt: write one prompt per line")
        return prompts
    prompts = ["" if prompt is None else str(prompt)]  # Hydra reads prompt=0 as a number: still a prompt
    check_prompts(prompts)
    return prompts


ESCAPES = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\\\": "\\"}


def read_stop(value: object) -> list[str]:
    r"""stop= as one string or a list. On the command line Hydra keeps \n as two characters, so \n, \t, \r
    and \\ are read here as newline, tab, carriage return and backslash: 'stop=["\n\n"]' stops at a blank line."""
    if value is None:
        return []
    if isinstance(value, (str, int, float)):
        items = [value]
    else:
        items = list(value)  # type: ignore[call-overload]
    return [re.sub(r"\\[ntr\\]", lambda m: ESCAPES[m.group()], str(item)) for item in items]
