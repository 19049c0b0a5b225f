"""The HTTP side: an OpenAI-compatible API over the engine, and the chat page.

Endpoints: POST /v1/completions, POST /v1/chat/completions (JSON, or server-sent events with stream=true),
GET /v1/models, GET /health, GET / (the chat page). A request passes through plain functions, each testable
without a server (tests/test_serve_app.py):

    Guard (API key, body size) -> parse_body -> check_model -> completion_jobs / chat_jobs -> Engine.submit
    -> wait_all + completion_response, or stream_events (chunk, logprobs_body, failure)

Whatever is wrong with a request comes back as 400 with OpenAI's error body, naming the field, before it reaches
the engine; a full queue is a 429 with Retry-After; an engine that is not running, a 503. Parsing and tokenizing
run off the event loop, and a text that cannot fit the context is refused before it is tokenized, so one huge
request does not hold up the others. No wait is open-ended: a request ends at its jobs' deadline (plus GRACE)
whatever the engine does, and one whose client went away frees its slot at the engine's next step.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tokenizers import Tokenizer, decoders

from llm.chat_template import ChatTemplate, ChatTokens
from llm.errors import ConfigError
from llm.retrieval.context import Retriever, fit
from llm.sampler import SamplingParams
from llm.sampler.core import TokenLogprob
from llm.serve.engine import Engine, EngineStopped, Job, QueueFull
from llm.serve.schemas import FORMS, ChatRequest, CompletionRequest, Sampling, error_body

log = logging.getLogger(__name__)

DISCONNECT_POLL = 0.25  # seconds between checks that a client still waits for its (non-streamed) answer
GRACE = 1.0  # seconds past its jobs' deadline a request waits for the engine to end them, then ends itself
MAX_STOPS = 4  # stop strings per request, as OpenAI
ENDED = ("stop", "length")  # finish reasons of a choice that came out whole

Prompt = str | list[int]  # text, or token ids
Event = tuple[int, str, object, int]  # (job index, "text" | "done", chunk | finish reason, logprobs so far)


class BadRequest(Exception):
    """Answered with status and OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


@dataclass(frozen=True)
class Limits:
    """What the request functions need of the model and serve.yaml."""

    model_name: str
    tokenizer: Tokenizer
    block_size: int
    vocab_size: int  # token ids are in [0, vocab_size)
    queue_size: int
    token_bytes: int  # the most UTF-8 bytes of text one token stands for (longest_token_bytes)
    default_max_tokens: int
    request_timeout: float
    chat: ChatTokens  # the model's chat template with its tokenizer: /v1/chat/completions' prompts and stops
    max_values: int  # serve.yaml's max_request_values: JSON values a body may hold
    max_messages: int  # serve.yaml's max_messages: messages a chat may have
    retriever: Retriever | None = None  # retrieval.index: passages for each chat's last user message

    @classmethod
    def of(
        cls,
        engine: Engine,
        model_name: str,
        default_max_tokens: int,
        request_timeout: float,
        max_values: int,
        max_messages: int,
        chat_template: ChatTemplate | None = None,
        retriever: Retriever | None = None,
    ) -> Limits:
        tokenizer = engine.tokenizer
        return cls(
            model_name,
            tokenizer,
            engine.block_size,
            engine.vocab_size,
            engine.queue_size,
            longest_token_bytes(tokenizer),
            default_max_tokens,
            request_timeout,
            ChatTokens(chat_template or ChatTemplate.plain(), tokenizer),
            max_values,
            max_messages,
            retriever,
        )


def longest_token_bytes(tokenizer: Tokenizer) -> int:
    """The most UTF-8 bytes of text one token can stand for, read off the vocabulary once: a text of more than
    (block_size - 1) x this many bytes is at least block_size tokens, which is known without tokenizing it.

    A byte-level vocabulary writes each byte as one character, so a token stands for as many bytes as it has
    characters; any other writes a token as its text or longer ("▁" for a space, "<0x0A>" for one byte), so its
    UTF-8 length bounds it. Special tokens count only where text can produce them (llm.tokenizer sets
    encode_special_tokens, so it cannot). Assumes no normalizer deletes text: none of the project's tokenizers,
    or those llm.interop imports, does."""
    added = {t.content: t.special for t in tokenizer.get_added_tokens_decoder().values()}
    byte_level = isinstance(tokenizer.decoder, decoders.ByteLevel)
    longest = 1
    for token in tokenizer.get_vocab(with_added_tokens=True):
        if token in added:
            if added[token] and tokenizer.encode_special_tokens:
                continue
            longest = max(longest, len(token.encode("utf-8")))  # added tokens are stored as their text
        else:
            longest = max(longest, len(token) if byte_level else len(token.encode("utf-8")))
    return longest


