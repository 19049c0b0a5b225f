"""The continuous-batching engine: jobs that join a running batch give the tokens they give alone."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import torch
from tokenizers import Tokenizer

from llm.sampler import SamplingParams, generate_ids
from llm.serve.engine import Engine, EngineStopped, Job, QueueFull
from llm.tokenizer import eod_id, train_tokenizer
from tests.test_sampler import make_model

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [40, 41, 42]]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    texts = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog.", "héllo € 日本語"]
    return train_tokenizer(texts * 20, vocab_size=320)


def job(prompt: list[int], max_tokens: int = 40, stop=(), timeout: float = 60.0, on_event=None, **kw) -> Job:
    """A job sampling with conf/infer.yaml's settings changed by kw (greedy unless kw says otherwise)."""
    params = SamplingParams.defaults(**{"temperature": 0.0, "top_p": 1.0, "seed": None} | kw)
    made = Job(list(prompt), max_tokens, params, stop=list(stop), timeout=timeout)
    if on_event is not None:
        made.on_event = on_event
    return made


def run_to_end(engine: Engine, jobs: list[Job], joins: dict[int, list[Job]] | None = None) -> None:
    """Step the engine (no thread) until every job ended; joins[k]: jobs submitted before step k."""
    engine.submit(jobs)
    joins = joins or {}
    everything = [*jobs, *(j for later in joins.values() for j in later)]
    step = 0
    while any(j.finish_reason is None for j in everything):
        if step in joins:
            engine.submit(joins[step])
        engine.step()
        step += 1
        assert step < 1000


def test_jobs_joining_mid_decode_give_the_tokens_they_give_alone(tokenizer: Tokenizer) -> None:
    model = make_model(block_size=96)
    alone = []
    for prompt in PROMPTS:
        engine = Engine(model, tokenizer, max_batch=3, queue_size=8, compile=False)
        j = job(prompt)
        run_to_end(engine, [j])
        alone.append(j.token_ids)
    assert all(len(ids) >= 10 for ids in alone), alone  # long enough that joins land mid-decode

    engine = Engine(model, tokenizer, max_batch=3, queue_size=8, compile=False)
    jobs = [job(p) for p in PROMPTS]
    # job 0 starts alone, 1 joins at step 3, 2 at step 7; 3 waits for the first free slot (max_batch 3)
    run_to_end(engine, [jobs[0]], joins={3: [jobs[1]], 7: [jobs[2], jobs[3]]})
    assert [j.token_ids for j in jobs] == alone
    assert engine.active() == 0 and engine.queued() == 0

    # and the same tokens as the sampler's own batch-of-one generation, which stops at the same token
    for prompt, ids in zip(PROMPTS, alone, strict=True):
        greedy = SamplingParams.defaults(temperature=0)
        ref = generate_ids(model, [prompt], 40, greedy, stop_tokens=[eod_id(tokenizer)])[0]
        assert ref.token_ids == ids


def test_seeded_draw_does_not_depend_on_the_batch(tokenizer: Tokenizer) -> None:
    model = make_model(block_size=96)
    engine = Engine(model, tokenizer, max_batch=4, queue_size=8, compile=False)
    lone = job(PROMPTS[0], temperature=1.0, top_p=0.9, seed=3)
    run_to_end(engine, [lone])
    crowd = [job(PROMPTS[0], temperature=1.0, top_p=0.9, seed=3), job(PROMPTS[1], temperature=0.7, seed=9)]
    run_to_end(engine, crowd[1:], joins={2: crowd[:1]})
    assert crowd[0].token_ids == lone.token_ids
    other = job(PROMPTS[0], temperature=1.0, top_p=0.9, seed=4)
    run_to_end(engine, [other])
    assert other.token_ids != lone.token_ids


