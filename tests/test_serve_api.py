"""The server through the official openai client and raw HTTP: completions, chat, streaming, stops, seeds, n,
every sampling control and prompt form, logprobs, bad requests (400, never 500), a full queue (429 + Retry-After),
the API key (401), body limits (413), disconnects that free the slot, timeouts, and faults: an engine that is not
running (503), one that never answers (504 at the deadline), one whose thread dies (errors, then 503, and serve.py
exits 1). The request functions one by one, without a server: tests/test_serve_app.py."""

from __future__ import annotations

import contextlib
import json
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from llm.sampler import SamplingParams
from llm.serve.engine import Engine, Job
from tests.serve_fixtures import serve_checkpoint, served  # noqa: F401  (a fixture)

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(serve_checkpoint: Path):  # noqa: F811
    with served(serve_checkpoint) as s:
        yield s


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_models_and_health(client: openai.OpenAI, server) -> None:
    assert [m.id for m in client.models.list().data] == ["llm"]
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["max_batch"] == 4 and health["active"] == 0


def test_completion_greedy_equals_the_sampler(client: openai.OpenAI, serve_checkpoint: Path) -> None:  # noqa: F811
    from llm.checkpoint import load_checkpoint
    from llm.sampler import generate

    out = client.completions.create(model="llm", prompt="def add", max_tokens=20, temperature=0)
    choice = out.choices[0]
    model, tokenizer, _ = load_checkpoint(serve_checkpoint)
    ref = generate(model, tokenizer, "def add", 20, temperature=0)[0]
    assert choice.text == ref.text and choice.text
    assert choice.finish_reason == ref.finish_reason
    assert out.usage.completion_tokens == len(ref.token_ids) and out.usage.prompt_tokens == ref.prompt_tokens


def test_chat_uses_the_template(client: openai.OpenAI) -> None:
    """A checkpoint without a chat template (a base trained on documents) chats through the plain-text one."""
    from llm.chat_template import ChatTemplate

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    prompt = ChatTemplate.plain().render(messages, add_generation_prompt=True)
    assert prompt == "Be brief.\n\nUser: Hello\nAssistant:"
    chat = client.chat.completions.create(model="llm", messages=messages, max_tokens=16, temperature=0)
    plain = client.completions.create(model="llm", prompt=prompt, max_tokens=16, temperature=0, stop=["\nUser:"])
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content.startswith(plain.choices[0].text.split("\nAssistant:")[0])


def test_streaming_gives_the_same_text(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="llm", prompt="The quick", max_tokens=24, temperature=0).choices[0]
    pieces, reasons = [], []
    for chunk in client.completions.create(model="llm", prompt="The quick", max_tokens=24, temperature=0, stream=True):
        pieces.append(chunk.choices[0].text)
        reasons.append(chunk.choices[0].finish_reason)
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == whole.text
    assert reasons[-1] == whole.finish_reason and not any(reasons[:-1])

    chat = client.chat.completions.create(
        model="llm", messages=[{"role": "user", "content": "hi"}], max_tokens=12, temperature=0, stream=True
    )
    deltas = [c.choices[0].delta for c in chat]
    assert deltas[0].role == "assistant" and "".join(d.content or "" for d in deltas)


