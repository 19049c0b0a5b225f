"""The HTTP side: an OpenAI-compatible API over the engine, and the chat page; this module waits for the engine
and wires the parts together (create_app).

Endpoints: POST /v1/completions, POST /v1/chat/completions (JSON, or server-sent events with stream=true),
GET /v1/models, GET /health, GET / (the chat page). A request passes through plain functions, each testable
without a server (tests/test_serve_app.py), one module for each side of it:

    gate.Guard (API key, body size, Host) -> request: parse_body -> check_model -> completion_jobs / chat_jobs
    -> Engine.submit -> app: wait_all, or stream_events -> response: completion_response, chunk, failure

Whatever is wrong with a request comes back as 400 with OpenAI's error body, naming the field, before it reaches
the engine; a full queue is a 429 with Retry-After; an engine that is not running, a 503. Parsing and tokenizing
run off the event loop, and a text that cannot fit the context is refused before it is tokenized, so one huge
request does not hold up the others. No wait is open-ended: a request ends at its jobs' deadline (plus GRACE)
whatever the engine does, and one whose client went away frees its slot at the engine's next step.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from llm.chat_template import ChatTemplate
from llm.retrieval.context import Retriever
from llm.serve.engine import Engine, EngineStopped, Job, QueueFull
from llm.serve.gate import Guard
from llm.serve.request import BadRequest, Limits, chat_jobs, check_model, completion_jobs, parse_body
from llm.serve.response import (
    chunk,
    completion_response,
    failure,
    health_body,
    logprobs_body,
    models_body,
    new_meta,
    sse,
    stopped_body,
)
from llm.serve.schemas import ChatRequest, CompletionRequest, Sampling, error_body

log = logging.getLogger(__name__)

DISCONNECT_POLL = 0.25  # seconds between checks that a client still waits for its (non-streamed) answer
GRACE = 1.0  # seconds past its jobs' deadline a request waits for the engine to end them, then ends itself
ENDED = ("stop", "length")  # finish reasons of a choice that came out whole

Event = tuple[int, str, object, int]  # (job index, "text" | "done", chunk | finish reason, logprobs so far)


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
