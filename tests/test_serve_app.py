"""The server's request functions one by one (llm/serve/request.py, response.py, gate.py, app.py), without a
server or an engine thread: the body and its messages, the prompt forms, sampling settings and seeds, a text
refused as too long before it is tokenized, jobs, the JSON and server-sent-event formats, logprobs, waits that end
at their deadline whatever the engine does, the API key and body limit (Guard), and serve.py's way out when the
engine thread dies."""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
import time
from types import SimpleNamespace

import pytest
from tokenizers import Tokenizer

pytest.importorskip("fastapi")

from llm.chat_template import PLAIN_STOPS, ChatTemplate, ChatTokens  # noqa: E402
from llm.sampler import SamplingParams  # noqa: E402
from llm.sampler.core import RowOutput, TokenLogprob  # noqa: E402
from llm.serve import app, gate, request, response  # noqa: E402
from llm.serve.engine import Job  # noqa: E402
from llm.serve.gate import Guard  # noqa: E402
from llm.serve.request import BadRequest, Limits  # noqa: E402
from llm.serve.schemas import ChatRequest, CompletionRequest  # noqa: E402
from llm.tokenizer import EOD, eod_id, train_tokenizer  # noqa: E402
from tests.serve_fixtures import TEXTS  # noqa: E402


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(TEXTS * 20, vocab_size=320)


@pytest.fixture(scope="module")
def limits(tok: Tokenizer) -> Limits:
    chat = ChatTokens(ChatTemplate.plain(), tok)
    return Limits("llm", tok, 128, 320, 16, request.longest_token_bytes(tok), 32, 30.0, chat, 262_144, 4_096)


def completion(**fields) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "llm", "prompt": "def add"} | fields)


def refused(call, *args) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        call(*args)
    return caught.value


# ---------------------------------------------------------------------------------------------- request -> jobs