# ---------------------------------------------------------------------------------------------- request -> jobs


def parse_body(schema: type[Sampling], raw: bytes, max_values: int, max_messages: int) -> Sampling:
    """The body as schema, or BadRequest naming the first thing wrong. Parses JSON: call it off the event loop.

    Validating costs time and memory per value, with the GIL held: a body of millions of token ids or messages
    under the size limit would stop every other request for seconds. So before parsing, two counts over the raw
    bytes (milliseconds for the largest body) bound what it can hold: its commas bound its values, and its
    '"role"' keys bound its messages (a '"' inside a JSON string is escaped, so only keys and values count)."""
    values = raw.count(b",") + 1
    if values > max_values:
        message = f"the body holds up to {values:,} values: the most a request may hold is {max_values:,}"
        raise BadRequest(413, message, None, "request_too_large")
    if schema is ChatRequest and (messages := raw.count(b'"role"')) > max_messages:
        message = f"the body holds up to {messages:,} messages: the most a chat may have is {max_messages:,}"
        raise BadRequest(413, message, "messages", "request_too_large")
    try:
        return schema.model_validate_json(raw)
    except ValidationError as e:
        raise invalid(e.errors()[0], schema) from None


def invalid(error: dict, schema: type[Sampling]) -> BadRequest:
    """A 400 for one of pydantic's errors, naming the field as OpenAI's param does ("messages.0.role")."""
    where = [str(part) for part in error.get("loc", ())]
    param = ".".join(where) or None
    kind = error.get("type")
    if kind == "extra_forbidden":
        known = f": the fields are {sorted(schema.model_fields)}" if len(where) == 1 else ""
        message = f"unknown field {param!r}{known}"
    elif kind == "json_invalid":
        message, param = f"the body is not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}", None
    elif where and where[0] in FORMS and kind != "missing":  # a value that fits none of the field's forms
        param = where[0]
        message = f"{param} must be {FORMS[param]}"
    else:
        message = f"{param or 'body'}: {error['msg']}"
    return BadRequest(400, message, param)


def check_model(body: Sampling, model_name: str) -> None:
    if body.model != model_name:
        message = f"model {body.model!r} is not served here: this server serves {model_name!r}"
        raise BadRequest(404, message, "model", "model_not_found")


def completion_prompts(prompt: str | list) -> list[Prompt]:
    """The prompts of /v1/completions' prompt: a string, strings, token ids, or lists of token ids."""
    if isinstance(prompt, str):
        prompts = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts:
        raise BadRequest(400, "prompt: the list is empty", "prompt")
    return prompts


def sampling_params(body: Sampling, jobs: int) -> list[SamplingParams]:
    """One SamplingParams per job: job j draws with seed + j (no seed: the engine draws a fresh one for each)."""
    try:
        return [
            SamplingParams(
                temperature=body.temperature,
                top_k=max(body.top_k, 0),  # vLLM's -1 is off, as 0
                top_p=body.top_p,
                min_p=body.min_p,
                repetition_penalty=body.repetition_penalty,
                seed=None if body.seed is None else body.seed + j,
            )
            for j in range(jobs)
        ]
    except ConfigError as e:  # its message starts with the key: "top_k=... must be ..."
        key = str(e).split("=", 1)[0]
        raise BadRequest(400, str(e), key if key in Sampling.model_fields else None) from None


def stops(body: Sampling, vocab_size: int) -> tuple[list[str], list[int]]:
    """The request's stop strings and stop token ids, checked."""
    strings = body.stop_strings()
    if len(strings) > MAX_STOPS:
        raise BadRequest(400, f"stop: {len(strings)} strings given, at most {MAX_STOPS}", "stop")
    ids = list(body.stop_token_ids or [])
    for token in ids:
        if not 0 <= token < vocab_size:
            message = f"stop_token_ids: {token} is not a token id: ids are in [0, {vocab_size})"
            raise BadRequest(400, message, "stop_token_ids")
    return strings, ids


