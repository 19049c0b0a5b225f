"""The sampler: KV cache == no cache, batches == one by one, sampling controls, stops, context rule, streaming."""

from __future__ import annotations

import copy
import logging
from dataclasses import replace

import pytest
import torch
from tokenizers import Tokenizer

from llm.config import model_preset
from llm.errors import ConfigError
from llm.model import GPT
from llm.sampler import SamplingParams, TextStream, core, generate, generate_ids
from llm.sampler.core import decode_logits
from llm.sampler.params import SHARED_KEYS, generation_defaults
from llm.sampler.processors import min_p, repetition_penalty, temperature, top_k, top_p
from llm.tokenizer import EOD, train_tokenizer

GREEDY = SamplingParams.defaults(temperature=0)
SWITCHES_OFF = dict(qk_norm=False, zero_init_proj=False, logit_softcap=None, tie_embeddings=True)
PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]]


def make_model(seed: int = 0, vocab_size: int = 320, block_size: int = 160, **overrides) -> GPT:
    """A tiny float32 model whose random weights are large enough that greedy decoding does not loop at once."""
    torch.manual_seed(seed)
    shape = {"n_layer": 2, "n_head": 4, "n_kv_head": None, "n_embd": 64, "mlp": "swiglu", **SWITCHES_OFF, **overrides}
    config = model_preset("tiny", vocab_size=vocab_size, block_size=block_size, **shape)
    model = GPT(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5 if name == "wte.weight" else 0.2)
    return model


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    texts = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog.", "héllo € 日本語"]
    return train_tokenizer(texts * 20, vocab_size=320)


def ids_of(results) -> list[list[int]]:
    return [r.token_ids for r in results]


VARIANTS = {
    "rope": {},
    "learned": {"pos": "learned"},
    "gpt2-style": {"pos": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True, "n_embd": 96, "n_head": 6},
    "gqa": {"n_kv_head": 1},
    "explicit-attn": {"attn": "explicit"},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_cache_equals_no_cache(variant: str) -> None:
    model = make_model(**VARIANTS[variant])
    cached = ids_of(generate_ids(model, PROMPTS, 130, GREEDY))
    recomputed = ids_of(generate_ids(model, PROMPTS, 130, GREEDY, kv_cache=False))
    assert all(len(ids) == 130 for ids in cached)
    assert all(len(set(ids)) > 10 for ids in cached)  # a real sequence, not one token repeated
    assert cached == recomputed


@pytest.mark.parametrize("variant", ["rope", "learned", "gqa"])
def test_batch_equals_one_by_one(variant: str) -> None:
    model = make_model(seed=1, **VARIANTS[variant])
    batch = ids_of(generate_ids(model, PROMPTS, 60, GREEDY))
    alone = [generate_ids(model, [p], 60, GREEDY)[0].token_ids for p in PROMPTS]
    assert batch == alone


def test_a_sampled_row_of_a_batch_equals_its_prompt_alone_with_seed_plus_row() -> None:
    model = make_model(seed=1)
    params = SamplingParams.defaults(temperature=1.0, top_k=30, top_p=0.9, repetition_penalty=1.2, seed=40)
    batch = ids_of(generate_ids(model, PROMPTS, 40, params))
    alone = [generate_ids(model, [p], 40, replace(params, seed=40 + r))[0].token_ids for r, p in enumerate(PROMPTS)]
    assert batch == alone
    assert ids_of(generate_ids(model, PROMPTS, 40, params, kv_cache=False)) == batch


def test_cache_is_removed_after_generation(tokenizer: Tokenizer) -> None:
    model = make_model(vocab_size=tokenizer.get_vocab_size())
    generate_ids(model, PROMPTS, 5, GREEDY)
    assert all(block.attn.kv_cache is None for block in model.blocks)
    assert model.causal_mask is None
    assert model.config.attn == "sdpa"

    def boom(row: int, text: str) -> None:
        assert model.blocks[0].attn.kv_cache.k_cache.shape[:2] == (1, 4)  # in use while decoding
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        generate(model, tokenizer, "def add", 20, temperature=0, stop_tokens=[], on_text=boom)
    assert all(block.attn.kv_cache is None for block in model.blocks)  # freed on error too


def test_prefill_fills_the_cache_like_a_full_forward() -> None:
    model = make_model(n_kv_head=2)
    idx = torch.tensor([PROMPTS[2]])
    T = idx.size(1)
    with torch.no_grad():
        full = model(idx)
        model.setup_caches(1, 32)
        cached = model(idx, torch.arange(T), model.causal_mask[None, None, :T])
        cache = model.blocks[0].attn.kv_cache
        assert cache.k_cache.shape == (1, 2, 32, 16)
        assert cache.k_cache[:, :, :T].abs().sum() > 0
        assert cache.k_cache[:, :, T:].abs().sum() == 0  # nothing written past the prompt
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)


