"""Text generation from a trained GPT for a fixed batch of prompts: fit them to the context, then run the decode
core (llm.sampler.core) over them: prefill every row, then one token per row per step.

Prompts of different lengths share a batch right-padded: row i's prompt sits at positions
0..L_i-1 and its new tokens at L_i, L_i+1, ... (per-row positions), so every row sees exactly what it
would see alone. The causal mask hides the padding from the prompts, and a row's own new tokens
overwrite its padding in the cache before anything may attend to them.

Context rule: a prompt of block_size tokens or more keeps its last max(block_size - max_new_tokens,
block_size // 2) tokens, with a warning. Generation stops when a row reaches block_size tokens, with
a warning and finish_reason "length"; the window never slides.

Seeds: row r of a call seeded s draws with seed s + r (as the server's request of several prompts or choices
does), from a generator of its own; a call without a seed takes each row's seed from torch's global stream, so
torch.manual_seed before it makes it repeatable and a seeded call leaves that stream as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from tokenizers import Tokenizer

from llm.chat_template import ChatTokens
from llm.model import GPT
from llm.sampler.core import DecodeCore, RowOutput
from llm.sampler.params import SamplingParams, check_max_new_tokens, check_prompts, generation_defaults
from llm.tokenizer import eod_id

log = logging.getLogger(__name__)

OnText = Callable[[int, str], None]  # (row, new text) as it becomes safe to show


@dataclass
class Generation:
    """One prompt's result: the new text (prompt excluded) and why it ended (llm.sampler.core.FINISH_REASONS)."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (a stop token or string) or "length" (max_new_tokens, or the context is full)
    prompt_tokens: int  # after any truncation to the context


# ---------------------------------------------------------------------------------------------- prepare


@dataclass
class Batch:
    """The prompts of one call fitted to the context, with what each row may still produce."""

    prompts: list[list[int]]  # each fitted to the context
    budgets: list[int]  # new tokens row b may make: max_new_tokens, or fewer where the context fills first
    cache_len: int  # positions a cache holds: S

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


def prepare(model: GPT, prompts: Sequence[Sequence[int]], max_new_tokens: int, cache_len: int | None = None) -> Batch:
    """Check the prompts and max_new_tokens and fit each prompt to the context.

    cache_len: positions the cache holds (default just enough); a fixed value lets one compiled step serve every
    prompt length and max_new_tokens.
    """
    check_max_new_tokens(max_new_tokens)
    check_prompts(prompts)
    block = model.config.block_size
    fitted = [fit_prompt(list(p), block, max_new_tokens) for p in prompts]
    budgets = [min(max_new_tokens, block - len(p)) for p in fitted]
    S = max(len(p) + b for p, b in zip(fitted, budgets, strict=True))
    if cache_len is not None:
        S = max(S, min(cache_len, block))
    return Batch(fitted, budgets, S)


def row_params(params: SamplingParams, rows: int) -> list[SamplingParams]:
    """Each row's settings: seed s + r for row r, or a seed from torch's global stream when params has none (greedy
    rows draw nothing: the stream is left as it was)."""
    if params.greedy:
        return [params] * rows
    if params.seed is None:  # from the global CPU stream: torch.manual_seed repeats them
        return [replace(params, seed=seed) for seed in torch.randint(0, 2**62, (rows,)).tolist()]
    return [params.for_row(r) for r in range(rows)]


# ---------------------------------------------------------------------------------------------- decode


def run(core: DecodeCore, batch: Batch, params: list[SamplingParams], rows: Rows, sync_every: int) -> None:
    """Prefill every row, then decode until every row is done. The host reads the new tokens every sync_every
    steps (one sync); tokens after a row's end are computed and thrown away."""
    B = len(batch.prompts)
    out = torch.empty(B, batch.steps, dtype=torch.long, device=core.device)
    out[:, 0] = core.prefill(range(B), batch.prompts, params).tokens
    written = 1
    for t in range(1, batch.steps):
        if t % sync_every == 0 and rows.take(out, t):
            break
        out[:, t] = core.step().tokens
        written = t + 1
    rows.take(out, written)


