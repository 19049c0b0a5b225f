"""The continuous-batching engine: jobs that join a running batch give the tokens they give alone."""

from __future__ import annotations

import threading

import pytest
import torch
from tokenizers import Tokenizer

from llm.sampler import SamplingParams, generate_ids
from llm.serve.engine import Engine, Job, QueueFull
from llm.tokenizer import eod_id, train_tokenizer
from tests.test_sampler import make_model

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [40, 41, 42]]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    texts = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog.", "héllo € 日本語"]
    return train_tokenizer(texts * 20, vocab_size=320)


def job(prompt: list[int], max_tokens: int = 40, **kw) -> Job:
    settings = dict(temperature=0.0, top_p=1.0, seed=None, stop=[], timeout=60.0) | kw
    return Job(list(prompt), max_tokens, **settings)


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
def test_compiled_engine_gives_the_eager_engines_tokens(tokenizer: Tokenizer) -> None:
    """compile=True on CPU (llm.sampler.compiled: frozen weights, a dynamic cache length), warmed up as serve.py
    does: jobs joining mid-decode get the eager engine's tokens, over more than one length of the cache read."""
    model = make_model(block_size=160)
    eager = Engine(model, tokenizer, max_batch=3, queue_size=8, compile=False)
    expected = [job(p, max_tokens=90) for p in PROMPTS[:3]]
    run_to_end(eager, expected[:1], joins={5: expected[1:]})
    assert max(len(j.prompt_ids) + len(j.token_ids) for j in expected) > 64  # reads 64 positions, then 128
    compiled = Engine(model, tokenizer, max_batch=3, queue_size=8, compile=True)
    compiled.warm_up()  # else the first steps compile, past the jobs' 60 s timeout on a cold compile cache
    jobs = [job(p, max_tokens=90) for p in PROMPTS[:3]]
    run_to_end(compiled, jobs[:1], joins={5: jobs[1:]})
    assert [j.token_ids for j in jobs] == [j.token_ids for j in expected]
