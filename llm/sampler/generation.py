"""Text generation from a trained GPT, in three steps: prepare the batch, prefill the caches with the prompts,
then decode one token per row per step.

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
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from tokenizers import Tokenizer

from llm.model import GPT
from llm.sampler.compiled import CompiledStep, step_length
from llm.sampler.params import SamplingParams, check_max_new_tokens, check_prompts, generation_defaults
from llm.sampler.processors import Sampler
from llm.sampler.streaming import TextStream
from llm.tokenizer import eod_id

log = logging.getLogger(__name__)

OnText = Callable[[int, str], None]  # (row, new text) as it becomes safe to show
# (tokens (B,), their positions (B, 1), step number) -> the next tokens (B,)
Step = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass
class Generation:
    """One prompt's result: the new text (prompt excluded) and why it ended."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop_token", "stop_string", "max_new_tokens" or "context"
    prompt_tokens: int  # after any truncation to the context


# ---------------------------------------------------------------------------------------------- prepare


@dataclass
class Batch:
    """The prompts of one call laid out on the device, with what each row may still produce."""

    idx: torch.Tensor  # (B, T0) prompt ids, right-padded with 0
    lengths: torch.Tensor  # (B,) prompt lengths
    prompt_lengths: list[int]  # the same, on the host
    budgets: list[int]  # new tokens row b may make: max_new_tokens, or fewer where the context fills first
    cache_len: int  # positions a cache holds: S
    counts: torch.Tensor | None  # (B, V) how often each token appears in each row, for the repetition penalty

    @property
    def steps(self) -> int:
        return max(self.budgets)


