"""The HTTP side: an OpenAI-compatible API over the engine, and the chat page.

Endpoints: POST /v1/completions, POST /v1/chat/completions (JSON, or server-sent events with stream=true),
GET /v1/models, GET /health, GET / (the chat page). Every request is checked before it reaches the engine;
whatever is wrong with it comes back as 400 with OpenAI's error body, naming the field. A full queue is a 429
with Retry-After. A request that ends because the client went away frees its slot at the engine's next step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from llm.serve.chat import TURN_STOPS, render
from llm.serve.engine import Engine, Job, QueueFull
from llm.serve.schemas import ChatRequest, CompletionRequest, Sampling, error_body

log = logging.getLogger(__name__)

SCHEMAS = {"/v1/completions": CompletionRequest, "/v1/chat/completions": ChatRequest}
DISCONNECT_POLL = 0.25  # seconds between checks that a client still waits for its (non-streamed) answer


class BadRequest(Exception):
    """Answered with status and OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def create_app(
    engine: Engine, model_name: str, request_timeout: float, default_max_tokens: int, retry_after: int
) -> FastAPI:
    """The app for one engine (which the caller starts and stops). request_timeout: seconds a request may take,
    queue wait included; default_max_tokens: max_tokens when a request gives none (cut to the context)."""
    app = FastAPI(title="llm", docs_url=None, redoc_url=None, openapi_url=None)
    tokenizer = engine.tokenizer
    block_size = engine.block_size

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(where) or None
        if first.get("type") == "extra_forbidden":
            schema = SCHEMAS.get(request.url.path)
            known = f": the fields are {sorted(schema.model_fields)}" if schema and len(where) == 1 else ""
            message = f"unknown field {param!r}{known}"
        elif first.get("type") == "json_invalid":
            message, param = f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}", None
        else:
            message = f"{param or 'body'}: {first['msg']}"
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(BadRequest)
    async def bad_request(_request: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse(
            error_body(exc.message, "invalid_request_error", exc.param, exc.code), status_code=exc.status
        )

    @app.exception_handler(QueueFull)
    async def queue_full(_request: Request, exc: QueueFull) -> JSONResponse:
        body = error_body(f"the server is busy ({exc}): retry in {retry_after} s", "server_busy", code="queue_full")
        return JSONResponse(body, status_code=429, headers={"Retry-After": str(retry_after)})

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
    async def health() -> dict:
        alive = engine.thread is not None and engine.thread.is_alive()
        return {
            "status": "ok" if alive else "stopped",
            "model": model_name,
            "active": engine.active(),
            "queued": engine.queued(),
            "max_batch": engine.max_batch,
            "queue_size": engine.queue_size,
        }

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "llm", "context_length": block_size}
        return {"object": "list", "data": [card]}

    def check_model(body: Sampling) -> None:
        if body.model != model_name:
            message = f"model {body.model!r} is not served here: this server serves {model_name!r}"
            raise BadRequest(404, message, "model", "model_not_found")

    def make_jobs(body: Sampling, prompts: list[str], max_tokens: int | None, extra_stops: list[str]) -> list[Job]:
        """n jobs per prompt, after checking each prompt and max_tokens against the context."""
        stop = body.stop_strings()
        if len(stop) > 4:
            raise BadRequest(400, f"stop: {len(stop)} strings given, at most 4", "stop")
        if len(prompts) * body.n > engine.queue_size:
            raise BadRequest(
                400, f"n: {len(prompts)} prompts x n={body.n} exceeds the queue of {engine.queue_size}", "n"
            )
        jobs = []
        for i, prompt in enumerate(prompts):
            ids = tokenizer.encode(prompt).ids
            if not ids:
                raise BadRequest(400, "prompt is empty: give some text to continue", "prompt")
            room = block_size - len(ids)
            if room < 1:
                raise BadRequest(
                    400,
                    f"prompt {i} is {len(ids)} tokens: the context holds {block_size}, so at most {block_size - 1}",
                    "prompt",
                    "context_length_exceeded",
                )
            if max_tokens is not None and max_tokens > room:
                raise BadRequest(
                    400,
                    f"max_tokens={max_tokens} with a prompt of {len(ids)} tokens passes the context of {block_size}: "
                    f"at most {room}",
                    "max_tokens",
                    "context_length_exceeded",
                )
            budget = max_tokens if max_tokens is not None else min(default_max_tokens, room)
            for choice in range(body.n):
                seed = None if body.seed is None else body.seed + choice
                stops = [*stop, *extra_stops]
                jobs.append(Job(ids, budget, body.temperature, body.top_p, seed, stops, request_timeout))
        return jobs

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_model(body)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise BadRequest(400, "prompt: the list is empty", "prompt")
        jobs = make_jobs(body, prompts, body.max_tokens, [])
        return await respond(request, body, jobs, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        check_model(body)
        if body.max_tokens is not None and body.max_completion_tokens is not None:
            raise BadRequest(400, "give max_tokens or max_completion_tokens, not both", "max_completion_tokens")
        max_tokens = body.max_completion_tokens or body.max_tokens
        jobs = make_jobs(body, [render(body.messages)], max_tokens, TURN_STOPS)
        return await respond(request, body, jobs, chat=True)

    async def respond(request: Request, body: Sampling, jobs: list[Job], chat: bool):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, str, object]] = asyncio.Queue()

        def deliver(index: int, kind: str, value: object) -> None:  # on the engine thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, (index, kind, value))
            except RuntimeError:  # the server has shut down and its loop with it: nobody is listening
                pass

        for index, job in enumerate(jobs):
            job.on_event = lambda kind, value, i=index: deliver(i, kind, value)
        engine.submit(jobs)  # QueueFull: 429
        meta = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": model_name,
        }
        if body.stream:
            return StreamingResponse(stream(events, jobs, meta, chat), media_type="text/event-stream")
        if not await wait_all(request, events, jobs):
            return JSONResponse(error_body("client disconnected", "cancelled"), status_code=499)
        failed = [job.finish_reason for job in jobs if job.finish_reason not in ("stop", "length")]
        if failed:
            return failure(failed[0])
        choices = []
        for index, job in enumerate(jobs):
            choice: dict = {"index": index, "finish_reason": job.finish_reason, "logprobs": None}
            if chat:
                choice["message"] = {"role": "assistant", "content": job.text}
            else:
                choice["text"] = job.text
            choices.append(choice)
        prompt_tokens = sum(len(job.prompt_ids) for job in jobs[:: body.n])
        completion_tokens = sum(len(job.token_ids) for job in jobs)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        kind = "chat.completion" if chat else "text_completion"
        return {**meta, "object": kind, "choices": choices, "usage": usage}

    async def wait_all(request: Request, events: asyncio.Queue, jobs: list[Job]) -> bool:
        """Until every job is done; False (and the jobs cancelled) when the client goes away first."""
        remaining = len(jobs)
        checked = time.monotonic()
        while remaining:
            try:
                _, kind, _ = await asyncio.wait_for(events.get(), DISCONNECT_POLL)
                remaining -= kind == "done"
            except asyncio.TimeoutError:
                pass
            if time.monotonic() - checked >= DISCONNECT_POLL:  # text events may keep the queue busy: check anyway
                checked = time.monotonic()
                if await request.is_disconnected():
                    for job in jobs:
                        job.cancel()
                    return False
        return True

    async def stream(events: asyncio.Queue, jobs: list[Job], meta: dict, chat: bool) -> AsyncIterator[str]:
        """Server-sent events: one chunk per piece of text, one with the finish reason per choice, then [DONE].
        A client that disconnects cancels this generator, and with it the jobs."""
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(index: int, text: str, finish_reason: str | None, first: bool = False) -> str:
            if chat:
                delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
                choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            else:
                choice = {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}
            return f"data: {json.dumps({**meta, 'object': kind, 'choices': [choice]})}\n\n"

        try:
            if chat:
                for index in range(len(jobs)):
                    yield chunk(index, "", None, first=True)
            remaining = len(jobs)
            while remaining:
                index, event, value = await events.get()
                if event == "text":
                    yield chunk(index, value, None)
                    continue
                remaining -= 1
                if value in ("stop", "length"):
                    yield chunk(index, "", value)
                else:
                    yield f"data: {json.dumps(failure_body(str(value)))}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            for job in jobs:  # the client went away, or everything ended (then this changes nothing)
                job.cancel()

    def failure_body(reason: str) -> dict:
        if reason == "timeout":
            return error_body(f"the request took longer than request_timeout={request_timeout} s", "timeout")
        return error_body(f"generation ended: {reason}", "server_error")

    def failure(reason: str) -> JSONResponse:
        return JSONResponse(failure_body(reason), status_code=504 if reason == "timeout" else 500)

    return app