class Rows:
    """Each row's RowOutput, fed from the device's output columns."""

    def __init__(self, outputs: list[RowOutput], on_text: OnText | None) -> None:
        self.outputs = outputs
        self.on_text = on_text
        self.seen = 0  # columns of the output already taken

    def take(self, out: torch.Tensor, upto: int) -> bool:
        """Read out[:, seen:upto] (one host sync); True when every row is done."""
        new = out[:, self.seen : upto].tolist()
        self.seen = upto
        for r, (row, tokens) in enumerate(zip(self.outputs, new, strict=True)):
            for token in tokens:
                if row.finish_reason is not None:
                    break
                chunk = row.accept(token)
                if chunk and self.on_text is not None:
                    self.on_text(r, chunk)
        return all(row.finish_reason is not None for row in self.outputs)

    def finish(self, batch: Batch, max_new_tokens: int, block_size: int) -> list[Generation]:
        results = []
        for r, (row, prompt, budget) in enumerate(zip(self.outputs, batch.prompts, batch.budgets, strict=True)):
            tail = row.end("length")
            if tail and self.on_text is not None:
                self.on_text(r, tail)
            if row.finish_reason == "length" and budget < max_new_tokens:
                log.warning(
                    "row %d stopped after %d new tokens: the context of %d tokens is full (prompt %d tokens)",
                    r,
                    len(row.ids),
                    block_size,
                    len(prompt),
                )
            results.append(Generation(row.text, row.ids, row.finish_reason, len(prompt)))
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
    (for comparison). compile=True compiles the decode step and keeps the caches on the model between calls
    (until model.clear_caches()); an eager call frees the caches it made and leaves kept ones as they are.
    The device is read every sync_every tokens (every token when streaming or stopping on strings) to check
    what has stopped. cache_len: positions the cache holds (default just enough); a fixed value lets one
    compiled step serve every prompt length and max_new_tokens (each batch size compiles its own).
    """
    if params is None:
        params = SamplingParams.defaults()
    if kv_cache is None:
        kv_cache = generation_defaults()["kv_cache"]
    batch = prepare(model, prompts, max_new_tokens, cache_len)
    outputs = [RowOutput.make(b, stop_tokens, tokenizer, stop_strings) for b in batch.budgets]
    rows = Rows(outputs, on_text)
    if on_text is not None or stop_strings:
        sync_every = 1
    settings = row_params(params, len(batch.prompts))
    with _eval_mode(model):
        core = DecodeCore(model, len(batch.prompts), batch.cache_len, compile=compile, kv_cache=kv_cache)
        try:
            run(core, batch, settings, rows, sync_every)
        finally:
            core.close()
    return rows.finish(batch, max_new_tokens, model.config.block_size)


def generate(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: str | Sequence[str] | Sequence[Sequence[Mapping[str, str]]],
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
    chat: ChatTokens | None = None,
) -> list[Generation]:
    """Continue one prompt or a batch of prompts; one Generation per prompt, in order.

    chat (a model's chat template with its tokenizer, llm/chat_template.py): each prompt is a user's message, or a
    conversation (a list of {role, content}), and the reply ends with the assistant's turn (finish_reason "stop").

    A setting left at None takes conf/infer.yaml's value, as `python infer.py` does (docs/configuration.md);
    params, when given, replaces the sampling ones, and the keywords given change it. temperature 0 is greedy.
    stop: a string or strings that end a row (left out of its text). stop_tokens: ids that end a row; default
    the tokenizer's end-of-document token. on_text(row, text) streams. compile, cache_len: see generate_ids.
    """
    defaults = generation_defaults()  # conf/infer.yaml, read once per process
    given = {
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "min_p": min_p,
        "repetition_penalty": repetition_penalty,
        "seed": seed,
    }
    params = replace(
        params or SamplingParams.from_config(defaults), **{k: v for k, v in given.items() if v is not None}
    )
    settings = {"max_new_tokens": max_new_tokens, "stop": stop, "kv_cache": kv_cache}
    settings = {key: defaults[key] if value is None else value for key, value in settings.items()}
    stop = settings["stop"]
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], Mapping)):
        prompts = [prompts]
    if stop_tokens is None:
        stop_tokens = [eod_id(tokenizer), *(chat.end_ids if chat is not None else ())]
    if chat is not None:
        conversations = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
        ids = [chat.prompt_ids(c) for c in conversations]
        stop = [*stop, *chat.template.stop_strings]
    else:
        ids = [tokenizer.encode(p).ids for p in prompts]
    return generate_ids(
        model,
        ids,
        settings["max_new_tokens"],
        params,
        stop_tokens=stop_tokens,
        tokenizer=tokenizer,
        stop_strings=list(stop),
        on_text=on_text,
        kv_cache=settings["kv_cache"],
        compile=compile,
        cache_len=cache_len,
    )