def label(i: int, count: int) -> str:
    return "prompt" if count == 1 else f"prompt {i}"


def prompt_ids(prompts: Sequence[Prompt], limits: Limits, param: str) -> list[list[int]]:
    """Each prompt as token ids. A text longer in bytes than the context can hold in tokens is refused before it
    is tokenized (longest_token_bytes); token ids are checked against the context and the vocabulary. Tokenizes:
    call it off the event loop."""
    block, most = limits.block_size, (limits.block_size - 1) * limits.token_bytes
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise BadRequest(400, f"{label(i, len(prompts))} is empty: give some text to continue", param)
        if isinstance(prompt, str):
            size = len(prompt.encode("utf-8"))
            if size > most:
                message = (
                    f"prompt {i} is {size} bytes, so at least {math.ceil(size / limits.token_bytes)} tokens "
                    f"(a token here is at most {limits.token_bytes} bytes): the context holds {block}, "
                    f"so at most {block - 1}"
                )
                raise BadRequest(400, message, param, "context_length_exceeded")
            continue
        too_long(i, len(prompt), block, param)  # before the ids are read one by one
        bad = next((token for token in prompt if not 0 <= token < limits.vocab_size), None)
        if bad is not None:
            message = f"{label(i, len(prompts))}: {bad} is not a token id: ids are in [0, {limits.vocab_size})"
            raise BadRequest(400, message, param)
    texts = [prompt for prompt in prompts if isinstance(prompt, str)]
    encoded = iter(limits.tokenizer.encode_batch(texts) if texts else [])  # encode_batch releases the GIL
    ids = [next(encoded).ids if isinstance(prompt, str) else list(prompt) for prompt in prompts]
    for i, one in enumerate(ids):
        if not one:
            raise BadRequest(400, f"{label(i, len(prompts))} is empty: give some text to continue", param)
        too_long(i, len(one), block, param)
    return ids


def too_long(i: int, tokens: int, block: int, param: str) -> None:
    if tokens >= block:
        message = f"prompt {i} is {tokens} tokens: the context holds {block}, so at most {block - 1}"
        raise BadRequest(400, message, param, "context_length_exceeded")


def budgets(ids: Sequence[Sequence[int]], max_tokens: int | None, limits: Limits) -> list[int]:
    """New tokens each prompt may have: max_tokens (refused where it passes the context), or default_max_tokens
    cut to what the context leaves."""
    out = []
    for prompt in ids:
        room = limits.block_size - len(prompt)
        if max_tokens is not None and max_tokens > room:
            message = (
                f"max_tokens={max_tokens} with a prompt of {len(prompt)} tokens passes the context of "
                f"{limits.block_size}: at most {room}"
            )
            raise BadRequest(400, message, "max_tokens", "context_length_exceeded")
        out.append(max_tokens if max_tokens is not None else min(limits.default_max_tokens, room))
    return out


def build_jobs(
    body: Sampling,
    prompts: Sequence[Prompt],
    max_tokens: int | None,
    limits: Limits,
    param: str = "prompt",
    extra_stops: Sequence[str] = (),
    logprobs: int | None = None,
    extra_stop_ids: Sequence[int] = (),
) -> list[Job]:
    """n jobs per prompt, in order (job j = prompt i's choice c, j = i * n + c), after every check. Tokenizes:
    call it off the event loop."""
    strings, stop_ids = stops(body, limits.vocab_size)
    count = len(prompts) * body.n
    if count > limits.queue_size:
        message = f"n: {len(prompts)} prompts x n={body.n} exceeds the queue of {limits.queue_size}"
        raise BadRequest(400, message, "n")
    params = sampling_params(body, count)
    ids = prompt_ids(prompts, limits, param)
    allowed = budgets(ids, max_tokens, limits)
    return [
        Job(
            prompt,
            budget,
            params[i * body.n + c],
            stop=[*strings, *extra_stops],
            stop_token_ids=[*stop_ids, *extra_stop_ids],
            logprobs=logprobs,
            timeout=limits.request_timeout,
        )
        for i, (prompt, budget) in enumerate(zip(ids, allowed, strict=True))
        for c in range(body.n)
    ]


def completion_jobs(body: CompletionRequest, limits: Limits) -> list[Job]:
    prompts = completion_prompts(body.prompt)
    return build_jobs(body, prompts, body.max_tokens, limits, logprobs=body.logprobs)