def test_top_k_1_and_tiny_top_p_equal_greedy() -> None:
    model = make_model()
    greedy = ids_of(generate_ids(model, PROMPTS, 40, GREEDY))
    top_k = ids_of(generate_ids(model, PROMPTS, 40, SamplingParams.defaults(temperature=1.5, top_k=1, seed=3)))
    top_p = ids_of(generate_ids(model, PROMPTS, 40, SamplingParams.defaults(temperature=1.0, top_p=1e-6, seed=4)))
    assert top_k == greedy
    assert top_p == greedy


def test_seed_reproducible() -> None:
    model = make_model()
    params = SamplingParams.defaults(temperature=1.0, top_p=0.9, seed=123)
    first = ids_of(generate_ids(model, PROMPTS, 40, params))
    again = ids_of(generate_ids(model, PROMPTS, 40, params))
    other = ids_of(generate_ids(model, PROMPTS, 40, SamplingParams.defaults(temperature=1.0, top_p=0.9, seed=124)))
    assert first == again
    assert first != other
    # the cache changes the speed, not the draw
    assert ids_of(generate_ids(model, PROMPTS, 40, params, kv_cache=False)) == first


def test_no_seed_gives_a_fresh_sample_each_call() -> None:
    model = make_model()
    params = SamplingParams.defaults(temperature=1.0)
    torch.manual_seed(0)
    first = ids_of(generate_ids(model, PROMPTS, 40, params))
    second = ids_of(generate_ids(model, PROMPTS, 40, params))
    assert first != second  # the draw continues the global random stream
    torch.manual_seed(0)
    assert ids_of(generate_ids(model, PROMPTS, 40, params)) == first  # ... which the caller may seed
    # a seeded call leaves the caller's stream where it was, and so does a greedy one
    torch.manual_seed(0)
    generate_ids(model, PROMPTS, 40, SamplingParams.defaults(temperature=1.0, seed=7))
    generate_ids(model, PROMPTS, 40, GREEDY)
    assert ids_of(generate_ids(model, PROMPTS, 40, params)) == first


def test_stop_tokens_end_each_row_on_its_own() -> None:
    model = make_model()
    full = ids_of(generate_ids(model, PROMPTS, 50, GREEDY))
    stop = full[0][20]
    first = full[0].index(stop)
    results = generate_ids(model, PROMPTS, 50, GREEDY, stop_tokens=[stop])
    assert results[0].token_ids == full[0][:first]
    assert results[0].finish_reason == "stop"
    for result, ids in zip(results[1:], full[1:], strict=True):  # other rows end at their own first stop, if any
        expected = ids[: ids.index(stop)] if stop in ids else ids
        assert result.token_ids == expected


def test_stop_strings(tokenizer: Tokenizer) -> None:
    model = make_model(vocab_size=tokenizer.get_vocab_size())
    full = generate(model, tokenizer, "def add", 60, temperature=0, stop_tokens=[])[0]
    stop = full.text[25:28]
    cut = full.text.index(stop)
    streamed: list[str] = []
    on_text = lambda _row, text: streamed.append(text)  # noqa: E731
    result = generate(model, tokenizer, "def add", 60, temperature=0, stop=[stop], stop_tokens=[], on_text=on_text)[0]
    assert result.finish_reason == "stop"
    assert result.text == full.text[:cut]
    assert "".join(streamed) == result.text  # the stop string is never printed, not even half of it
    # one stop string may be given as a plain string: it is not split into characters
    single = generate(model, tokenizer, "def add", 60, temperature=0, stop=stop, stop_tokens=[])[0]
    assert single.text == result.text


