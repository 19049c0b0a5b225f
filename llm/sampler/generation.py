"""Text generation from a trained GPT: prefill the prompts, then decode one token at a time.

Prompts of different lengths share a batch right-padded: row i's prompt sits at positions
0..L_i-1 and its new tokens at L_i, L_i+1, ... (per-row positions), so every row sees exactly what it
would see alone. The causal mask hides the padding from the prompts, and a row's own new tokens
overwrite its padding in the cache before anything may attend to them.

Context rule: a prompt of block_size tokens or more keeps its last max(block_size - max_new_tokens,
block_size // 2) tokens, with a warning. Generation stops when a row reaches block_size tokens, with
a warning and finish_reason "context"; the window never slides.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer

from llm.model import GPT
from llm.sampler.kv_cache import kv_caches
from llm.sampler.processors import Sampler, SamplingParams
from llm.sampler.streaming import TextStream
from llm.tokenizer import eod_id

log = logging.getLogger(__name__)

OnText = Callable[[int, str], None]  # (row, new text) as it becomes safe to show
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # weights and cache


@dataclass
class Generation:
    """One prompt's result: the new text (prompt excluded) and why it ended."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop_token", "stop_string", "max_new_tokens" or "context"
    prompt_tokens: int  # after any truncation to the context


def prefill(model: GPT, idx: torch.Tensor, input_pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Run the prompts (B, T) at positions (T,) through the model, filling the caches; logits (B, T, V)."""
    return model(idx, input_pos, mask)


def decode_one_token(
    model: GPT,
    x: torch.Tensor,
    input_pos: torch.Tensor,
    causal_mask: torch.Tensor,
    counts: torch.Tensor | None,
    sampler: Sampler,
) -> torch.Tensor:
    """One token per row, x (B, 1) at input_pos (B, 1) -> next ids (B,). Static shapes: compiled on CUDA."""
    mask = causal_mask[input_pos][:, None]  # (B, 1, 1, S): row b sees cache positions <= its own
    logits = model(x, input_pos, mask)[:, -1]  # (B, V)
    return sampler(logits, counts)


_compiled_decode: Callable | None = None


def compiled_decode() -> Callable:
    """decode_one_token compiled once per process: CUDA graphs on GPU (reduce-overhead), whole graph."""
    global _compiled_decode
    if _compiled_decode is None:
        mode = "reduce-overhead" if torch.cuda.is_available() else "default"
        _compiled_decode = torch.compile(decode_one_token, mode=mode, fullgraph=True, dynamic=False)
    return _compiled_decode


@dataclass
class _Row:
    """Host-side bookkeeping of one row: accepted tokens, text, whether it is done."""

    budget: int  # new tokens this row may produce before the context is full
    limited_by_context: bool
    stream: TextStream | None
    ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


class _Rows:
    """Takes each row's new tokens from the device, applies stop tokens, stop strings and budgets."""

    def __init__(
        self,
        budgets: list[int],
        max_new_tokens: int,
        stop_tokens: set[int],
        tokenizer: Tokenizer | None,
        stop_strings: Sequence[str],
        on_text: OnText | None,
    ) -> None:
        self.rows = [
            _Row(b, b < max_new_tokens, TextStream(tokenizer, stop_strings) if tokenizer is not None else None)
            for b in budgets
        ]
        self.stop_tokens, self.on_text = stop_tokens, on_text
        self.seen = 0  # columns of the output already taken

    def take(self, out: torch.Tensor, upto: int) -> bool:
        """Read out[:, seen:upto] (one host sync); True when every row is done."""
        new = out[:, self.seen : upto].tolist()
        self.seen = upto
        for r, (row, tokens) in enumerate(zip(self.rows, new, strict=True)):
            for token in tokens:
                if row.finish_reason is not None:
                    break
                if token in self.stop_tokens:
                    row.finish_reason = "stop_token"
                    break
                row.ids.append(token)
                if row.stream is not None:
                    chunk = row.stream.push(token)
                    if chunk and self.on_text is not None:
                        self.on_text(r, chunk)
                    if row.stream.stopped:
                        row.finish_reason = "stop_string"
                if row.finish_reason is None and len(row.ids) >= row.budget:
                    row.finish_reason = "context" if row.limited_by_context else "max_new_tokens"
        return all(row.finish_reason is not None for row in self.rows)

    def finish(self, prompt_lengths: list[int], block_size: int) -> list[Generation]:
        results = []
        for r, (row, n_prompt) in enumerate(zip(self.rows, prompt_lengths, strict=True)):
            text = ""
            if row.stream is not None:
                tail = row.stream.finish()
                if tail and self.on_text is not None:
                    self.on_text(r, tail)
                text = row.stream.text
            if row.finish_reason == "context":
                log.warning(
                    "row %d stopped after %d new tokens: the context of %d tokens is full (prompt %d tokens)",
                    r, len(row.ids), block_size, n_prompt,
                )  # fmt: skip
            results.append(Generation(text, row.ids, row.finish_reason or "max_new_tokens", n_prompt))
        return results


def fit_prompt(ids: list[int], block_size: int, max_new_tokens: int) -> list[int]:
    """The context rule for prompts: one that leaves no room for a new token keeps its end."""
    if len(ids) < block_size:
        return ids
    keep = max(block_size - max_new_tokens, block_size // 2)
    log.warning(
        "prompt of %d tokens does not fit the context of %d: keeping its last %d tokens", len(ids), block_size, keep
    )
    return ids[-keep:]


@torch.inference_mode()
def generate_ids(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    params: SamplingParams | None = None,
    *,
    stop_tokens: Sequence[int] = (),
    tokenizer: Tokenizer | None = None,
    stop_strings: Sequence[str] = (),
    on_text: OnText | None = None,
    kv_cache: bool = True,
    compile: bool = False,
    sync_every: int = 16,
    cache_len: int | None = None,
) -> list[Generation]:
    """Continue each prompt (token ids); the batch runs together. Text fields are filled when tokenizer is given.

    kv_cache=False recomputes the whole sequence every step (for comparison). compile=True compiles the
    decode step. The device is read every sync_every tokens (every token when streaming or stopping on
    strings) to check what has stopped; tokens after a stop are computed and thrown away. cache_len:
    positions the cache holds (default just enough); a fixed value lets one compiled step serve every
    prompt length and max_new_tokens (each batch size and set of sampling settings compiles its own).
    """
    params = params or SamplingParams()
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("a prompt is empty: every prompt needs at least one token")
    block = model.config.block_size
    prompts = [fit_prompt(list(p), block, max_new_tokens) for p in prompts]
    device = model.lm_head.weight.device
    B, lengths = len(prompts), [len(p) for p in prompts]
    budgets = [min(max_new_tokens, block - n) for n in lengths]
    T0, S, steps = max(lengths), max(n + b for n, b in zip(lengths, budgets, strict=True)), max(budgets)
    if cache_len is not None:
        S = max(S, min(cache_len, block))

    idx = torch.zeros(B, T0, dtype=torch.long)
    for r, p in enumerate(prompts):
        idx[r, : len(p)] = torch.tensor(p)
    idx, lengths_t = idx.to(device), torch.tensor(lengths, device=device)
    rows_t = torch.arange(B, device=device)

    sampler = Sampler(params, model.config.vocab_size)
    counts = None
    if sampler.needs_counts:  # how often each token appears in each row, padding left out
        real = (torch.arange(T0, device=device) < lengths_t[:, None]).int()
        counts = torch.zeros(B, model.config.vocab_size, dtype=torch.int, device=device).scatter_add_(1, idx, real)

    host = _Rows(budgets, max_new_tokens, set(stop_tokens), tokenizer, stop_strings, on_text)
    if on_text is not None or stop_strings:
        sync_every = 1
    out = torch.empty(B, steps, dtype=torch.long, device=device)
    step = compiled_decode() if compile else decode_one_token
    # with fullgraph=True, torch's recompile limit raises instead of falling back to eager
    recompile_limit = (torch._dynamo.exc.FailOnRecompileLimitHit,) if compile else ()

    # A seed is applied inside a fork of the random state, so the caller's stream is left as it was; without
    # one, the draw continues the global stream and each call gives a fresh sample.
    rng = nullcontext()
    if params.seed is not None:
        rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type)
    # Compiled on CPU, attention written out lets the compiler fuse it with its neighbours: 1.4x the speed of
    # SDPA's CPU kernel for one query in bfloat16 (docs/benchmarks.md). Elsewhere the model's own choice.
    attn = "explicit" if compile and device.type == "cpu" else None
    caches = kv_caches(model, B, S, reuse=compile, attn=attn) if kv_cache else nullcontext(None)
    with rng, caches as causal, _eval_mode(model):
        if params.seed is not None:
            torch.manual_seed(params.seed)
        if kv_cache:
            logits = prefill(model, idx, torch.arange(T0, device=device), causal[None, None, :T0])
        else:
            logits = model(idx)
        token = sampler(logits[rows_t, lengths_t - 1], counts)  # (B,): each row's first new token
        out[:, 0] = token
        buf = None if kv_cache else torch.zeros(B, S, dtype=torch.long, device=device)
        if buf is not None:
            buf[:, :T0] = idx
        pos = lengths_t[:, None].clone()  # (B, 1): where the newest token goes
        written = 1
        for t in range(1, steps):
            if t % sync_every == 0 and host.take(out, t):
                break
            if counts is not None:
                counts.scatter_add_(1, token[:, None], torch.ones_like(counts[:, :1]))
            if kv_cache:
                try:
                    token = step(model, token[:, None], pos, causal, counts, sampler).clone()
                except recompile_limit:  # raised while compiling, before the step has run: nothing to undo
                    log.warning(
                        "the compiled decode step met torch's recompile limit (one compile per batch size, cache "
                        "length and sampling settings): this call runs eagerly. A fixed cache_len helps."
                    )
                    step = decode_one_token
                    token = step(model, token[:, None], pos, causal, counts, sampler).clone()
            else:  # the whole sequence again: rows end at different lengths, the causal mask hides the padding
                buf[rows_t, pos[:, 0]] = token
                logits = model(buf[:, : min(T0 + t, S)])
                token = sampler(logits[rows_t, pos[:, 0]], counts)
            out[:, t] = token
            written = t + 1
            pos = (pos + 1).clamp_(max=S - 1)  # rows already done may run past their end: their output is ignored
        host.take(out, written)
    return host.finish(lengths, block)


@contextmanager
def _eval_mode(model: GPT) -> Iterator[None]:
    """No dropout while generating; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def generate(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: str | Sequence[str],
    max_new_tokens: int = 200,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    stop: str | Sequence[str] = (),
    stop_tokens: Sequence[int] | None = None,
    kv_cache: bool = True,
    compile: bool = False,
    on_text: OnText | None = None,
    cache_len: int | None = None,
) -> list[Generation]:
    """Continue one prompt or a batch of prompts; one Generation per prompt, in order.

    temperature 0 is greedy. stop: a string or strings that end a row (left out of its text).
    stop_tokens: ids that end a row; default the tokenizer's end-of-document token. on_text(row, text)
    streams.
    """
    params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty, seed)
    stop = [stop] if isinstance(stop, str) else list(stop)
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise ValueError("no prompts given")
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {i} is empty: give some text to continue, e.g. prompt='def '")
    stop_tokens = [eod_id(tokenizer)] if stop_tokens is None else list(stop_tokens)
    ids = [tokenizer.encode(p).ids for p in prompts]
    return generate_ids(
        model,
        ids,
        max_new_tokens,
        params,
        stop_tokens=stop_tokens,
        tokenizer=tokenizer,
        stop_strings=stop,
        on_text=on_text,
        kv_cache=kv_cache,
        compile=compile,
        cache_len=cache_len,
    )