def chat_jobs(body: ChatRequest, limits: Limits) -> list[Job]:
    """One prompt: the conversation in the model's chat template (llm/chat_template.py), opening the assistant's
    turn; the reply ends with that turn (its end token, or for the plain template where the next turn starts).
    Tokenizes: call it off the event loop."""
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise BadRequest(400, "give max_tokens or max_completion_tokens, not both", "max_completion_tokens")
    max_tokens = body.max_completion_tokens or body.max_tokens
    size = sum(len(m.content.encode("utf-8")) for m in body.messages)
    if size > (limits.block_size - 1) * limits.token_bytes:  # the words alone pass the context: not rendered
        message = f"the messages are {size} bytes, so more than the context of {limits.block_size} tokens holds"
        raise BadRequest(400, message, "messages", "context_length_exceeded")
    messages = [{"role": m.role, "content": m.content} for m in body.messages]
    hits = limits.retriever.search(messages) if limits.retriever is not None else []
    try:
        if hits:  # as many as fit what the reply leaves of the context
            reply = max_tokens if max_tokens is not None else min(limits.default_max_tokens, limits.block_size // 4)
            messages, hits = fit(limits.chat, messages, hits, limits.block_size - reply)
        ids = limits.chat.prompt_ids(messages)
    except Exception as e:  # the template refused the conversation (raise_exception in its Jinja)
        raise BadRequest(400, f"messages: the chat template refused them: {e}", "messages") from None
    chat = limits.chat
    jobs = build_jobs(body, [ids], max_tokens, limits, "messages", chat.template.stop_strings, None, chat.end_ids)
    if limits.retriever is not None:
        for job in jobs:
            job.sources = [hit.to_dict() for hit in hits]
    return jobs


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


# ---------------------------------------------------------------------------------------------- waiting


def connect(jobs: Sequence[Job], loop: asyncio.AbstractEventLoop) -> asyncio.Queue[Event]:
    """One queue on loop for the events of jobs (the engine calls on_event on its own thread). Each event carries
    how many log-probabilities its job had then, so a streamed chunk sends those of its own tokens."""
    events: asyncio.Queue[Event] = asyncio.Queue()

    def deliver(index: int, job: Job, kind: str, value: object) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, (index, kind, value, len(job.token_logprobs)))
        except RuntimeError:  # the server has shut down and its loop with it: nobody is listening
            pass

    for index, job in enumerate(jobs):
        job.on_event = functools.partial(deliver, index, job)
    return events


def deadline_of(jobs: Sequence[Job]) -> float:
    """When a request stops waiting (time.monotonic), whatever the engine does: its jobs' deadline plus GRACE."""
    return max(job.deadline for job in jobs) + GRACE


async def wait_all(
    events: asyncio.Queue[Event], jobs: Sequence[Job], disconnected: Callable[[], Awaitable[bool]]
) -> str:
    """Until every job is done: "done". "disconnected" when the client goes away first, "timeout" when the
    deadline passes first (deadline_of); then the jobs are cancelled."""
    deadline, remaining, checked = deadline_of(jobs), len(jobs), time.monotonic()
    outcome = "done"
    while remaining:
        left = deadline - time.monotonic()
        if left <= 0:
            outcome = "timeout"
            break
        try:
            _, kind, _, _ = await asyncio.wait_for(events.get(), min(DISCONNECT_POLL, left))
            remaining -= kind == "done"
        except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
            pass
        if time.monotonic() - checked >= DISCONNECT_POLL:  # text events may keep the queue busy: check anyway
            checked = time.monotonic()
            if await disconnected():
                outcome = "disconnected"
                break
    if outcome != "done":
        for job in jobs:
            job.cancel()
    return outcome