def test_context_overflow_rule(caplog: pytest.LogCaptureFixture) -> None:
    model = make_model(block_size=32)
    with caplog.at_level(logging.WARNING):
        short = generate_ids(model, [[1, 2, 3] * 6], 50, GREEDY)[0]  # 18 tokens: 14 fit
    assert short.prompt_tokens == 18 and len(short.token_ids) == 14
    assert short.finish_reason == "length"
    assert "context of 32 tokens is full" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        long = generate_ids(model, [list(range(1, 41))], 10, GREEDY)[0]  # 40 tokens: keeps its last 32 - 10
    assert "keeping its last 22 tokens" in caplog.text
    assert long.prompt_tokens == 22 and len(long.token_ids) == 10 and long.finish_reason == "length"
    assert long.token_ids == generate_ids(model, [list(range(19, 41))], 10, GREEDY)[0].token_ids
    # a long prompt with a large budget keeps at least half the context
    half = generate_ids(model, [list(range(1, 41))], 100, GREEDY)[0]
    assert half.prompt_tokens == 16 and len(half.token_ids) == 16 and half.finish_reason == "length"


def test_streaming_never_splits_a_character(tokenizer: Tokenizer) -> None:
    text = "héllo wörld € 日本語 done"
    stream = TextStream(tokenizer)
    chunks = [stream.push(i) for i in tokenizer.encode(text).ids]
    chunks.append(stream.finish())
    assert "".join(chunks) == text
    assert not any("\ufffd" in c for c in chunks)
    assert sum(1 for c in chunks if c) > 3  # text really arrived piece by piece


def test_streamed_text_equals_final_text(tokenizer: Tokenizer) -> None:
    model = make_model(vocab_size=tokenizer.get_vocab_size())
    pieces: dict[int, list[str]] = {0: [], 1: []}
    results = generate(
        model, tokenizer, ["def add", "héllo"], 40, temperature=0.8, seed=1, on_text=lambda r, t: pieces[r].append(t)
    )
    for row, result in enumerate(results):
        assert "".join(pieces[row]) == result.text
        assert result.text == tokenizer.decode(result.token_ids)


def test_eod_stops_by_default(tokenizer: Tokenizer) -> None:
    model = make_model(vocab_size=tokenizer.get_vocab_size())
    with torch.no_grad():
        model.norm.weight.zero_()  # every logit 0: greedy takes the first id, the end-of-document token
    assert tokenizer.token_to_id(EOD) == 0
    assert generate(model, tokenizer, "def", 5, temperature=0, stop_tokens=[])[0].token_ids == [0] * 5
    stopped = generate(model, tokenizer, "def", 5, temperature=0)[0]
    assert stopped.token_ids == [] and stopped.finish_reason == "stop"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top_p": 0.0}, "top_p=0.0 is outside (0, 1]"),
        ({"top_p": 1.5}, "top_p=1.5 is outside (0, 1]"),
        ({"temperature": -0.1}, "temperature=-0.1 is negative"),
        ({"min_p": 1.0}, "min_p=1.0 is outside [0, 1)"),
        ({"top_k": -1}, "top_k=-1"),
        ({"repetition_penalty": 0.0}, "repetition_penalty=0.0 must be > 0"),
        ({"seed": "abc"}, "seed='abc' must be an integer"),
    ],
)
def test_bad_sampling_values_are_named(tokenizer: Tokenizer, kwargs: dict, message: str) -> None:
    model = make_model(vocab_size=tokenizer.get_vocab_size())
    with pytest.raises(ConfigError) as err:
        generate(model, tokenizer, "def", 5, **kwargs)
    assert message in str(err.value)


def test_empty_prompt_is_named(tokenizer: Tokenizer) -> None:
    model = make_model(vocab_size=tokenizer.get_vocab_size())
    with pytest.raises(ConfigError, match="prompt 1 is empty"):
        generate(model, tokenizer, ["def", ""], 5)
    with pytest.raises(ConfigError, match="prompt: none given"):
        generate(model, tokenizer, [], 5)
    with pytest.raises(ConfigError, match="max_new_tokens=0 must be an integer, at least 1"):
        generate(model, tokenizer, "def", 0)