def fit_prompt(ids: list[int], block_size: int, max_new_tokens: int) -> list[int]:
    """The context rule for prompts: one that leaves no room for a new token keeps its end."""
    if len(ids) < block_size:
        return ids
    keep = max(block_size - max_new_tokens, block_size // 2)
    log.warning(
        "prompt of %d tokens does not fit the context of %d: keeping its last %d tokens", len(ids), block_size, keep
    )
    return ids[-keep:]


def prepare(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    count_tokens: bool = False,
    cache_len: int | None = None,
) -> Batch:
    """Check the prompts and max_new_tokens, fit each prompt to the context and pad them into one tensor.

    count_tokens: count each row's prompt tokens (padding left out) for the repetition penalty. cache_len:
    positions the cache holds (default just enough); a fixed value lets one compiled step serve every
    prompt length and max_new_tokens.
    """
    check_max_new_tokens(max_new_tokens)
    check_prompts(prompts)
    block = model.config.block_size
    fitted = [fit_prompt(list(p), block, max_new_tokens) for p in prompts]
    lengths = [len(p) for p in fitted]
    budgets = [min(max_new_tokens, block - n) for n in lengths]
    S = max(n + b for n, b in zip(lengths, budgets, strict=True))
    if cache_len is not None:
        S = max(S, min(cache_len, block))
    B, T0 = len(fitted), max(lengths)
    idx = torch.zeros(B, T0, dtype=torch.long)
    for r, p in enumerate(fitted):
        idx[r, : len(p)] = torch.tensor(p)
    device = model.lm_head.weight.device
    idx = idx.to(device)
    lengths_t = torch.tensor(lengths, device=device)
    counts = None
    if count_tokens:
        real = (torch.arange(T0, device=device) < lengths_t[:, None]).int()  # (B, T0): 0 on padding
        counts = torch.zeros(B, model.config.vocab_size, dtype=torch.int, device=device).scatter_add_(1, idx, real)
    return Batch(idx, lengths_t, lengths, budgets, S, counts)


def last_logits(logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, V) -> (B, V): each row's logits at its last prompt token."""
    rows = torch.arange(logits.size(0), device=logits.device)
    return logits[rows, lengths - 1]


# ---------------------------------------------------------------------------------------------- prefill, decode


def prefill(model: GPT, batch: Batch, sampler: Sampler, attn_impl: str | None = None) -> torch.Tensor:
    """Run the prompts through the model at positions 0..T0-1, filling its caches; each row's first new token (B,)."""
    T0 = batch.idx.size(1)
    positions = torch.arange(T0, device=batch.idx.device)
    logits = model(batch.idx, positions, model.causal_mask[None, None, :T0, :T0], attn_impl)  # over T0 keys, not S
    return sampler(last_logits(logits, batch.lengths), batch.counts)


def decode_one_token(
    model: GPT,
    x: torch.Tensor,
    input_pos: torch.Tensor,
    mask: torch.Tensor,
    counts: torch.Tensor | None,
    sampler: Sampler,
    attn_impl: str | None = None,
) -> torch.Tensor:
    """One token per row, x (B, 1) at input_pos (B, 1) -> next ids (B,).

    mask (B, 1, 1, S') from model.cache_mask: attention reads the first S' cache positions (step_length: the
    filled ones, or all S for a step replayed as a CUDA graph, whose shapes must not change)."""
    logits = model(x, input_pos, mask, attn_impl)[:, -1]  # (B, V)
    return sampler(logits, counts)


def compiled_decode(model: GPT) -> Callable:
    """decode_one_token compiled as one whole graph for model's device and its weights as they are now
    (llm.sampler.compiled: CUDA graphs on a GPU; frozen weights, inductor's matrix kernels and a dynamic cache
    length on a CPU).

    A new wrapper per call costs nothing after the first compile: torch.compile keeps its code, and wrappers of
    the same settings and weights share it.
    """
    return CompiledStep(decode_one_token, model)


class CachedStep:
    """decode_one_token as a Step, compiled or not; past torch's recompile limit it runs eagerly."""

    def __init__(self, model: GPT, sampler: Sampler, batch: Batch, compile: bool, attn_impl: str | None):
        self.model = model
        self.sampler = sampler
        self.counts = batch.counts
        self.longest = max(batch.prompt_lengths)  # step t writes the longest row's position longest + t - 1
        self.cache_len = batch.cache_len
        self.attn_impl = attn_impl
        self.step = compiled_decode(model) if compile else decode_one_token  # one per call: weights as they are now
        # with fullgraph=True, torch's recompile limit raises instead of falling back to eager
        self.recompile_limit = (torch._dynamo.exc.FailOnRecompileLimitHit,) if compile else ()

    def __call__(self, token: torch.Tensor, pos: torch.Tensor, t: int) -> torch.Tensor:
        # Attention reads the filled prefix of the cache; a step replayed as a CUDA graph, the whole cache.
        mask = self.model.cache_mask(pos, step_length(self.longest + t, self.cache_len, self.step))  # (B, 1, 1, S')
        try:
            out = self.step(self.model, token[:, None], pos, mask, self.counts, self.sampler, self.attn_impl)
        except self.recompile_limit:  # raised while compiling, before the step has run: nothing to undo
            log.warning(
                "the compiled decode step met torch's recompile limit (one compile per batch size, dtype, "
                "sampling settings and weights): this call runs eagerly."
            )
            self.step = decode_one_token
            mask = self.model.cache_mask(pos, step_length(self.longest + t, self.cache_len, self.step))
            out = self.step(self.model, token[:, None], pos, mask, self.counts, self.sampler, self.attn_impl)
        return out.clone()  # a CUDA graph's output is overwritten by its next replay


def decode(batch: Batch, first: torch.Tensor, step: Step, rows: Rows, sync_every: int) -> None:
    """From each row's first new token (B,), `step` gives the next one, each row at its own position.

    The host reads the new tokens every sync_every steps (one sync) and the loop ends once every row is
    done; tokens after a row's end are computed and thrown away.
    """
    counts = batch.counts
    out = torch.empty(len(batch.budgets), batch.steps, dtype=torch.long, device=batch.idx.device)
    out[:, 0] = first
    token = first
    pos = batch.lengths[:, None].clone()  # (B, 1): where the newest token goes
    written = 1
    for t in range(1, batch.steps):
        if t % sync_every == 0 and rows.take(out, t):
            break
        if counts is not None:
            counts.scatter_add_(1, token[:, None], torch.ones_like(counts[:, :1]))
        token = step(token, pos, t)
        out[:, t] = token
        written = t + 1
        pos = (pos + 1).clamp_(max=batch.cache_len - 1)  # rows already done may run past their end: ignored
    rows.take(out, written)


def run_with_cache(model: GPT, batch: Batch, sampler: Sampler, rows: Rows, sync_every: int, compile: bool) -> None:
    """Prefill the model's caches with the prompts, then decode each token from them.

    A compiled step keeps the caches on the model for the next call (same buffers: no recompile, and a CUDA graph
    replays without re-recording) until model.clear_caches(); an eager call frees the caches it made, and leaves
    kept ones of its shape as they are, so that eager and compiled calls may alternate.
    """
    # Compiled on CPU, attention written out lets the compiler fuse it with its neighbours: 1.4x the speed of
    # SDPA's CPU kernel for one query in bfloat16 (docs/benchmarks.md). Elsewhere the model's own choice.
    attn_impl = "explicit" if compile and batch.idx.device.type == "cpu" else None
    kept = model.setup_caches(len(batch.budgets), batch.cache_len)
    try:
        first = prefill(model, batch, sampler, attn_impl)
        decode(batch, first, CachedStep(model, sampler, batch, compile, attn_impl), rows, sync_every)
    finally:
        if not compile and not kept:
            model.clear_caches()


def run_without_cache(model: GPT, batch: Batch, sampler: Sampler, rows: Rows, sync_every: int) -> None:
    """The comparison path: every step runs the whole sequence so far through the model, no cache.

    Rows end at different lengths; the causal mask keeps each row's later padding out of its logits.
    """
    B, T0 = batch.idx.shape
    seq = torch.zeros(B, batch.cache_len, dtype=torch.long, device=batch.idx.device)
    seq[:, :T0] = batch.idx
    row = torch.arange(B, device=seq.device)

    def step(token: torch.Tensor, pos: torch.Tensor, t: int) -> torch.Tensor:
        seq[row, pos[:, 0]] = token
        logits = model(seq[:, : min(T0 + t, batch.cache_len)])  # the longest row's tokens so far
        return sampler(logits[row, pos[:, 0]], batch.counts)

    first = sampler(last_logits(model(batch.idx), batch.lengths), batch.counts)
    decode(batch, first, step, rows, sync_every)


# ---------------------------------------------------------------------------------------------- host side


@dataclass
class _Row:
    """Host-side bookkeeping of one row: accepted tokens, text, whether it is done."""

    budget: int  # new tokens this row may produce before the context is full
    limited_by_context: bool
    stream: TextStream | None
    ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


class Rows:
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
        self.rows = []
        for budget in budgets:
            stream = TextStream(tokenizer, stop_strings) if tokenizer is not None else None
            self.rows.append(_Row(budget, budget < max_new_tokens, stream))
        self.stop_tokens = stop_tokens
        self.on_text = on_text
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
                    r,
                    len(row.ids),
                    block_size,
                    n_prompt,
                )
            results.append(Generation(text, row.ids, row.finish_reason or "max_new_tokens", n_prompt))
        return results