def test_stop_string_max_tokens_cancel_timeout_and_a_full_queue(tokenizer: Tokenizer) -> None:
    model = make_model(block_size=96)
    engine = Engine(model, tokenizer, max_batch=2, queue_size=2, compile=False)
    full = job(PROMPTS[0])
    run_to_end(engine, [full])
    stop = full.text[5:8]
    events: list[tuple[str, object]] = []
    stopped = job(PROMPTS[0], stop=[stop], on_event=lambda kind, value: events.append((kind, value)))
    short = job(PROMPTS[0], max_tokens=3)
    run_to_end(engine, [stopped, short])
    assert stopped.finish_reason == "stop" and stopped.text == full.text[: full.text.find(stop)]
    assert "".join(v for k, v in events if k == "text") == stopped.text and events[-1] == ("done", "stop")
    assert short.finish_reason == "length" and len(short.token_ids) == 3

    with pytest.raises(QueueFull):
        engine.submit([job(PROMPTS[0]), job(PROMPTS[1]), job(PROMPTS[2])])  # all or none
    assert engine.queued() == 0
    cancelled, late = job(PROMPTS[0]), job(PROMPTS[1], timeout=0.0)
    engine.submit([cancelled, late])
    engine.step()
    assert engine.active() == 1 and late.finish_reason == "timeout"  # expired while it waited
    cancelled.cancel()
    engine.step()
    assert cancelled.finish_reason == "cancelled" and engine.active() == 0


def test_engine_thread_serves_and_stops(tokenizer: Tokenizer) -> None:
    model = make_model(block_size=96)
    engine = Engine(model, tokenizer, max_batch=2, queue_size=4, compile=False)
    engine.start()
    try:
        jobs = [job(p, max_tokens=8) for p in PROMPTS[:3]]
        done = [threading.Event() for _ in jobs]
        for j, d in zip(jobs, done, strict=True):
            j.on_event = lambda kind, value, d=d: d.set() if kind == "done" else None
        engine.submit(jobs)
        assert all(d.wait(30) for d in done)
        assert all(j.finish_reason in ("stop", "length") for j in jobs)
    finally:
        engine.stop()
    assert engine.thread is not None and not engine.thread.is_alive()


def test_prefill_into_one_cache_row_leaves_the_others_and_equals_a_cache_of_its_own() -> None:
    model = make_model(block_size=32)
    prompt = torch.tensor([[5, 6, 7, 8]])
    T = prompt.size(1)
    with torch.inference_mode():
        model.setup_caches(1, 32)
        alone = model(prompt, torch.arange(T), model.causal_mask[None, None, :T])
        alone_k = model.blocks[0].attn.kv_cache.k_cache[0, :, :T].clone()
        model.setup_caches(3, 32)
        for block in model.blocks:
            block.attn.kv_cache.k_cache.fill_(7.0)  # what other requests left in the rows
        rows = torch.tensor([1])
        slotted = model(prompt, torch.arange(T), model.causal_mask[None, None, :T], cache_rows=rows)
        k = model.blocks[0].attn.kv_cache.k_cache
        assert torch.equal(slotted, alone) and torch.equal(k[1, :, :T], alone_k)
        assert (k[0] == 7).all() and (k[2] == 7).all() and (k[1, :, T:] == 7).all()
    model.clear_caches()