def test_the_longest_token_bounds_the_tokens_of_any_text(tok: Tokenizer) -> None:
    longest = request.longest_token_bytes(tok)
    special = {t.content for t in tok.get_added_tokens_decoder().values()}  # text cannot produce them
    assert longest == max(len(t) for t in tok.get_vocab() if t not in special)  # byte level: a character, a byte
    rng = random.Random(0)
    alphabet = "abc def_():\n    ré€日本語🙂" + EOD
    texts = [*TEXTS, EOD * 20, *("".join(rng.choices(alphabet, k=rng.randint(1, 400))) for _ in range(200))]
    for text in texts:
        assert len(tok.encode(text).ids) >= math.ceil(len(text.encode()) / longest), text

    from tokenizers import models, pre_tokenizers

    words = Tokenizer(models.WordLevel({"日本語": 0, "[UNK]": 1}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    assert request.longest_token_bytes(words) == 9  # not byte level: a token's UTF-8 bytes


def test_parse_body_names_what_is_wrong() -> None:
    body = request.parse_body(CompletionRequest, b'{"model": "llm", "prompt": [[1, 2], [3]], "top_k": -1}', 100, 10)
    assert body.prompt == [[1, 2], [3]] and body.top_k == -1
    cases = [
        (b'{"model": "llm", "prompt": "x", "best_of": 2}', "best_of", "unknown field 'best_of': the fields are"),
        (b'{"model": "llm", "prompt": "x", "temperature": "1"}', "temperature", "valid number"),
        (b'{"model": "llm", "prompt": 5}', "prompt", "prompt must be a string, a list of strings, a list of token"),
        (b'{"model": "llm", "prompt": "x", "stop": [1]}', "stop", "stop must be a string or a list of strings"),
        (b'{"model": "llm", "prompt": [true]}', "prompt", "prompt must be"),  # strict: a bool is not a token id
        (b'{"model": "llm"}', "prompt", "prompt: Field required"),
        (b"{not json", None, "the body is not valid JSON: key must be a string"),
        (b'{"model": "llm", "prompt": "\\ud800"}', None, "the body is not valid JSON"),  # a lone surrogate
        (b"[1, 2]", None, "body: Input should be an object"),
    ]
    for raw, param, words in cases:
        error = refused(request.parse_body, CompletionRequest, raw, 100, 10)
        assert (error.status, error.param) == (400, param) and words in error.message, (raw, error.message)
    chat = b'{"model": "llm", "messages": [{"role": "robot", "content": "hi"}]}'
    assert refused(request.parse_body, ChatRequest, chat, 100, 10).param == "messages.0.role"
    many = b'{"model": "llm", "prompt": [' + b",".join([b"1"] * 100) + b"]}"
    error = refused(request.parse_body, CompletionRequest, many, 100, 10)
    assert error.status == 413 and "the most a request may hold is 100" in error.message
    assert request.parse_body(CompletionRequest, many.replace(b"1,1,", b"1,", 1), 100, 10).prompt == [1] * 99
    chats = b'{"model": "llm", "messages": [' + b",".join([b'{"role": "user", "content": "a"}'] * 11) + b"]}"
    error = refused(request.parse_body, ChatRequest, chats, 100, 10)
    assert (error.status, error.param) == (413, "messages") and "the most a chat may have is 10" in error.message


def test_check_model() -> None:
    request.check_model(completion(), "llm")
    error = refused(request.check_model, completion(model="gpt-4"), "llm")
    assert (error.status, error.code) == (404, "model_not_found") and "serves 'llm'" in error.message


def test_every_prompt_form() -> None:
    assert request.completion_prompts("x") == ["x"]
    assert request.completion_prompts(["a", "b"]) == ["a", "b"]
    assert request.completion_prompts([1, 2]) == [[1, 2]]
    assert request.completion_prompts([[1], [2, 3]]) == [[1], [2, 3]]
    assert "empty" in refused(request.completion_prompts, []).message


def test_sampling_params_one_per_job_with_seed_plus_j() -> None:
    body = completion(temperature=0.7, top_k=-1, top_p=0.9, min_p=0.1, repetition_penalty=1.2, seed=10)
    params = request.sampling_params(body, 4)
    assert [p.seed for p in params] == [10, 11, 12, 13]
    assert params[0] == SamplingParams(0.7, 0, 0.9, 0.1, 1.2, 10)  # top_k -1 (vLLM's off) is 0
    assert [p.seed for p in request.sampling_params(completion(), 3)] == [None] * 3  # the engine draws each
    unchecked = CompletionRequest.model_construct(**(completion().model_dump() | {"top_p": 0.0}))
    error = refused(request.sampling_params, unchecked, 1)  # SamplingParams' own check, as a 400 naming the field
    assert (error.status, error.param) == (400, "top_p") and "top_p=0.0" in error.message


def test_stops() -> None:
    assert request.stops(completion(stop="\n", stop_token_ids=[0, 5]), 320) == (["\n"], [0, 5])
    assert request.stops(completion(stop=["a", ""]), 320) == (["a"], [])
    assert "at most 4" in refused(request.stops, completion(stop=list("abcde")), 320).message
    error = refused(request.stops, completion(stop_token_ids=[3, 320]), 320)
    assert error.param == "stop_token_ids" and "320 is not a token id" in error.message


class Untouchable:
    """A tokenizer that fails the test if anything is tokenized."""

    def encode_batch(self, texts):
        raise AssertionError(f"tokenized {len(texts)} texts")


def test_a_text_that_cannot_fit_is_refused_without_tokenizing(limits: Limits) -> None:
    most = (limits.block_size - 1) * limits.token_bytes
    untouchable = Limits(**(vars(limits) | {"tokenizer": Untouchable()}))
    for text in ("a" * (most + 1), "€" * (most // 3 + 1), "x" * 20_000_000):
        error = refused(request.prompt_ids, ["short", text], untouchable, "prompt")
        assert error.code == "context_length_exceeded" and f"prompt 1 is {len(text.encode())} bytes" in error.message
        assert "the context holds 128" in error.message
    error = refused(request.prompt_ids, ["The lazy dog. " * 30], limits, "messages")  # tokenized, then counted
    assert (error.param, error.code) == ("messages", "context_length_exceeded") and "tokens" in error.message
    assert refused(request.prompt_ids, [[1] * 128], untouchable, "prompt").code == "context_length_exceeded"
    assert "320 is not a token id" in refused(request.prompt_ids, [[1, 320]], untouchable, "prompt").message
    assert "prompt 1 is empty" in refused(request.prompt_ids, ["x", ""], untouchable, "prompt").message
    ids = request.prompt_ids(["def add", [5, 6, 7]], limits, "prompt")
    assert ids == [limits.tokenizer.encode("def add").ids, [5, 6, 7]]


def test_budgets(limits: Limits) -> None:
    assert request.budgets([[1] * 10, [1] * 120], None, limits) == [32, 8]  # default_max_tokens, cut to the context
    assert request.budgets([[1] * 10], 118, limits) == [118]
    error = refused(request.budgets, [[1] * 10], 119, limits)
    assert (error.param, error.code) == ("max_tokens", "context_length_exceeded") and "at most 118" in error.message


def test_build_jobs_n_per_prompt_in_order(limits: Limits) -> None:
    body = completion(prompt=["def add", "The"], n=2, seed=5, stop="\n", stop_token_ids=[7], logprobs=2)
    jobs = request.completion_jobs(body, limits)
    a, b = (limits.tokenizer.encode(text).ids for text in ("def add", "The"))
    assert [job.prompt_ids for job in jobs] == [a, a, b, b]
    assert [job.params.seed for job in jobs] == [5, 6, 7, 8]  # job j = prompt i's choice c: seed + i * n + c
    assert all(job.stop == ["\n"] and job.stop_token_ids == [7] and job.logprobs == 2 for job in jobs)
    assert all(job.timeout == 30.0 and job.max_tokens == 32 for job in jobs)
    error = refused(request.completion_jobs, completion(prompt=["a"] * 4, n=5), limits)
    assert error.param == "n" and "exceeds the queue of 16" in error.message


def test_chat_jobs(limits: Limits) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    body = ChatRequest.model_validate({"model": "llm", "messages": messages, "max_completion_tokens": 5})
    (job,) = request.chat_jobs(body, limits)
    messages = [m.model_dump(include={"role", "content"}) for m in body.messages]
    prompt = ChatTemplate.plain().render(messages, add_generation_prompt=True)
    assert job.prompt_ids == limits.tokenizer.encode(prompt).ids
    assert job.stop == list(PLAIN_STOPS) and job.max_tokens == 5 and job.logprobs is None
    both = ChatRequest.model_validate(
        {"model": "llm", "messages": messages, "max_tokens": 5, "max_completion_tokens": 5}
    )
    assert refused(request.chat_jobs, both, limits).param == "max_completion_tokens"


# ---------------------------------------------------------------------------------------------- jobs -> answer


def entries_of(tok: Tokenizer, text: str) -> list[TokenLogprob]:
    ids = tok.encode(text).ids
    return [TokenLogprob(t, -0.25 * k, [(t, -0.25 * k), ((t + 1) % 320, -5.0)]) for k, t in enumerate(ids)]


def test_logprobs_body(tok: Tokenizer) -> None:
    entries = entries_of(tok, "héllo 日本語 fox")
    ids = [e.token for e in entries]
    body = response.logprobs_body(tok, entries)
    assert body["tokens"] == [tok.decode([t], skip_special_tokens=False) for t in ids]
    assert body["token_logprobs"] == [e.logprob for e in entries]
    assert body["text_offset"] == [len(tok.decode(ids[:k]).rstrip("\ufffd")) for k in range(len(ids))]
    assert body["text_offset"][-1] < len(tok.decode(ids)) and "\ufffd" in "".join(body["tokens"])  # split characters
    assert all(
        top[token] == lp
        for token, lp, top in zip(body["tokens"], body["token_logprobs"], body["top_logprobs"], strict=True)
    )
    parts = [
        response.logprobs_body(tok, entries, 0, 3),
        response.logprobs_body(tok, entries, 3, 5),
        response.logprobs_body(tok, entries, 5),
    ]
    assert {key: sum((part[key] for part in parts), []) for key in body} == body  # streamed pieces add up
    halves = [TokenLogprob(250, -1.0, [(250, -1.0), (251, -2.0)])]  # two partial bytes, one text: the likelier
    assert response.logprobs_body(tok, halves)["top_logprobs"] == [{"\ufffd": -1.0}]


def finished(tok: Tokenizer, prompt: list[int], text: str, reason: str = "length", logprobs: int | None = None) -> Job:
    """A Job as the engine leaves it: its output holds text's tokens."""
    job = Job(prompt, 50, SamplingParams.defaults(temperature=0.0), logprobs=logprobs)
    job.output = RowOutput.make(50, [eod_id(tok)], tok)
    for entry in entries_of(tok, text):
        job.output.accept(entry.token, entry if logprobs is not None else None)
    job.output.end(reason)
    job.finish_reason = reason
    return job


def test_completion_response(tok: Tokenizer) -> None:
    meta = response.new_meta(False, "llm")
    jobs = [finished(tok, [1, 2, 3], "one"), finished(tok, [1, 2, 3], "two", "stop"), finished(tok, [4], "three")]
    out = response.completion_response(jobs, meta, False, 1, tok)
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-") and out["model"] == "llm"
    assert [c["text"] for c in out["choices"]] == ["one", "two", "three"]
    assert [c["finish_reason"] for c in out["choices"]] == ["length", "stop", "length"]
    completion_tokens = sum(len(j.token_ids) for j in jobs)
    assert out["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": completion_tokens,
        "total_tokens": 7 + completion_tokens,
    }
    assert response.completion_response(jobs[:2], meta, False, 2, tok)["usage"]["prompt_tokens"] == 3  # one prompt, n=2
    with_logprobs = finished(tok, [1], "fox", logprobs=1)
    choice = response.completion_response([with_logprobs], meta, False, 1, tok)["choices"][0]
    assert choice["logprobs"] == response.logprobs_body(tok, with_logprobs.token_logprobs)
    chat = response.completion_response(jobs[:1], response.new_meta(True, "llm"), True, 1, tok)
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"] == {
        "role": "assistant",
        "content": "one",
    }


def test_chunks_and_events() -> None:
    meta = {"id": "cmpl-1", "created": 0, "model": "llm"}
    assert response.chunk(meta, False, 1, "hi")["choices"] == [
        {"index": 1, "text": "hi", "finish_reason": None, "logprobs": None}
    ]
    assert response.chunk(meta, False, 0, "", "stop")["choices"][0]["finish_reason"] == "stop"
    first = response.chunk(meta, True, 0, "", first=True)
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "",
    }
    assert response.chunk(meta, True, 0, "")["choices"][0]["delta"] == {}
    assert response.sse("[DONE]") == "data: [DONE]\n\n"
    assert json.loads(response.sse({"a": 1})[6:]) == {"a": 1}


def test_failures_and_health() -> None:
    status, body = response.failure("timeout", None, 7.0)
    assert status == 504 and body["error"]["type"] == "timeout" and "request_timeout=7.0 s" in body["error"]["message"]
    assert response.failure("cancelled", None, 7.0)[1]["error"]["code"] == "engine_stopped"
    status, body = response.failure("error", "the engine stopped: Killed", 7.0)
    assert status == 500 and "the engine stopped: Killed" in body["error"]["message"]
    engine = SimpleNamespace(alive=False, active=lambda: 0, queued=lambda: 2, max_batch=4, queue_size=8)
    status, body = response.health_body(engine, "llm")
    assert status == 503 and body["status"] == "stopped" and body["queued"] == 2
    engine.alive = True
    assert response.health_body(engine, "llm") == (200, {**body, "status": "ok"})


# ---------------------------------------------------------------------------------------------- waiting


def waiting_jobs(count: int, seconds: float) -> list[Job]:
    """Jobs as submit() leaves them, due in `seconds`."""
    jobs = [Job([1], 4, SamplingParams.defaults(temperature=0.0), timeout=seconds) for _ in range(count)]
    for job in jobs:
        job.deadline = time.monotonic() + seconds
    return jobs


def engine_thread(*calls) -> threading.Thread:
    """Another thread makes the calls, a few ms apart, as the engine calls on_event on its own."""

    def run() -> None:
        for call in calls:
            time.sleep(0.005)
            call()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def event(job: Job, kind: str, value: object):
    return lambda: job.on_event(kind, value)


def test_wait_all_ends_at_the_deadline_whatever_the_engine_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "GRACE", 0.1)

    async def never() -> bool:
        return False

    async def wait(jobs: list[Job], disconnected=never, *calls) -> tuple[str, float]:
        events = app.connect(jobs, asyncio.get_running_loop())
        engine_thread(*calls)
        return await app.wait_all(events, jobs, disconnected), time.monotonic() - started

    started = time.monotonic()  # before the jobs: their deadlines count from their making
    jobs = waiting_jobs(2, 0.2)  # the engine never answers
    outcome, took = asyncio.run(wait(jobs))
    assert outcome == "timeout" and 0.3 <= took < 1.0 and all(job.cancelled for job in jobs)

    started = time.monotonic()
    jobs = waiting_jobs(2, 5.0)
    calls = [event(jobs[0], "text", "a"), event(jobs[1], "done", "stop"), event(jobs[0], "done", "length")]
    outcome, took = asyncio.run(wait(jobs, never, *calls))
    assert outcome == "done" and took < 1.0 and not any(job.cancelled for job in jobs)

    async def gone() -> bool:
        return True

    started = time.monotonic()
    jobs = waiting_jobs(1, 5.0)
    outcome, took = asyncio.run(wait(jobs, gone))
    assert outcome == "disconnected" and took < 1.0 and jobs[0].cancelled


def test_stream_events(tok: Tokenizer, limits: Limits, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "GRACE", 0.1)
    meta = {"id": "cmpl-1", "created": 0, "model": "llm"}

    async def stream(jobs: list[Job], *calls) -> list[str]:
        events = app.connect(jobs, asyncio.get_running_loop())
        engine_thread(*calls)
        return [event async for event in app.stream_events(events, jobs, meta, False, limits)]

    # text with its logprobs as the engine makes them: each chunk carries those of the tokens since the last
    job = Job([1], 50, SamplingParams.defaults(temperature=0.0), logprobs=1, timeout=5.0)
    job.deadline = time.monotonic() + 5.0
    job.output = RowOutput.make(50, [eod_id(tok)], tok)
    entries = entries_of(tok, "The quick brown fox")

    def step(entry: TokenLogprob):  # the engine accepts a token, then emits its text
        return lambda: job.on_event("text", job.output.accept(entry.token, entry))

    out = asyncio.run(stream([job], *map(step, entries), event(job, "done", "length")))
    assert out[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(event[6:]) for event in out[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == tok.decode([e.token for e in entries])
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    parts = [c["choices"][0]["logprobs"] for c in chunks]
    assert all(len(part["tokens"]) == 1 for part in parts[:-1])
    assert {k: sum((p[k] for p in parts), []) for k in parts[0]} == response.logprobs_body(tok, entries)

    jobs = waiting_jobs(2, 0.2)  # one ends with an error, the other never
    out = asyncio.run(stream(jobs, event(jobs[0], "done", "error")))
    assert '"type": "server_error"' in out[0] and '"type": "timeout"' in out[1] and out[2:] == ["data: [DONE]\n\n"]
    assert all(job.cancelled for job in jobs)


# ---------------------------------------------------------------------------------------------- the gate


def guarded(
    api_key: str | None, max_bytes: int, path: str, headers: dict, chunks: list[bytes]
) -> tuple[int, dict, int]:
    """Status, JSON body and bytes the inner app read, for one request through Guard."""
    read = [0]

    async def inner(scope, receive, send) -> None:
        while True:
            message = await receive()
            read[0] += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await gate.send_json(send, 200, {"read": read[0]})

    async def run() -> tuple[int, dict]:
        messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        sent = []

        async def receive():
            return messages.pop(0)

        async def send(message) -> None:
            sent.append(message)

        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await Guard(inner, api_key, max_bytes)({"type": "http", "path": path, "headers": raw}, receive, send)
        return sent[0]["status"], json.loads(sent[1]["body"])

    status, body = asyncio.run(run())
    return status, body, read[0]


def test_guard_checks_the_key_before_reading() -> None:
    key = "sk-1"
    for headers in ({}, {"Authorization": "Bearer sk-2"}, {"Authorization": "sk-1"}, {"Authorization": "Basic sk-1"}):
        status, body, read = guarded(key, 100, "/v1/completions", headers, [b"{}"])
        assert (status, body["error"]["code"], read) == (401, "invalid_api_key", 0)
    assert guarded(key, 100, "/v1/models", {"Authorization": "Bearer sk-1"}, [b""])[0] == 200
    assert guarded(key, 100, "/v1/models", {"authorization": "bearer  sk-1 "}, [b""])[0] == 200
    assert guarded(key, 100, "/health", {}, [b""])[0] == 200
    assert guarded(None, 100, "/v1/models", {}, [b""])[0] == 200


def test_guard_limits_the_body() -> None:
    status, body, read = guarded(None, 100, "/v1/completions", {"content-length": "101"}, [b"x" * 101])
    assert (status, body["error"]["code"], read) == (413, "request_too_large", 0)  # from the header, unread
    status, body, read = guarded(None, 100, "/v1/completions", {}, [b"x" * 60, b"x" * 60, b"x" * 60])
    assert (status, body["error"]["code"]) == (413, "request_too_large") and read == 60  # counted as it is read
    assert guarded(None, 100, "/v1/completions", {"content-length": "100"}, [b"x" * 40, b"x" * 60])[:2] == (
        200,
        {"read": 100},
    )


# ---------------------------------------------------------------------------------------------- serve.py


def test_serve_py_exits_when_the_engine_thread_dies(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm.serve import cli

    engine = SimpleNamespace(died=None, on_death=None, stalled=lambda limit: None)
    server = SimpleNamespace(should_exit=False)
    died = cli.exit_on_death(engine, server, 60.0)
    assert died == [] and not server.should_exit
    engine.died = "RuntimeError: CUDA error: an illegal memory access was encountered"
    engine.on_death()  # on the engine thread, after every job ended with "error"
    assert server.should_exit and died == [f"the engine thread died: {engine.died}"]

    monkeypatch.delenv("LLM_API_KEY", raising=False)
    assert cli.read_api_key(None) is None and cli.read_api_key("k") == "k"
    monkeypatch.setenv("LLM_API_KEY", "from-env")
    assert cli.read_api_key(None) == "from-env" and cli.read_api_key("k") == "k"
    assert all(cli.loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2"))
    assert not any(cli.loopback(h) for h in ("0.0.0.0", "::", "192.168.1.2", "example.com"))
