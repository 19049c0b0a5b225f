"""An answer out: the finished jobs as OpenAI's JSON body (completion_response), or as server-sent event chunks
(chunk, sse); the error bodies of a failed or refused request, /health and /v1/models."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence

from tokenizers import Tokenizer

from llm.sampler.core import TokenLogprob
from llm.serve.engine import Engine, EngineStopped, Job
from llm.serve.request import Limits
from llm.serve.schemas import error_body

# ---------------------------------------------------------------------------------------------- jobs -> answer


def new_meta(chat: bool, model_name: str) -> dict:
    """The fields every response and chunk of one request share."""
    prefix = "chatcmpl" if chat else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_name}


def token_text(tokenizer: Tokenizer, token: int) -> str:
    """A token as text (U+FFFD where it holds part of a character)."""
    return tokenizer.decode([token], skip_special_tokens=False)


def logprobs_body(
    tokenizer: Tokenizer, entries: Sequence[TokenLogprob], start: int = 0, end: int | None = None
) -> dict:
    """OpenAI's completions logprobs of a choice's tokens start..end, entries being all its tokens so far:
    token texts, their log-probabilities, the top alternatives of each, and where each starts in the choice's text
    (characters)."""
    end = len(entries) if end is None else end
    earlier = [entry.token for entry in entries[:start]]
    body: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for entry in entries[start:end]:
        body["text_offset"].append(len(tokenizer.decode(earlier).rstrip("\ufffd")))  # an unfinished character: not yet
        earlier.append(entry.token)
        body["tokens"].append(token_text(tokenizer, entry.token))
        body["token_logprobs"].append(entry.logprob)
        top: dict[str, float] = {}
        for token, logprob in entry.top:  # most likely first: two tokens of one text keep the likelier
            top.setdefault(token_text(tokenizer, token), logprob)
        body["top_logprobs"].append(top)
    return body


def completion_response(jobs: Sequence[Job], meta: dict, chat: bool, n: int, tokenizer: Tokenizer) -> dict:
    """The JSON answer of jobs that all ended whole."""
    choices = []
    for index, job in enumerate(jobs):
        choice: dict = {"index": index, "finish_reason": job.finish_reason, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": job.text}
        else:
            choice["text"] = job.text
            if job.logprobs is not None:
                choice["logprobs"] = logprobs_body(tokenizer, job.token_logprobs)
        choices.append(choice)
    prompt_tokens = sum(len(job.prompt_ids) for job in jobs[::n])
    completion_tokens = sum(len(job.token_ids) for job in jobs)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    kind = "chat.completion" if chat else "text_completion"
    body = {**meta, "object": kind, "choices": choices, "usage": usage}
    if jobs[0].sources is not None:  # retrieval: the passages the answer was given, best first
        body["sources"] = jobs[0].sources
    return body


def chunk(
    meta: dict,
    chat: bool,
    index: int,
    text: str,
    finish_reason: str | None = None,
    first: bool = False,
    logprobs: dict | None = None,
) -> dict:
    """One streamed chunk: a piece of choice index's text, or its end (finish_reason). A chat's first chunk of a
    choice carries its role."""
    if chat:
        delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
        choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return {**meta, "object": "chat.completion.chunk", "choices": [choice]}
    choice = {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}
    return {**meta, "object": "text_completion", "choices": [choice]}


def sse(payload: dict | str) -> str:
    """One server-sent event."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def failure(reason: str, error: str | None, request_timeout: float) -> tuple[int, dict]:
    """Status and body of a request whose job ended without its text: timeout, cancelled or error."""
    if reason == "timeout":
        return 504, error_body(f"the request took longer than request_timeout={request_timeout} s", "timeout")
    if reason == "cancelled":
        return 503, error_body(
            "the server is stopping: the request was cancelled", "server_error", None, "engine_stopped"
        )
    return 500, error_body(f"generation failed: {error or reason}", "server_error")


def stopped_body(exc: EngineStopped) -> dict:
    """A 503's body: the engine is not running (why, when the engine knows)."""
    return error_body(f"{exc}; this server cannot generate (see its log)", "server_error", None, "engine_stopped")


def health_body(engine: Engine, model_name: str, liveness_timeout: float | None = None) -> tuple[int, dict]:
    """200 "ok" while the engine runs; 503 "stopped" once it has died, or "hung" while a decode step has not
    returned for liveness_timeout seconds (with the reason)."""
    alive = engine.alive
    stalled = engine.stalled(liveness_timeout) if alive and liveness_timeout is not None else None
    body = {
        "status": "ok" if alive and stalled is None else "hung" if alive else "stopped",
        "model": model_name,
        "active": engine.active(),
        "queued": engine.queued(),
        "max_batch": engine.max_batch,
        "queue_size": engine.queue_size,
    }
    if stalled is not None:
        body["reason"] = f"a decode step has not returned for {stalled:.1f} s (liveness_timeout={liveness_timeout})"
    return (200 if alive and stalled is None else 503), body


def models_body(limits: Limits) -> dict:
    card = {"id": limits.model_name, "object": "model", "created": 0, "owned_by": "llm"}
    return {"object": "list", "data": [{**card, "context_length": limits.block_size}]}