def test_processors_worked_example() -> None:
    """The numbers quoted in docs/generation.md."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    probs = torch.softmax(logits, -1)
    assert probs[0].tolist() == pytest.approx([0.644, 0.237, 0.087, 0.032], abs=5e-4)
    cool = torch.softmax(temperature(logits, torch.tensor([[0.5]])), -1)
    assert cool[0].tolist() == pytest.approx([0.865, 0.117, 0.016, 0.002], abs=5e-4)
    assert torch.isinf(top_k(logits, torch.tensor([[2]]), 2)).tolist() == [[False, False, True, True]]
    # top_p 0.8: 0.644 < 0.8 so the second token joins; 0.644 + 0.237 >= 0.8 so the rest go
    assert torch.isinf(top_p(logits, torch.tensor([[0.8]]))).tolist() == [[False, False, True, True]]
    assert torch.isinf(top_p(logits, torch.tensor([[0.5]]))).tolist() == [[False, True, True, True]]
    # min_p 0.1: the threshold is 0.1 * 0.644 = 0.0644, so 0.087 stays and 0.032 goes
    assert torch.isinf(min_p(logits, torch.tensor([[0.1]]))).tolist() == [[False, False, False, True]]
    counts = torch.tensor([[1, 0, 0, 1]])
    assert repetition_penalty(logits, counts, torch.tensor([[2.0]])).tolist() == [[1.0, 1.0, 0.0, -2.0]]


def test_each_row_has_its_own_settings_and_off_means_unchanged() -> None:
    """One batch, four rows, four settings: each row is what that control alone makes of it."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(4, 1)
    kept = ~torch.isinf(top_k(logits, torch.tensor([[0], [1], [2], [4]]), 4))
    assert kept.sum(-1).tolist() == [4, 1, 2, 4]  # top_k 0 keeps everything
    kept = ~torch.isinf(top_p(logits, torch.tensor([[1.0], [0.5], [0.8], [0.95]])))
    assert kept.sum(-1).tolist() == [4, 1, 2, 3]  # top_p 1 keeps everything, even what rounding would cut
    kept = ~torch.isinf(min_p(logits, torch.tensor([[0.0], [0.1], [0.2], [0.5]])))
    assert kept.sum(-1).tolist() == [4, 3, 2, 1]


def test_greedy_ignores_padding_rows_of_the_embedding() -> None:
    model = make_model(vocab_size=3)  # the embedding has 64 rows: 61 of them padding
    with torch.no_grad():
        model.lm_head.weight[3:] = 5.0  # padding rows would win every argmax and every draw
    assert model.config.padded_vocab_size == 64
    for params in (GREEDY, SamplingParams.defaults(temperature=1.0, seed=0)):
        assert all(t < 3 for t in generate_ids(model, [[1, 2]], 20, params)[0].token_ids)


def test_repetition_penalty_changes_greedy_output() -> None:
    model = make_model(pos="learned", norm="layernorm", mlp="gelu", bias=True)
    plain = generate_ids(model, PROMPTS[:1], 40, GREEDY)[0].token_ids
    penalised = generate_ids(model, PROMPTS[:1], 40, SamplingParams.defaults(temperature=0, repetition_penalty=3.0))[0]
    assert len(set(penalised.token_ids)) > len(set(plain))
    cached = generate_ids(model, PROMPTS[:1], 40, SamplingParams.defaults(temperature=0, repetition_penalty=3.0))[0]
    recomputed = generate_ids(
        model, PROMPTS[:1], 40, SamplingParams.defaults(temperature=0, repetition_penalty=3.0), kv_cache=False
    )[0]
    assert cached.token_ids == recomputed.token_ids


@pytest.mark.parametrize("attn", ["explicit", "sdpa"])
def test_decode_step_compiles_as_one_graph(attn: str) -> None:
    """fullgraph=True: the decode step has no graph break (what CUDA graphs need). The eager backend keeps it fast.

    Compiled it reads the whole cache; eager, the filled prefix (4 of 16 positions): the same logits."""
    model = make_model(n_kv_head=2)
    step = torch.compile(decode_logits, backend="eager", fullgraph=True)
    idx = torch.tensor([[1, 2, 3], [4, 5, 6]])
    pos = torch.tensor([[3], [3]])
    logits = []
    for decode, length in ((step, 16), (decode_logits, 4)):
        with torch.no_grad():
            model.setup_caches(2, 16)
            model(idx, torch.arange(3), model.causal_mask[None, None, :3, :3])
            logits.append(decode(model, idx[:, -1:], pos, model.cache_mask(pos, length), attn))
            model.clear_caches()
    compiled, eager = logits
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    assert torch.equal(compiled.argmax(-1), eager.argmax(-1))