def test_stop_strings(client: openai.OpenAI) -> None:
    full = client.completions.create(model="llm", prompt="def add", max_tokens=30, temperature=0).choices[0].text
    stop = full[6:9]
    cut = client.completions.create(model="llm", prompt="def add", max_tokens=30, temperature=0, stop=stop).choices[0]
    assert cut.text == full[: full.find(stop)] and cut.finish_reason == "stop"
    streamed = client.completions.create(
        model="llm", prompt="def add", max_tokens=30, temperature=0, stop=[stop, "zzz"], stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == cut.text  # never half-printed


def test_seed_gives_the_same_text_and_n_gives_n_choices(client: openai.OpenAI) -> None:
    def sample(seed: int, n: int = 1):
        return client.completions.create(model="llm", prompt="The", max_tokens=24, temperature=1.0, seed=seed, n=n)

    first, again, other = sample(7), sample(7), sample(8)
    assert first.choices[0].text == again.choices[0].text
    assert first.choices[0].text != other.choices[0].text
    three = sample(7, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert three.choices[0].text == first.choices[0].text  # choice i draws with seed + i
    assert len({c.text for c in three.choices}) == 3


BAD = {
    "unknown field": ({"model": "llm", "prompt": "x", "frequency_penalty": 0.5}, "frequency_penalty", "unknown field"),
    "wrong type": ({"model": "llm", "prompt": "x", "temperature": "hot"}, "temperature", "number"),
    "int as string": ({"model": "llm", "prompt": "x", "max_tokens": "5"}, "max_tokens", "integer"),
    "temperature range": ({"model": "llm", "prompt": "x", "temperature": 3}, "temperature", "less than or equal"),
    "top_p zero": ({"model": "llm", "prompt": "x", "top_p": 0}, "top_p", "greater than"),
    "n zero": ({"model": "llm", "prompt": "x", "n": 0}, "n", "greater than"),
    "no prompt": ({"model": "llm"}, "prompt", "required"),
    "empty prompt": ({"model": "llm", "prompt": ""}, "prompt", "empty"),
    "past the context": ({"model": "llm", "prompt": "def add", "max_tokens": 500}, "max_tokens", "context of 128"),
    "long prompt": ({"model": "llm", "prompt": "The lazy dog. " * 200}, "prompt", "the context holds 128"),
    "five stops": ({"model": "llm", "prompt": "x", "stop": list("abcde")}, "stop", "at most 4"),
    "top_k below -1": ({"model": "llm", "prompt": "x", "top_k": -2}, "top_k", "greater than or equal to -1"),
    "min_p one": ({"model": "llm", "prompt": "x", "min_p": 1.0}, "min_p", "less than 1"),
    "penalty zero": ({"model": "llm", "prompt": "x", "repetition_penalty": 0}, "repetition_penalty", "greater than"),
    "logprobs six": ({"model": "llm", "prompt": "x", "logprobs": 6}, "logprobs", "less than or equal to 5"),
    "stop id": ({"model": "llm", "prompt": "x", "stop_token_ids": [320]}, "stop_token_ids", "[0, 320)"),
    "prompt id": ({"model": "llm", "prompt": [5, 320]}, "prompt", "320 is not a token id"),
    "negative id": ({"model": "llm", "prompt": [[5], [-1]]}, "prompt", "-1 is not a token id"),
    "empty list": ({"model": "llm", "prompt": []}, "prompt", "the list is empty"),
    "empty ids": ({"model": "llm", "prompt": [[1, 2], []]}, "prompt", "prompt 1 is empty"),
    "mixed forms": ({"model": "llm", "prompt": ["x", [1]]}, "prompt", "a list of lists of token ids"),
    "long ids": ({"model": "llm", "prompt": [1] * 128}, "prompt", "the context holds 128"),
    "seed past int64": ({"model": "llm", "prompt": "x", "seed": 2**63}, "seed", "less than"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_completion_requests_are_400_with_a_message(server, case: str) -> None:
    body, param, words = BAD[case]
    response = httpx.post(f"{server.url}/v1/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"] and error["type"] == "invalid_request_error"
    if case in ("long prompt", "long ids", "past the context"):
        assert error["code"] == "context_length_exceeded"


def test_bad_chat_requests_and_bodies(server, client: openai.OpenAI) -> None:
    url = f"{server.url}/v1/chat/completions"
    for body, param in [
        ({"model": "llm", "messages": []}, "messages"),
        ({"model": "llm", "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"model": "llm", "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"model": "llm", "messages": "hi"}, "messages"),
    ]:
        response = httpx.post(url, json=body)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
    response = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    response = httpx.post(url, json=[1, 2])
    assert response.status_code == 400 and response.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="is not served here"):
        client.completions.create(model="gpt-4", prompt="x")
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model="llm", messages=[{"role": "user", "content": "x"}], max_tokens=1000)
    assert httpx.get(f"{server.url}/v1/nothing").json()["error"]["message"]


def greedy(**changes) -> dict:
    """A greedy completion request of "def add", with changes."""
    return {"model": "llm", "prompt": "def add", "max_tokens": 24, "temperature": 0} | changes


def post(url: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=body, timeout=30, **kw)


def chunks_of(url: str, body: dict) -> list[dict]:
    """The JSON chunks of a streamed completion, [DONE] left out."""
    text = post(url, {**body, "stream": True}).text
    assert text.rstrip().endswith("data: [DONE]"), text
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def test_every_control_and_a_list_of_prompts_equal_generate(server, serve_checkpoint: Path) -> None:  # noqa: F811
    """A list of prompts with a seed and every control infer.py has: the server's choices are generate()'s batch
    with that seed and those settings (row r draws with seed + r)."""
    from llm.checkpoint import load_checkpoint
    from llm.sampler import generate

    prompts = ["def add", "The quick", "héllo"]
    controls = dict(temperature=1.2, top_k=12, top_p=0.9, min_p=0.05, repetition_penalty=1.3)
    out = post(server.url, {"model": "llm", "prompt": prompts, "max_tokens": 20, "seed": 3, **controls}).json()
    model, tokenizer, _ = load_checkpoint(serve_checkpoint)
    ref = generate(model, tokenizer, prompts, 20, seed=3, **controls)
    assert [c["text"] for c in out["choices"]] == [r.text for r in ref]
    assert [c["finish_reason"] for c in out["choices"]] == [r.finish_reason for r in ref]
    assert out["usage"]["completion_tokens"] == sum(len(r.token_ids) for r in ref)


def test_top_k_min_p_and_the_penalty_change_the_text_as_they_should(server) -> None:
    def text(**changes) -> str:
        response = post(server.url, greedy(**changes))
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["text"]

    plain = text()
    assert text(temperature=1.5, top_k=1, seed=1) == plain  # one candidate: greedy whatever the temperature
    assert text(temperature=1.5, top_k=-1, seed=1) == text(temperature=1.5, top_k=0, seed=1)  # vLLM's "off"
    assert text(temperature=1.5, top_k=-1, seed=1) != plain
    assert text(repetition_penalty=2.0) != plain  # greedy, but seen tokens weigh less
    hot = dict(temperature=2.0, seed=1)
    assert text(min_p=0.5, **hot) != text(**hot)  # fewer candidates, another draw


def test_logprobs_in_openais_completions_format(server, client: openai.OpenAI) -> None:
    out = post(server.url, greedy(logprobs=3)).json()
    choice = out["choices"][0]
    lp = choice["logprobs"]
    n = out["usage"]["completion_tokens"]
    assert n > 0 and sorted(lp) == ["text_offset", "token_logprobs", "tokens", "top_logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == n
    assert all(x <= 0 for x in lp["token_logprobs"])
    for token, chosen, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert 1 <= len(top) <= 3 and all(x <= 0 for x in top.values())
        assert chosen == max(top.values()) == top[token]  # greedy: the chosen token is the likeliest
    offsets = lp["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] < len(choice["text"])
    if "\ufffd" not in "".join(lp["tokens"]):  # whole characters: the tokens spell the text
        assert "".join(lp["tokens"]) == choice["text"]
        assert offsets == [sum(len(t) for t in lp["tokens"][:k]) for k in range(n)]

    streamed = [c["choices"][0]["logprobs"] for c in chunks_of(server.url, greedy(logprobs=3))]
    assert sum(bool(part and part["tokens"]) for part in streamed) > 1  # spread over the chunks, in order
    assert {key: sum((part[key] for part in streamed if part), []) for key in lp} == lp

    zero = post(server.url, greedy(logprobs=0)).json()["choices"][0]["logprobs"]
    assert zero["token_logprobs"] == lp["token_logprobs"] and zero["top_logprobs"] == [{}] * n
    assert post(server.url, greedy()).json()["choices"][0]["logprobs"] is None
    parsed = client.completions.create(model="llm", prompt="def add", max_tokens=5, temperature=0, logprobs=2)
    assert len(parsed.choices[0].logprobs.token_logprobs) == parsed.usage.completion_tokens


def test_stop_token_ids(server, serve_checkpoint: Path) -> None:  # noqa: F811
    from llm.checkpoint import load_checkpoint
    from llm.sampler import generate

    model, tokenizer, _ = load_checkpoint(serve_checkpoint)
    ids = generate(model, tokenizer, "def add", 30, temperature=0)[0].token_ids
    k = next(k for k in range(3, len(ids)) if ids[k] not in ids[:k])  # a token first made at step k
    out = post(server.url, greedy(max_tokens=30, stop_token_ids=[ids[k]])).json()
    assert out["choices"][0]["finish_reason"] == "stop" and out["usage"]["completion_tokens"] == k
    assert out["choices"][0]["text"] == tokenizer.decode(ids[:k])


def test_every_prompt_form(server, serve_checkpoint: Path) -> None:  # noqa: F811
    """A string, a list of strings, token ids, a list of token-id lists: the same prompts give the same text."""
    from llm.checkpoint import load_checkpoint

    tokenizer = load_checkpoint(serve_checkpoint)[1]
    a, b = "def add", "The quick"
    ids_a, ids_b = tokenizer.encode(a).ids, tokenizer.encode(b).ids

    def texts(prompt) -> tuple[list[str], int]:
        response = post(server.url, greedy(prompt=prompt, max_tokens=12))
        assert response.status_code == 200, response.text
        return [c["text"] for c in response.json()["choices"]], response.json()["usage"]["prompt_tokens"]

    one = texts(a)
    assert texts(ids_a) == one and one[1] == len(ids_a)
    both = texts([a, b])
    assert texts([ids_a, ids_b]) == both and both[0][0] == one[0][0] and both[1] == len(ids_a) + len(ids_b)


def force_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every engine says its thread runs: one never started takes jobs and never decodes them."""
    monkeypatch.setattr(Engine, "alive", property(lambda self: True))


def test_full_queue_is_429_with_retry_after(serve_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    force_alive(monkeypatch)
    with served(serve_checkpoint, start_engine=False, queue_size=1) as s:  # nothing decodes: the queue stays full
        s.engine.submit([Job([1, 2], 4, SamplingParams.defaults(temperature=0.0), timeout=30.0)])
        response = httpx.post(f"{s.url}/v1/completions", json={"model": "llm", "prompt": "x"})
        assert response.status_code == 429 and response.headers["Retry-After"] == "1"
        assert response.json()["error"]["code"] == "queue_full"
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="llm", prompt="x")


def test_the_api_key_guards_every_endpoint_but_health(serve_checkpoint: Path) -> None:  # noqa: F811
    key = "sk-test-5ecret"
    with served(serve_checkpoint, api_key=key) as s:
        chat = {"model": "llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        calls = [
            ("GET", "/", None),
            ("GET", "/v1/models", None),
            ("POST", "/v1/completions", {"model": "llm", "prompt": "def", "max_tokens": 2}),
            ("POST", "/v1/chat/completions", chat),
        ]
        wrong = [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": key}, {"Authorization": f"Basic {key}"}]
        for method, path, body in calls:
            for headers in wrong:
                response = httpx.request(method, f"{s.url}{path}", json=body, headers=headers)
                assert response.status_code == 401, (path, headers, response.text)
                assert response.json()["error"]["code"] == "invalid_api_key"
            response = httpx.request(method, f"{s.url}{path}", json=body, headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200, (path, response.text)
        assert httpx.get(f"{s.url}/health").status_code == 200  # for load balancers and probes
        good = openai.OpenAI(base_url=f"{s.url}/v1", api_key=key, max_retries=0)
        assert good.completions.create(model="llm", prompt="def", max_tokens=2).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{s.url}/v1", api_key="sk-wrong", max_retries=0).models.list()


def test_a_body_over_max_request_bytes_is_413(serve_checkpoint: Path) -> None:  # noqa: F811
    with served(serve_checkpoint, max_request_bytes=2000) as s:
        url, headers = f"{s.url}/v1/completions", {"content-type": "application/json"}
        big = json.dumps({"model": "llm", "prompt": "x" * 3000, "max_tokens": 2}).encode()

        def pieces():  # no Content-Length: chunked, counted as it is read
            for i in range(0, len(big), 500):
                yield big[i : i + 500]

        for content in (big, pieces()):
            response = httpx.post(url, content=content, headers=headers)
            assert response.status_code == 413, response.text
            assert response.json()["error"]["code"] == "request_too_large"
        small = json.dumps({"model": "llm", "prompt": "x" * 1500, "max_tokens": 2}).encode()
        assert httpx.post(url, content=small, headers=headers).status_code == 400  # read: the prompt is too long


def test_a_huge_prompt_holds_up_nobody(serve_checkpoint: Path) -> None:  # noqa: F811
    """While one client sends a 20 MB prompt, /health and another client's completion keep answering (typically in
    well under half a second); the huge prompt is refused as longer than the context without being tokenized."""
    with served(serve_checkpoint, max_request_bytes=32 * 2**20) as s:
        body = json.dumps({"model": "llm", "prompt": "The lazy dog. " * 1_500_000, "max_tokens": 1}).encode()
        assert len(body) > 20_000_000
        result = {}

        def upload() -> None:
            def pieces():  # a MiB at a time, about a second in all: the server reads while the others ask
                for i in range(0, len(body), 2**20):
                    yield body[i : i + 2**20]
                    time.sleep(0.05)

            headers = {"content-type": "application/json"}
            result["response"] = httpx.post(f"{s.url}/v1/completions", content=pieces(), headers=headers, timeout=60)

        thread = threading.Thread(target=upload)
        thread.start()
        latencies = []
        while thread.is_alive() or not latencies:
            started = time.monotonic()
            assert httpx.get(f"{s.url}/health", timeout=10).status_code == 200
            assert post(s.url, greedy(max_tokens=4)).status_code == 200
            latencies.append(time.monotonic() - started)
        thread.join()
        response = result["response"]
        assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"
        assert "bytes" in response.json()["error"]["message"]  # refused by its size, before tokenizing
        # answered all along: many round trips during the upload, the typical one far shorter than the upload (a
        # server that stopped to read or tokenize the prompt would answer once, after it); bounds with slack for CI
        assert len(latencies) > 3 and sorted(latencies)[len(latencies) // 2] < 0.5 and max(latencies) < 5, latencies


def test_an_engine_not_running_is_503_at_once(serve_checkpoint: Path) -> None:  # noqa: F811
    with served(serve_checkpoint, start_engine=False) as s:
        started = time.monotonic()
        for body in (greedy(), greedy(stream=True)):
            response = post(s.url, body)
            assert response.status_code == 503 and response.json()["error"]["code"] == "engine_stopped"
        health = httpx.get(f"{s.url}/health")
        assert health.status_code == 503 and health.json()["status"] == "stopped"
        with pytest.raises(openai.InternalServerError):
            openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0).completions.create(
                model="llm", prompt="x"
            )
        assert time.monotonic() - started < 1.0
    with served(serve_checkpoint) as s:  # started, then stopped
        assert post(s.url, greedy(max_tokens=2)).status_code == 200
        s.engine.stop()
        assert post(s.url, greedy()).status_code == 503


def test_an_engine_that_never_answers_ends_the_request_at_its_deadline(
    serve_checkpoint: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llm.serve.app import GRACE

    force_alive(monkeypatch)  # takes the jobs, never sends "done"
    with served(serve_checkpoint, start_engine=False, request_timeout=0.5) as s:
        started = time.monotonic()
        response = post(s.url, greedy())
        took = time.monotonic() - started
        assert response.status_code == 504 and "request_timeout" in response.json()["error"]["message"]
        assert 0.5 <= took < 0.5 + GRACE + 1.0, took
        streamed = post(s.url, greedy(stream=True)).text
        assert '"type": "timeout"' in streamed and streamed.rstrip().endswith("data: [DONE]")
        assert httpx.get(f"{s.url}/health").status_code == 200  # the server still answers
        monkeypatch.undo()
        s.engine.start()  # once the engine runs, the next request is answered
        assert post(s.url, greedy(max_tokens=2)).status_code == 200


class Killed(BaseException):
    """What `except Exception` does not catch: it ends the engine thread."""


def test_a_dead_engine_thread_ends_its_requests_then_answers_503(serve_checkpoint: Path) -> None:  # noqa: F811
    from llm.serve.cli import exit_on_death

    with served(serve_checkpoint, max_batch=2) as s:
        server = SimpleNamespace(should_exit=False)  # what serve.py's on_death stops
        died = exit_on_death(s.engine, server, 60.0)
        step = s.engine.core.step

        def dying(*args, **kwargs):
            if s.engine.active() == 2 and s.engine.steps > 3:  # both requests are decoding: die
                raise Killed("injected")
            time.sleep(0.02)
            return step(*args, **kwargs)

        s.engine.core.step = dying
        results = {}

        def ask(name: str, body: dict) -> None:
            results[name] = post(s.url, body)

        body = greedy(prompt="def", max_tokens=100)
        threads = [
            threading.Thread(target=ask, args=(name, b))
            for name, b in [("plain", body), ("streamed", {**body, "stream": True})]
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert time.monotonic() - started < 10  # well within request_timeout=30
        plain, streamed = results["plain"], results["streamed"].text
        assert plain.status_code == 500 and "Killed: injected" in plain.json()["error"]["message"], plain.text
        assert '"type": "server_error"' in streamed and "Killed: injected" in streamed
        assert streamed.rstrip().endswith("data: [DONE]")
        assert (
            server.should_exit
            and died == [f"the engine thread died: {s.engine.died}"]
            and "Killed: injected" in died[0]
        )

        started = time.monotonic()
        response = post(s.url, greedy())
        assert response.status_code == 503 and response.json()["error"]["code"] == "engine_stopped"
        assert httpx.get(f"{s.url}/health").json()["status"] == "stopped"
        assert time.monotonic() - started < 1.0


@contextlib.contextmanager
def serve_py_with_step(checkpoint: Path, step_source: str, *overrides: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """serve.py in a process of its own, its DecodeCore.step replaced by step_source (a `def step(self, ...)`
    with what it needs above it), on a free port: the process and its URL, once /health answers."""
    argv = ["serve.py", f"ckpt_path={checkpoint}", "port=0", *overrides]
    script = "\n".join(
        [
            "import sys",
            "from llm.sampler.core import DecodeCore",
            textwrap.dedent(step_source),
            "DecodeCore.step = step",
            f"sys.argv = {argv!r}",
            "from llm.serve.cli import main",
            "main()",
        ]
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stderr:
            if "serving llm" in line:
                url = line.split(" on ")[1].split()[0]
                break
        assert url, "no 'serving ... on http://...' line"
        assert wait_until(lambda: ok(f"{url}/health"), 30)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_py_exits_1_when_the_engine_thread_dies(serve_checkpoint: Path) -> None:  # noqa: F811
    step = """
        class Killed(BaseException):
            pass


        def step(self, *args, **kwargs):
            raise Killed("injected")
        """
    with serve_py_with_step(serve_checkpoint, step) as (proc, url):
        response = httpx.post(f"{url}/v1/completions", json=greedy(), timeout=30)
        assert response.status_code == 500 and "Killed: injected" in response.text
        rest = proc.communicate(timeout=30)[1]
        assert proc.returncode == 1 and "the engine thread died: Killed: injected" in rest, rest


def slow_steps(engine, seconds: float) -> list[Job]:
    """Make each decode step take `seconds`; return the list the engine's submitted jobs go to."""
    step, submit, jobs = engine.core.step, engine.submit, []

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return step(*args, **kwargs)

    def recording(new):
        jobs.extend(new)
        submit(new)

    engine.core.step, engine.submit = slow, recording
    return jobs


def wait_until(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_client_disconnect_frees_the_slot(serve_checkpoint: Path) -> None:  # noqa: F811
    with served(serve_checkpoint, max_batch=1) as s:
        jobs = slow_steps(s.engine, 0.05)  # 100 tokens: 5 s
        body = {"model": "llm", "prompt": "def", "max_tokens": 100, "temperature": 0, "stream": True}
        with httpx.Client() as http, http.stream("POST", f"{s.url}/v1/completions", json=body) as response:
            assert next(response.iter_lines()).startswith("data: ")
        assert wait_until(lambda: jobs[0].finish_reason is not None, 3)  # the stream closed: cancelled
        assert jobs[0].finish_reason == "cancelled" and len(jobs[0].token_ids) < 60 and s.engine.active() == 0

        with pytest.raises(httpx.ReadTimeout):  # not streamed: the server notices while it waits
            httpx.post(f"{s.url}/v1/completions", json={**body, "stream": False}, timeout=0.5)
        assert wait_until(lambda: jobs[1].finish_reason is not None, 3)
        assert jobs[1].finish_reason == "cancelled" and s.engine.active() == 0


def test_request_timeout_is_504(serve_checkpoint: Path) -> None:  # noqa: F811
    with served(serve_checkpoint, max_batch=1, request_timeout=0.3) as s:
        slow_steps(s.engine, 0.05)
        body = {"model": "llm", "prompt": "def", "max_tokens": 100, "temperature": 0}
        response = httpx.post(f"{s.url}/v1/completions", json=body)
        assert response.status_code == 504 and "request_timeout" in response.json()["error"]["message"]
        streamed = httpx.post(f"{s.url}/v1/completions", json={**body, "stream": True}).text
        assert '"type": "timeout"' in streamed and streamed.rstrip().endswith("data: [DONE]")


def test_serve_py_starts_logs_its_address_and_stops(serve_checkpoint: Path) -> None:  # noqa: F811
    command = [sys.executable, str(REPO / "serve.py"), f"ckpt_path={serve_checkpoint}", "port=0", "max_batch=2"]
    proc = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stderr:
            if "serving llm" in line:
                url = line.split(" on ")[1].split()[0]
                break
        assert url and url.startswith("http://127.0.0.1:"), "no 'serving ... on http://...' line"
        assert wait_until(lambda: ok(f"{url}/health"), 30)
        out = httpx.post(f"{url}/v1/completions", json={"model": "llm", "prompt": "def", "max_tokens": 5}).json()
        assert out["choices"][0]["finish_reason"] in ("stop", "length")
        assert "<textarea" in httpx.get(url).text
    finally:
        proc.terminate()
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn shuts down, then re-raises the signal it caught


def ok(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("max_batch=0", "max_batch=0 must be an integer >= 1"),
        ("port=70000", "port=70000 must be an integer in"),
        ("request_timeout=0", "request_timeout=0 must be a number"),
        ("max_request_bytes=0", "max_request_bytes=0 must be an integer >= 1"),
        ("api_key=''", "api_key='' must be a non-empty string"),
        ("api_key=123", "api_key=123 must be a non-empty string"),
    ],
)
def test_bad_serve_config_names_the_key(serve_checkpoint: Path, override: str, message: str) -> None:  # noqa: F811
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from llm.config import config_dir
    from llm.errors import ConfigError
    from llm.serve.cli import serve

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("serve", overrides=[f"ckpt_path={serve_checkpoint}", override])
    with pytest.raises(ConfigError, match=message):
        serve(cfg)


def test_configuration_reference_covers_every_serve_key() -> None:
    """docs/configuration.md's serve.py section lists every key of conf/serve.yaml with its default."""
    import re

    from omegaconf import OmegaConf

    doc = (REPO / "docs" / "configuration.md").read_text()
    section = doc[doc.index("## `serve.py`") :]
    rows = dict(re.findall(r"^\| `([^`]+)` \| `([^`]*)` \|", section, re.M))
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "serve.yaml"), resolve=False)
    flat = {}
    for key, value in cfg.items():
        if key in ("defaults", "hydra"):
            continue
        nested = {f"{key}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {key: value}
        flat.update({k: "null" if v is None else str(v).lower() for k, v in nested.items()})
    assert rows == {k: str(v) for k, v in flat.items()}


def test_a_web_page_cannot_post_to_the_local_server(server) -> None:
    """A browser sends a cross-site form or a "simple" fetch (text/plain) without asking the server first: neither
    is JSON by its Content-Type, so neither generates. DNS rebinding reaches it under another Host: refused."""
    url = f"{server.url}/v1/completions"
    body = json.dumps({"model": "llm", "prompt": "hi", "max_tokens": 2})
    for kind in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data"):
        response = httpx.post(url, content=body.encode(), headers={"content-type": kind})
        assert response.status_code == 415 and "application/json" in response.json()["error"]["message"], kind
    form = httpx.post(url, data={"user": body})  # what <form enctype=...> sends
    assert form.status_code == 415
    assert httpx.post(url, content=body.encode()).status_code == 415  # no Content-Type at all
    port = server.url.rsplit(":", 1)[1]
    assert httpx.post(url, content=body, headers={"content-type": "Application/JSON; charset=utf-8"}).status_code == 200
    for host, status in [("attacker.example", 421), (f"attacker.example:{port}", 421), (f"127.0.0.1:{port}", 200)]:
        response = httpx.post(url, content=body, headers={"content-type": "application/json", "host": host})
        assert response.status_code == status, host
    assert httpx.get(f"{server.url}/health", headers={"host": f"localhost:{port}"}).status_code == 200
    assert httpx.get(f"{server.url}/health", headers={"host": "attacker.example"}).status_code == 421


def test_controls_that_would_overflow_are_refused_or_clamped(server) -> None:
    url = f"{server.url}/v1/completions"

    def text(**controls) -> httpx.Response:
        body = {"model": "llm", "prompt": "def ", "max_tokens": 12, "seed": 3, **controls}
        return httpx.post(url, json=body, timeout=60)

    huge = text(top_k=2**63)
    assert huge.status_code == 400 and huge.json()["error"]["param"] == "top_k"
    greedy = text(temperature=0).json()["choices"][0]["text"]
    assert text(temperature=1e-300).json()["choices"][0]["text"] == greedy  # below 1e-5: greedy, as vLLM's
    clamped = text(temperature=0, repetition_penalty=0.01).json()["choices"][0]
    tiny = text(temperature=0, repetition_penalty=1e-300).json()["choices"][0]
    assert tiny == clamped and tiny["text"].strip()  # the clamp at 0.01, never NaN
    assert text(temperature=0.7, repetition_penalty=1e300).status_code == 200


def test_content_parts_of_type_text_are_the_string_they_join(server) -> None:
    url = f"{server.url}/v1/chat/completions"

    def chat(content) -> httpx.Response:
        body = {"model": "llm", "messages": [{"role": "user", "content": content}], "max_tokens": 8, "temperature": 0}
        return httpx.post(url, json=body, timeout=60)

    plain = chat("hello there").json()["choices"][0]["message"]["content"]
    parts = chat([{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}])
    assert parts.status_code == 200 and parts.json()["choices"][0]["message"]["content"] == plain
    image = chat([{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "http://x/y.png"}}])
    error = image.json()["error"]
    assert image.status_code == 400 and "'image_url'" in error["message"] and error["param"] == "messages.0.content"


def test_a_hung_decode_step_turns_health_to_503_within_the_liveness_time(serve_checkpoint: Path) -> None:  # noqa: F811
    from llm.serve.cli import exit_on_death

    release = threading.Event()
    with served(serve_checkpoint, liveness_timeout=0.5) as s:
        server = SimpleNamespace(should_exit=False)
        died = exit_on_death(s.engine, server, 0.5)
        step = s.engine.core.step

        def hanging(*args, **kwargs):
            release.wait(20)  # a step that does not return
            return step(*args, **kwargs)

        assert httpx.get(f"{s.url}/health").json()["status"] == "ok"
        s.engine.core.step = hanging
        threading.Thread(target=lambda: post(s.url, greedy(max_tokens=2)), daemon=True).start()
        started = time.monotonic()
        assert wait_until(lambda: httpx.get(f"{s.url}/health").status_code == 503, 5)
        assert time.monotonic() - started < 0.5 + 1.5  # the liveness time, and the time to get the step going
        health = httpx.get(f"{s.url}/health").json()
        assert health["status"] == "hung" and "liveness_timeout=0.5" in health["reason"]
        assert wait_until(lambda: server.should_exit, 3) and "has not returned" in died[0]
        release.set()
        assert wait_until(lambda: httpx.get(f"{s.url}/health").status_code == 200, 5)  # the step returned


def test_serve_py_exits_1_when_a_decode_step_hangs(serve_checkpoint: Path) -> None:  # noqa: F811
    step = """
        import time


        def step(self, *args, **kwargs):
            time.sleep(600)
        """
    with serve_py_with_step(serve_checkpoint, step, "liveness_timeout=1") as (proc, url):
        threading.Thread(target=lambda: post(url, greedy(max_tokens=2)), daemon=True).start()
        started = time.monotonic()
        rest = proc.communicate(timeout=30)[1]
        assert proc.returncode == 1 and "a decode step has not returned for" in rest, rest
        assert time.monotonic() - started < 15


def rss_mb() -> float:
    """This process's resident memory (the server runs in it), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads resident memory from /proc")
def test_a_body_of_millions_of_values_holds_up_nobody_and_keeps_no_memory(server) -> None:
    """Bodies under max_request_bytes made of 4M token ids, or 280k messages, are refused before they are parsed,
    while another client polls /health and a third streams: nobody waits, and memory comes back."""
    ids = b'{"model":"llm","prompt":[' + b"0," * 3_999_999 + b"0]}"
    chats = b'{"model":"llm","messages":[' + b",".join([b'{"role":"user","content":""}'] * 280_000) + b"]}"
    assert len(ids) < 8 * 2**20 and len(chats) < 8 * 2**20  # under the size limit: read, then counted
    before = rss_mb()
    polls: list[float] = []
    gaps: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            started = time.monotonic()
            assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
            polls.append(time.monotonic() - started)
            time.sleep(0.01)

    def stream() -> None:
        body = greedy(max_tokens=96, stream=True)
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as response:
            last = time.monotonic()
            for _ in response.iter_lines():
                gaps.append(time.monotonic() - last)
                last = time.monotonic()

    threads = [threading.Thread(target=poll), threading.Thread(target=stream)]
    for thread in threads:
        thread.start()
    answers = []
    for raw, path in [(ids, "completions"), (chats, "chat/completions"), (ids, "completions")]:
        headers = {"content-type": "application/json"}
        answers.append(httpx.post(f"{server.url}/v1/{path}", content=raw, headers=headers, timeout=30))
    time.sleep(0.2)
    done.set()
    for thread in threads:
        thread.join(30)
    assert [a.status_code for a in answers] == [413, 413, 413], [a.text[:200] for a in answers]
    assert "values" in answers[0].json()["error"]["message"] and "values" in answers[1].json()["error"]["message"]
    assert max(polls) < 0.5 and statistics.median(polls) < 0.1, (max(polls), statistics.median(polls))
    assert gaps and max(gaps) < 0.5, max(gaps)
    del ids, chats, answers
    assert rss_mb() - before < 100, (before, rss_mb())