@pytest.mark.slow
def test_compiled_engine_gives_the_eager_engines_tokens(
    tokenizer: Tokenizer, capfd: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """compile=True on CPU (llm.sampler.compiled: frozen weights, a dynamic cache length), warmed up as serve.py
    does: jobs joining mid-decode get the eager engine's tokens, over more than one length of the cache read.
    Compiling prints nothing of its own (no autotuning tables, no warnings): the log says it, in two lines."""
    model = make_model(block_size=160)
    eager = Engine(model, tokenizer, max_batch=3, queue_size=8, compile=False)
    expected = [job(p, max_tokens=90) for p in PROMPTS[:3]]
    run_to_end(eager, expected[:1], joins={5: expected[1:]})
    assert max(len(j.prompt_ids) + len(j.token_ids) for j in expected) > 64  # reads 64 positions, then 128
    compiled = Engine(model, tokenizer, max_batch=3, queue_size=8, compile=True)
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="llm.sampler.core"):
        compiled.warm_up()  # else the first steps compile, past the jobs' 60 s timeout on a cold compile cache
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out[-500:], err[-500:])
    assert "compiling the decode step…" in caplog.text and "compiled the decode step in" in caplog.text
    jobs = [job(p, max_tokens=90) for p in PROMPTS[:3]]
    run_to_end(compiled, jobs[:1], joins={5: jobs[1:]})
    assert [j.token_ids for j in jobs] == [j.token_ids for j in expected]


CONTROLS = {
    "greedy": dict(temperature=0.0),
    "temperature": dict(temperature=1.3, top_p=1.0),
    "top_k": dict(temperature=1.0, top_p=1.0, top_k=5),
    "top_p": dict(temperature=1.0, top_p=0.7),
    "min_p": dict(temperature=1.0, top_p=1.0, min_p=0.2),
    "repetition_penalty": dict(temperature=0.9, top_p=1.0, repetition_penalty=1.8),
}


def test_each_control_gives_generates_tokens_whoever_shares_the_batch(tokenizer: Tokenizer) -> None:
    """Jobs with different settings share one batch, joining at different steps: each gives the tokens generate()
    gives for its prompt, settings and seed alone."""
    model = make_model(block_size=96)
    engine = Engine(model, tokenizer, max_batch=4, queue_size=8, compile=False)
    jobs = {
        name: job(PROMPTS[i % 4], max_tokens=30, seed=11 + i, **kw) for i, (name, kw) in enumerate(CONTROLS.items())
    }
    names = list(jobs)
    run_to_end(
        engine, [jobs[n] for n in names[:2]], joins={2: [jobs[n] for n in names[2:4]], 5: [jobs[n] for n in names[4:]]}
    )
    for i, name in enumerate(names):
        params = SamplingParams.defaults(**{"temperature": 0.0, "top_p": 1.0} | CONTROLS[name] | {"seed": 11 + i})
        ref = generate_ids(model, [PROMPTS[i % 4]], 30, params, stop_tokens=[eod_id(tokenizer)])[0]
        assert jobs[name].token_ids == ref.token_ids, name
        assert jobs[name].finish_reason == ref.finish_reason
    assert len({tuple(j.token_ids) for j in jobs.values()}) == len(jobs)  # the controls really differ


def test_a_job_that_cannot_start_ends_alone(tokenizer: Tokenizer) -> None:
    model = make_model(block_size=96)
    alone = Engine(model, tokenizer, max_batch=3, queue_size=8, compile=False)
    expected = [job(PROMPTS[0], max_tokens=12), job(PROMPTS[2], max_tokens=12)]
    run_to_end(alone, expected)
    engine = Engine(model, tokenizer, max_batch=3, queue_size=8, compile=False)
    bad = job([1, 2, 10_000], max_tokens=12)  # an id outside the vocabulary: its set-up raises
    good = [job(PROMPTS[0], max_tokens=12), job(PROMPTS[2], max_tokens=12)]
    run_to_end(engine, [good[0], bad, good[1]])
    assert bad.finish_reason == "error" and "outside the vocabulary" in bad.error
    assert [j.token_ids for j in good] == [j.token_ids for j in expected]
    assert all(j.finish_reason == "length" for j in good) and engine.active() == 0


