"""The request bodies the server accepts, as OpenAI's API defines them (the fields this server implements), with
vLLM's names for the sampling controls OpenAI lacks (top_k, min_p, repetition_penalty, stop_token_ids).

Strict: a field of the wrong type or an unknown field is refused (400), never coerced or ignored. The defaults
are OpenAI's (temperature 1, top_p 1, n 1) and vLLM's (top_k, min_p and repetition_penalty off), so a client
written for either samples as it expects.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Sampling(Strict):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str
    max_tokens: int | None = Field(None, ge=1)  # None: the server's default_max_tokens, cut to the context
    temperature: float = Field(1.0, ge=0, le=2)  # 0: greedy
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1, le=2**31 - 1)  # the k most likely tokens; 0 or -1 (vLLM's "off"): off
    min_p: float = Field(0.0, ge=0, lt=1)  # drop tokens below min_p x the top probability; 0: off
    repetition_penalty: float = Field(1.0, gt=0)  # > 1 discourages tokens already seen; 1: off
    n: int = Field(1, ge=1, le=16)  # completions per prompt
    stream: bool = False  # server-sent events, one per piece of text
    stop: str | list[str] | None = None  # up to 4 strings; the text ends before the first found
    stop_token_ids: list[int] | None = None  # token ids that end a choice, besides end-of-document
    # the same seed and request give the same text; job j (prompt i, choice c: j = i * n + c) draws with seed + j
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    user: str | None = None  # accepted and ignored

    def stop_strings(self) -> list[str]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stop if s]


class CompletionRequest(Sampling):
    # a string, several (n choices each, in order), a prompt of token ids, or several
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=5)  # each token's log-probability and this many top alternatives


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"]
    # a string, or OpenAI's content parts: [{"type": "text", "text": "..."}, ...], joined (other types refused)
    content: str
    name: str | None = None  # accepted and ignored

    @field_validator("content", mode="before")
    @classmethod
    def text_of_parts(cls, content: Any) -> Any:
        if not isinstance(content, list):
            return content  # a string, or the error of one
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str) or set(part) != {"type", "text"}:
                shown = kind if isinstance(kind, str) else type(part).__name__
                raise ValueError(f"content parts of type {shown!r} are not supported: only text parts")
            texts.append(part["text"])
        return "".join(texts)


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens; either may be given


# What a field of several forms accepts: one message for a value that fits none (pydantic reports one per form).
FORMS = {
    "prompt": "a string, a list of strings, a list of token ids, or a list of lists of token ids",
    "stop": "a string or a list of strings",
}


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