async def stream_events(
    events: asyncio.Queue[Event], jobs: Sequence[Job], meta: dict, chat: bool, limits: Limits
) -> AsyncIterator[str]:
    """Server-sent events: a chunk per piece of text (with the logprobs of its tokens, when asked), one with the
    finish reason per choice (or an error event), then [DONE]; at the deadline (deadline_of), an error event and
    [DONE]. A client that disconnects closes this generator, and with it the jobs."""
    try:
        if chat:
            for index in range(len(jobs)):
                first = chunk(meta, chat, index, "", first=True)
                if index == 0 and jobs[0].sources is not None:  # retrieval: the passages, before any text
                    first["sources"] = jobs[0].sources
                yield sse(first)
        deadline, remaining, sent = deadline_of(jobs), len(jobs), [0] * len(jobs)
        while remaining:
            try:
                index, kind, value, count = await asyncio.wait_for(events.get(), max(deadline - time.monotonic(), 0))
            except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
                yield sse(failure("timeout", None, limits.request_timeout)[1])
                break
            job, logprobs = jobs[index], None
            if job.logprobs is not None and not chat:
                logprobs = logprobs_body(limits.tokenizer, job.token_logprobs, sent[index], count)
                sent[index] = count
            if kind == "text":
                yield sse(chunk(meta, chat, index, str(value), logprobs=logprobs))
                continue
            remaining -= 1
            if value in ENDED:
                yield sse(chunk(meta, chat, index, "", str(value), logprobs=logprobs))
            else:
                yield sse(failure(str(value), job.error, limits.request_timeout)[1])
        yield sse("[DONE]")
    finally:
        for job in jobs:  # the client went away, the deadline passed, or everything ended (then a no-op)
            job.cancel()


async def answer(
    request: Request, schema: type[Sampling], make_jobs: Callable[..., list[Job]], engine: Engine, limits: Limits
) -> object:
    """One request, from its body to its answer."""
    body = await asyncio.to_thread(parse_body, schema, await request.body(), limits.max_values, limits.max_messages)
    check_model(body, limits.model_name)
    if not engine.alive:  # before any tokenizing
        raise EngineStopped("the engine is not running")
    jobs = await asyncio.to_thread(make_jobs, body, limits)
    events = connect(jobs, asyncio.get_running_loop())
    engine.submit(jobs)  # QueueFull: 429; EngineStopped: 503
    chat = schema is ChatRequest
    meta = new_meta(chat, limits.model_name)
    if body.stream:
        return StreamingResponse(stream_events(events, jobs, meta, chat, limits), media_type="text/event-stream")
    outcome = await wait_all(events, jobs, request.is_disconnected)
    if outcome == "disconnected":
        return JSONResponse(error_body("client disconnected", "cancelled"), status_code=499)
    failed = [("timeout", None)] if outcome == "timeout" else []
    failed += [(job.finish_reason, job.error) for job in jobs if job.finish_reason not in ENDED]
    if failed:
        status, error = failure(*failed[0], limits.request_timeout)
        return JSONResponse(error, status_code=status)
    return await asyncio.to_thread(completion_response, jobs, meta, chat, body.n, limits.tokenizer)


# ---------------------------------------------------------------------------------------------- the gate


class BodyTooLarge(Exception):
    pass


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def allowed_host_names(host: str, port: int, extra: Sequence[str] = ()) -> list[str] | None:
    """The Host headers a server bound to host:port answers: the address it is bound to and, on a loopback address,
    this machine's loopback names, each with the port (and bare on port 80), plus `extra` (allowed_hosts: a name,
    with or without its port). Bound to every interface (0.0.0.0, ::) with no extra names: None, any Host, since
    the names it is reached by cannot be known here."""
    every = host in ("0.0.0.0", "::", "")
    if every and not extra:
        return None
    shown = f"[{host}]" if ":" in host else host
    names = [] if every else [shown]
    if shown in LOOPBACK_NAMES or host.startswith("127."):
        names += LOOPBACK_NAMES
    out = set()
    for name in [*names, *extra]:
        if re.search(r":\d+$", name):  # carries its port
            out.add(name)
            continue
        out.add(f"{name}:{port}")
        if port == 80:  # a browser leaves the default port out
            out.add(name)
    return sorted(out)


def authorized(header: bytes | None, key: bytes) -> bool:
    """Whether an Authorization header is "Bearer <key>" (compared in constant time)."""
    scheme, _, token = (header or b"").partition(b" ")
    return hmac.compare_digest(token.strip(), key) and scheme.lower() == b"bearer"