def test_a_failing_prefill_ends_only_its_own_job(tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model(block_size=96)
    engine = Engine(model, tokenizer, max_batch=3, queue_size=8, compile=False)
    prefill = engine.core.prefill

    def failing(rows, prompts, params, logprobs=-1):
        if [66, 67] in [list(p) for p in prompts]:
            raise RuntimeError("injected prefill fault")
        return prefill(rows, prompts, params, logprobs)

    monkeypatch.setattr(engine.core, "prefill", failing)
    jobs = [job(PROMPTS[0], max_tokens=8), job([66, 67], max_tokens=8), job(PROMPTS[1], max_tokens=8)]
    run_to_end(engine, jobs)
    assert [j.finish_reason for j in jobs] == ["length", "error", "length"]
    assert "injected prefill fault" in jobs[1].error
    ref = generate_ids(model, [PROMPTS[1]], 8, SamplingParams.defaults(temperature=0), stop_tokens=[eod_id(tokenizer)])
    assert jobs[2].token_ids == ref[0].token_ids


def wait_done(jobs: list[Job], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(j.finish_reason is None for j in jobs):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_failed_step_ends_its_jobs_and_the_engine_serves_on(tokenizer: Tokenizer) -> None:
    model = make_model(block_size=96)
    engine = Engine(model, tokenizer, max_batch=2, queue_size=4, compile=False)
    step, calls = engine.core.step, []

    def once_failing(logprobs=-1):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected step fault")
        return step(logprobs)

    engine.core.step = once_failing
    engine.start()
    try:
        first = [job(PROMPTS[0], max_tokens=20), job(PROMPTS[1], max_tokens=20)]
        engine.submit(first)
        assert wait_done(first, 10)
        assert [j.finish_reason for j in first] == ["error", "error"] and "injected step fault" in first[0].error
        after = job(PROMPTS[2], max_tokens=5)
        engine.submit([after])
        assert wait_done([after], 10) and after.finish_reason == "length" and engine.alive
    finally:
        engine.stop()


class Killed(BaseException):
    """What no `except Exception` catches: the engine thread itself dies."""


def test_a_dead_engine_thread_ends_every_job_and_refuses_new_ones(tokenizer: Tokenizer) -> None:
    model = make_model(block_size=96)
    engine = Engine(model, tokenizer, max_batch=1, queue_size=4, compile=False)
    deaths = []
    engine.on_death = lambda: deaths.append(engine.died)

    def killed(logprobs=-1):
        raise Killed("injected")

    engine.core.step = killed
    engine.start()
    running, waiting = job(PROMPTS[0]), job(PROMPTS[1])  # max_batch 1: the second waits in the queue
    engine.submit([running, waiting])
    assert wait_done([running, waiting], 10)
    assert running.finish_reason == waiting.finish_reason == "error" and "Killed: injected" in running.error
    assert deaths == ["Killed: injected"] and not engine.alive
    with pytest.raises(EngineStopped, match="Killed"):
        engine.submit([job(PROMPTS[2])])
    engine.stop()


def test_logprobs_are_the_models_and_the_greedy_token_is_the_top_one(tokenizer: Tokenizer) -> None:
    model = make_model(block_size=96)
    engine = Engine(model, tokenizer, max_batch=2, queue_size=4, compile=False)
    greedy, plain = job(PROMPTS[0], max_tokens=6), job(PROMPTS[0], max_tokens=6)
    greedy.logprobs = 3
    run_to_end(engine, [greedy, plain])
    assert greedy.token_ids == plain.token_ids and plain.token_logprobs == []
    assert [lp.token for lp in greedy.token_logprobs] == greedy.token_ids
    with torch.inference_mode():
        logits = model(torch.tensor([PROMPTS[0] + greedy.token_ids[:1]]))[0, -1, : model.config.vocab_size]
    expected = torch.log_softmax(logits.float(), -1)
    second = greedy.token_logprobs[1]
    assert second.logprob == pytest.approx(expected[second.token].item(), abs=1e-4)
    for lp in greedy.token_logprobs:
        assert len(lp.top) == 3 and lp.top[0][0] == lp.token and lp.top[0][1] == pytest.approx(lp.logprob)
        assert lp.logprob <= 0 and [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