def test_fixed_cache_length_gives_the_same_tokens() -> None:
    model = make_model(n_kv_head=2)
    default = ids_of(generate_ids(model, PROMPTS, 30, GREEDY))
    assert ids_of(generate_ids(model, PROMPTS, 30, GREEDY, cache_len=model.config.block_size)) == default


def test_kept_caches_are_reused_and_give_the_same_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """compile=True keeps the caches on the model between calls (for CUDA graphs); stale entries never leak."""
    monkeypatch.setattr(core, "CompiledStep", lambda fn, model: fn)  # the reuse path, no compiling
    model = make_model(n_kv_head=2)
    first = ids_of(generate_ids(model, PROMPTS, 30, GREEDY, compile=True, cache_len=80))
    kept = model.blocks[0].attn.kv_cache
    buffer = kept.k_cache.data_ptr()
    other = [[5, 4, 3], [2, 1], [40, 41, 42, 43]]
    second = ids_of(generate_ids(model, other, 30, GREEDY, compile=True, cache_len=80))
    assert model.blocks[0].attn.kv_cache is kept  # same buffers, already holding the first call's entries
    assert kept.k_cache.data_ptr() == buffer
    generate_ids(model, other, 30, GREEDY, cache_len=80)  # eager, the kept shape: uses them and leaves them
    assert model.blocks[0].attn.kv_cache is kept
    assert first == ids_of(generate_ids(model, PROMPTS, 30, GREEDY))
    assert second == ids_of(generate_ids(model, other, 30, GREEDY))  # compiled on CPU: explicit attention, same ids
    assert all(block.attn.kv_cache is None for block in model.blocks)  # another shape, then freed
    assert model.config.attn == "sdpa"
    generate_ids(model, PROMPTS, 30, GREEDY, compile=True, cache_len=80)
    assert model.blocks[0].attn.kv_cache is not None
    model.clear_caches()
    assert all(block.attn.kv_cache is None for block in model.blocks) and model.causal_mask is None


def test_generation_runs_in_eval_mode_and_restores_the_mode() -> None:
    model = make_model(dropout=0.5).train()
    first = ids_of(generate_ids(model, PROMPTS, 20, GREEDY))
    assert model.training  # restored
    assert ids_of(generate_ids(model, PROMPTS, 20, GREEDY, kv_cache=False)) == first  # no dropout noise


def test_kept_caches_go_with_their_model_and_never_to_another_shape() -> None:
    import gc
    import weakref

    a = make_model()
    a.setup_caches(1, 32)
    kept = weakref.ref(a.blocks[0].attn.kv_cache.k_cache)
    b = make_model(n_head=2, n_embd=32)  # another shape: never served a's buffers
    b.setup_caches(1, 32)
    assert b.blocks[0].attn.kv_cache.k_cache is not kept()
    assert b.blocks[0].attn.kv_cache.k_cache.shape[1] == b.config.n_kv_head
    del a
    gc.collect()
    assert kept() is None  # freed with the model that holds them


def test_compiled_step_past_the_recompile_limit_runs_eagerly(monkeypatch, caplog) -> None:
    def limit_hit(*args, **kwargs):
        raise torch._dynamo.exc.FailOnRecompileLimitHit("recompile limit")

    model = make_model()
    eager = ids_of(generate_ids(model, PROMPTS, 20, GREEDY))
    monkeypatch.setattr(core, "CompiledStep", lambda fn, model: limit_hit)
    with caplog.at_level(logging.WARNING):
        assert ids_of(generate_ids(model, PROMPTS, 20, GREEDY, compile=True)) == eager
    assert "recompile limit" in caplog.text


