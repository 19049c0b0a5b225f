"""The server through the official openai client and raw HTTP: completions, chat, streaming, stops, seeds, n,
bad requests (400, never 500), a full queue (429 + Retry-After), disconnects that free the slot, timeouts."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm.serve.engine import Job
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
    assert choice.finish_reason == ("length" if ref.finish_reason == "max_new_tokens" else "stop")
    assert out.usage.completion_tokens == len(ref.token_ids) and out.usage.prompt_tokens == ref.prompt_tokens


def test_chat_uses_the_template(client: openai.OpenAI) -> None:
    from llm.serve.chat import render
    from llm.serve.schemas import ChatMessage

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    prompt = render([ChatMessage(**m) for m in messages])
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
}


@pytest.mark.parametrize("case", BAD)
def test_bad_completion_requests_are_400_with_a_message(server, case: str) -> None:
    body, param, words = BAD[case]
    response = httpx.post(f"{server.url}/v1/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"] and error["type"] == "invalid_request_error"


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


def test_full_queue_is_429_with_retry_after(serve_checkpoint: Path) -> None:  # noqa: F811
    with served(serve_checkpoint, start_engine=False, queue_size=1) as s:  # nothing decodes: the queue stays full
        s.engine.submit([Job([1, 2], 4, 0.0, 1.0, None, [], 30.0)])
        response = httpx.post(f"{s.url}/v1/completions", json={"model": "llm", "prompt": "x"})
        assert response.status_code == 429 and response.headers["Retry-After"] == "1"
        assert response.json()["error"]["code"] == "queue_full"
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="llm", prompt="x")


def slow_steps(engine, seconds: float) -> list[Job]:
    """Make each decode step take `seconds`; return the list the engine's submitted jobs go to."""
    decode, submit, jobs = engine.decode, engine.submit, []

    def slow(*args):
        time.sleep(seconds)
        return decode(*args)

    def recording(new):
        jobs.extend(new)
        submit(new)

    engine.decode, engine.submit = slow, recording
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
    flat = {f"paths.{k}": v for k, v in cfg.pop("paths").items()}
    flat.update({k: "null" if v is None else str(v).lower() for k, v in cfg.items() if k not in ("defaults", "hydra")})
    assert rows == {k: str(v) for k, v in flat.items()}
