"""The request bodies the server accepts, as OpenAI's API defines them (the fields this server implements).

Strict: a field of the wrong type or an unknown field is refused (400), never coerced or ignored. The defaults
are OpenAI's (temperature 1, top_p 1, n 1), so a client written for OpenAI samples as it expects.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Sampling(Strict):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str
    max_tokens: int | None = Field(None, ge=1)  # None: the server's default_max_tokens, cut to the context
    temperature: float = Field(1.0, ge=0, le=2)  # 0: greedy
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)  # completions per prompt
    stream: bool = False  # server-sent events, one per piece of text
    stop: str | list[str] | None = Field(None)  # up to 4 strings; the text ends before the first found
    seed: int | None = None  # the same seed and request give the same text; choice i draws with seed + i
    user: str | None = None  # accepted and ignored

    def stop_strings(self) -> list[str]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stop if s]


class CompletionRequest(Sampling):
    prompt: str | list[str]  # a list: several prompts, n choices each, in order


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None  # accepted and ignored


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens; either may be given


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