@contextmanager
def _eval_mode(model: GPT) -> Iterator[None]:
    """No dropout while generating; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """A seed applies inside a fork of the random state, so the caller's stream is left as it was; without one,
    the draw continues the global stream and each call gives a fresh sample."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------------------------------------- entry points


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
    kv_cache: bool | None = None,
    compile: bool = False,
    sync_every: int = 16,
    cache_len: int | None = None,
) -> list[Generation]:
    """Continue each prompt (token ids); the batch runs together. Text fields are filled when tokenizer is given.

    params and kv_cache default to conf/infer.yaml's. kv_cache=False recomputes the whole sequence every step
    (for comparison). compile=True compiles the decode step and keeps the caches on the model between calls.
    The device is read every sync_every tokens (every token when streaming or stopping on strings) to check
    what has stopped. cache_len: positions the cache holds (default just enough); a fixed value lets one
    compiled step serve every prompt length and max_new_tokens (each batch size and set of sampling settings
    compiles its own).
    """
    if params is None:
        params = SamplingParams.defaults()
    if kv_cache is None:
        kv_cache = generation_defaults()["kv_cache"]
    sampler = Sampler(params, model.config.vocab_size)
    batch = prepare(model, prompts, max_new_tokens, sampler.needs_counts, cache_len)
    rows = Rows(batch.budgets, max_new_tokens, set(stop_tokens), tokenizer, stop_strings, on_text)
    if on_text is not None or stop_strings:
        sync_every = 1
    with _seeded(params.seed, batch.idx.device), _eval_mode(model):
        if kv_cache:
            run_with_cache(model, batch, sampler, rows, sync_every, compile)
        else:
            run_without_cache(model, batch, sampler, rows, sync_every)
    return rows.finish(batch.prompt_lengths, model.config.block_size)


def generate(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: str | Sequence[str],
    max_new_tokens: int | None = None,
    *,
    params: SamplingParams | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    seed: int | None = None,
    stop: str | Sequence[str] | None = None,
    stop_tokens: Sequence[int] | None = None,
    kv_cache: bool | None = None,
    compile: bool = False,
    on_text: OnText | None = None,
    cache_len: int | None = None,
) -> list[Generation]:
    """Continue one prompt or a batch of prompts; one Generation per prompt, in order.

    A setting left at None takes conf/infer.yaml's value, as `python infer.py` does (docs/configuration.md);
    params, when given, replaces the sampling ones, and the keywords given change it. temperature 0 is greedy.
    stop: a string or strings that end a row (left out of its text). stop_tokens: ids that end a row; default
    the tokenizer's end-of-document token. on_text(row, text) streams. compile, cache_len: see generate_ids.
    """
    settings = generation_defaults()
    if params is not None:
        settings.update(asdict(params))
    given = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "min_p": min_p,
        "repetition_penalty": repetition_penalty,
        "seed": seed,
        "stop": stop,
        "kv_cache": kv_cache,
    }
    settings.update({key: value for key, value in given.items() if value is not None})
    stop = settings["stop"]
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(prompts, str):
        prompts = [prompts]
    if stop_tokens is None:
        stop_tokens = [eod_id(tokenizer)]
    return generate_ids(
        model,
        [tokenizer.encode(p).ids for p in prompts],
        settings["max_new_tokens"],
        SamplingParams.from_config(settings),
        stop_tokens=stop_tokens,
        tokenizer=tokenizer,
        stop_strings=list(stop),
        on_text=on_text,
        kv_cache=settings["kv_cache"],
        compile=compile,
        cache_len=cache_len,
    )