async def send_json(send: Send, status: int, body: dict, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """Pure ASGI middleware, before the app reads a byte: a Host header that names none of allowed_hosts is a 421
    (a page on another site reaching a local server by DNS rebinding); a POST whose Content-Type is not
    application/json is a 415 (a cross-site form or a "simple" fetch, which a browser sends without asking); with an
    API key, every path but /health needs "Authorization: Bearer <key>" (else 401); a body over max_bytes is a 413,
    from its Content-Length before it is read, or counted as it is read (a chunked body)."""

    def __init__(
        self, app: ASGIApp, api_key: str | None, max_bytes: int, allowed_hosts: Sequence[str] | None = None
    ) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.key = None if api_key is None else api_key.encode("utf-8")
        self.hosts = None if allowed_hosts is None else {h.lower().encode("latin-1") for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").lower()
        if self.hosts is not None and host not in self.hosts:
            shown = host.decode("latin-1")[:100]
            message = f"Host {shown!r} is not this server's (allowed_hosts adds names it is reached by)"
            return await send_json(send, 421, error_body(message, "invalid_request_error", None, "misdirected"))
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if scope.get("method") == "POST" and kind != b"application/json":
            message = f"Content-Type {kind.decode('latin-1')[:100]!r} is not accepted: send application/json"
            return await send_json(send, 415, error_body(message, "invalid_request_error", None, "unsupported_media"))
        if (
            self.key is not None
            and scope["path"] != "/health"
            and not authorized(headers.get(b"authorization"), self.key)
        ):
            message = "a valid API key is needed: send the header 'Authorization: Bearer <key>'"
            body = error_body(message, "invalid_request_error", None, "invalid_api_key")
            return await send_json(send, 401, body, [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await send_json(send, 413, self.too_large())
        received, started = 0, False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if started:
                raise
            await send_json(send, 413, self.too_large())

    def too_large(self) -> dict:
        message = f"the request body is over max_request_bytes={self.max_bytes} bytes"
        return error_body(message, "invalid_request_error", None, "request_too_large")


# ---------------------------------------------------------------------------------------------- the app


def create_app(
    engine: Engine,
    model_name: str,
    request_timeout: float,
    default_max_tokens: int,
    retry_after: int,
    max_request_bytes: int,
    max_request_values: int,
    max_messages: int,
    api_key: str | None,
    chat_template: ChatTemplate | None = None,
    retriever: Retriever | None = None,
    allowed_hosts: Sequence[str] | None = None,
    liveness_timeout: float | None = None,
) -> FastAPI:
    """The app for one engine (which the caller starts and stops). request_timeout: seconds a request may take,
    queue wait included; default_max_tokens: max_tokens when a request gives none (cut to the context);
    api_key: None for none; chat_template: the model's (read_chat_template), None: the plain-text one; retriever:
    passages for every chat (retrieval.index), named in the answer's `sources`; allowed_hosts: the Host headers
    served (allowed_host_names), None for any; liveness_timeout: seconds a decode step may run before /health says
    503 "hung", None for no limit."""
    limits = Limits.of(
        engine,
        model_name,
        default_max_tokens,
        request_timeout,
        max_request_values,
        max_messages,
        chat_template,
        retriever,
    )
    app = FastAPI(title="llm", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, api_key=api_key, max_bytes=max_request_bytes, allowed_hosts=allowed_hosts)

    @app.exception_handler(BadRequest)
    async def bad_request(_request: Request, exc: BadRequest) -> JSONResponse:
        body = error_body(exc.message, "invalid_request_error", exc.param, exc.code)
        return JSONResponse(body, status_code=exc.status)

    @app.exception_handler(QueueFull)
    async def queue_full(_request: Request, exc: QueueFull) -> JSONResponse:
        body = error_body(f"the server is busy ({exc}): retry in {retry_after} s", "server_busy", code="queue_full")
        return JSONResponse(body, status_code=429, headers={"Retry-After": str(retry_after)})

    @app.exception_handler(EngineStopped)
    async def engine_stopped(_request: Request, exc: EngineStopped) -> JSONResponse:
        return JSONResponse(stopped_body(exc), status_code=503)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return JSONResponse(error_body(f"internal error: {exc}", "server_error"), status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(resources.files("llm.serve").joinpath("index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> JSONResponse:
        status, body = health_body(engine, model_name, liveness_timeout)
        return JSONResponse(body, status_code=status)

    @app.get("/v1/models")
    async def models() -> dict:
        return models_body(limits)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, CompletionRequest, completion_jobs, engine, limits)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await answer(request, ChatRequest, chat_jobs, engine, limits)

    return app