def test_sampling_defaults_are_written_once_in_conf_infer_yaml() -> None:
    """infer.py and generate() share one set of defaults: conf/infer.yaml's; the code repeats none of them."""
    import dataclasses
    import inspect

    from omegaconf import OmegaConf

    from llm.config import config_dir

    yaml = OmegaConf.load(config_dir() / "infer.yaml")
    defaults = generation_defaults()
    assert set(defaults) == set(SHARED_KEYS)
    for key in SHARED_KEYS:
        assert key in yaml, f"conf/infer.yaml lacks {key}"
        if key != "stop":
            assert defaults[key] == yaml[key]
    assert defaults["stop"] == list(yaml.stop)
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(SamplingParams))
    params = SamplingParams.defaults()
    assert {f.name: getattr(params, f.name) for f in dataclasses.fields(SamplingParams)} == {
        f.name: yaml[f.name] for f in dataclasses.fields(SamplingParams)
    }
    for fn in (generate, generate_ids):
        shared = [p for p in inspect.signature(fn).parameters.values() if p.name in SHARED_KEYS]
        assert shared
        for p in shared:  # None: conf/infer.yaml's value; or no default at all
            assert p.default is None or p.default is inspect.Parameter.empty, f"{fn.__name__}({p.name}={p.default!r})"
    # compile is the one key that differs: infer.py's auto is a CLI policy (compile on CUDA); a Python caller,
    # e.g. a training callback, compiles only when it asks to
    assert inspect.signature(generate).parameters["compile"].default is False


def test_generate_takes_conf_infer_yaml_defaults(tokenizer: Tokenizer) -> None:
    model = make_model(vocab_size=tokenizer.get_vocab_size())
    yaml = generation_defaults()
    implicit = generate(model, tokenizer, "def add", seed=5, stop_tokens=[])[0]
    explicit_values = {k: yaml[k] for k in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")}
    explicit = generate(model, tokenizer, "def add", yaml["max_new_tokens"], seed=5, stop_tokens=[], **explicit_values)[
        0
    ]
    assert implicit.token_ids == explicit.token_ids
    assert len(implicit.token_ids) == yaml["max_new_tokens"]
    # params replaces the defaults; a keyword changes one setting of it
    greedy = generate(model, tokenizer, "def add", 10, params=GREEDY, stop_tokens=[])[0]
    assert greedy.token_ids == generate_ids(model, [tokenizer.encode("def add").ids], 10, GREEDY)[0].token_ids
    hot = generate(model, tokenizer, "def add", 10, params=GREEDY, temperature=1.0, seed=5, stop_tokens=[])[0]
    assert hot.token_ids != greedy.token_ids


@pytest.mark.slow
def test_compiled_step_on_cpu_matches_eager_and_follows_changed_weights() -> None:
    """The real CPU compile (frozen weights, inductor's GEMM kernels, a dynamic cache length) gives the eager step's
    tokens across the cache lengths it reads; and again once the weights change in place between two compiled calls
    on the same kept caches, where a step compiled for the old weights would still pass torch's own guards."""
    model = make_model(n_kv_head=2, block_size=192)
    twin = copy.deepcopy(model)
    prompts = [[1, 2, 3, 4, 5], [7, 8]]
    eager = ids_of(generate_ids(twin, prompts, 70, GREEDY))  # reads 64 then 75 positions: two lengths
    assert ids_of(generate_ids(model, prompts, 70, GREEDY, compile=True)) == eager
    with torch.no_grad():
        for m in (model, twin):
            m.lm_head.weight.mul_(-1.0)  # tied with the embedding: every logit changes
    changed = ids_of(generate_ids(twin, prompts, 70, GREEDY))
    assert changed != eager
    assert ids_of(generate_ids(model, prompts, 70, GREEDY, compile=True)) == changed
    model.clear_caches()


def test_prefill_computes_the_output_layer_at_each_prompts_last_position_only() -> None:
    model = make_model()
    seen = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    try:
        generate_ids(model, PROMPTS, 3, GREEDY)
    finally:
        hook.remove()
    assert seen == [(3, 1, 64)] * 3  # prefill and two steps: one position per row, never (3, 11, 64)
    with torch.no_grad():
        idx = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
        full = model(idx)
        last = model(idx, logits_at=torch.tensor([3, 1]))
    torch.testing.assert_close(last[:, 0], full[[0, 1], [3, 1]])
