"""The decode core: the one place inference runs the model and samples. `generate()` runs it over a fixed batch;
the server's engine admits, cancels and streams over it. It knows token ids only: text is the callers' edge.

The model's KV caches have `rows` rows of `cache_len` positions. prefill(rows, prompts, settings) runs prompts into
given rows (the others keep what they hold) and samples each one's first token; step() decodes one token for every
row, each at its own position; release(rows) frees rows. Each row has its own sampling settings and its own random
generator, so a seeded row gives the same tokens whichever rows share the batch and whenever it joined.

One set of finish reasons serves every caller (FINISH_REASONS). RowOutput is one row's host side: it accepts
tokens, applies stop tokens, stop strings and the row's budget, and releases text that is safe to show.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer

from llm.model import GPT
from llm.sampler.compiled import CompiledStep, step_length
from llm.sampler.params import SamplingParams
from llm.sampler.processors import RowSettings, choose
from llm.sampler.streaming import TextStream

log = logging.getLogger(__name__)

_COMPILED: set[tuple] = set()  # the compiled steps this process has made: (weights key, device, rows, S, whole)

FINISH_REASONS = {
    "stop": "a stop token (end of document) or a stop string",
    "length": "max_new_tokens reached, or the context is full",
    "timeout": "the request took longer than its time limit (server)",
    "cancelled": "the caller went away (server)",
    "error": "the row could not run (server): its error says why",
}


def fresh_seed() -> int:
    """A seed nobody chose: for a row that asked for none."""
    return secrets.randbits(63)


@dataclass
class TokenLogprob:
    """A generated token's log-probability under the model (before any sampling control) and the top choices."""

    token: int
    logprob: float
    top: list[tuple[int, float]]  # (token, logprob), most likely first


@dataclass
class Draw:
    """What a prefill or step gives for its rows: tokens (b,), and log-probabilities when asked for."""

    tokens: torch.Tensor
    logprob: torch.Tensor | None = None  # (b,) the chosen tokens'
    top_logprob: torch.Tensor | None = None  # (b, k)
    top_ids: torch.Tensor | None = None  # (b, k)

    def logprobs(self, i: int) -> TokenLogprob | None:
        """Row i's, on the host (a sync): for callers that asked."""
        if self.logprob is None:
            return None
        top = list(zip(self.top_ids[i].tolist(), self.top_logprob[i].tolist(), strict=True))
        return TokenLogprob(int(self.tokens[i]), float(self.logprob[i]), top)


def decode_logits(
    model: GPT, tokens: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, attn_impl: str | None = None
) -> torch.Tensor:
    """Every row's next logits (B, V): tokens (B, 1) at positions pos (B, 1), each row over its own cache.

    mask (B, 1, 1, S') from model.cache_mask: row b sees its positions <= pos[b] among the first S'. This is the
    part of a step that is compiled (llm.sampler.compiled); sampling runs after it, with each row's settings."""
    return model(tokens, pos, mask, attn_impl)[:, -1]


class DecodeCore:
    """The model's caches as `rows` slots, and one prefill and one decode step over them, with per-row sampling.

    kv_cache=False recomputes each row's whole sequence every step instead (the comparison path). compile=True
    compiles the step for the model's device and weights as they are now (make a new core after changing them).
    """

    def __init__(
        self,
        model: GPT,
        rows: int,
        cache_len: int,
        *,
        compile: bool = False,
        kv_cache: bool = True,
        attn_impl: str | None = None,
    ) -> None:
        self.model = model
        self.rows = rows
        self.cache_len = cache_len
        self.kv_cache = kv_cache
        self.vocab_size = model.config.vocab_size
        self.device = model.lm_head.weight.device
        # Compiled on CPU, attention written out lets the compiler fuse it with its neighbours: 1.4x the speed of
        # SDPA's CPU kernel for one query in bfloat16 (docs/benchmarks.md). Elsewhere the model's own choice.
        self.attn_impl = attn_impl or ("explicit" if compile and self.device.type == "cpu" else None)
        self.kept = model.setup_caches(rows, cache_len) if kv_cache else False  # caches of this shape were there
        self.forward = CompiledStep(decode_logits, model) if compile and kv_cache else decode_logits
        self.compiled = compile and kv_cache
        self.settings = RowSettings(rows, self.device)
        self.generators: list[torch.Generator | None] = [None] * rows
        self.lengths = [0] * rows  # positions filled in each row (host)
        self.active: set[int] = set()
        self.tokens = torch.zeros(rows, 1, dtype=torch.long, device=self.device)  # (B, 1) the token to feed
        self.pos = torch.zeros(rows, 1, dtype=torch.long, device=self.device)  # (B, 1) where it goes
        self.race = torch.ones(rows, self.vocab_size, device=self.device)  # (B, V) each row's Exp(1) draws
        self.counts: torch.Tensor | None = None  # (B, V) tokens seen per row, once a row asks for a penalty
        self.seq = None if kv_cache else torch.zeros(rows, cache_len, dtype=torch.long, device=self.device)
        self.steps = 0

    # ------------------------------------------------------------------------------------------ rows

    @torch.inference_mode()
    def prefill(
        self,
        rows: Sequence[int],
        prompts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
        logprobs: int = -1,
    ) -> Draw:
        """Run prompts (token ids, each shorter than the cache) into the given rows and sample their first tokens.

        Each row's settings apply from here on; a seed of None draws a fresh one. logprobs k >= 0 also returns the
        chosen tokens' log-probabilities and the k most likely per row; -1: none."""
        rows = list(rows)
        lengths = [len(p) for p in prompts]
        if not rows or len(prompts) != len(rows) or len(params) != len(rows):
            raise ValueError("prefill needs one prompt and one SamplingParams per row")
        if min(lengths) < 1 or max(lengths) >= self.cache_len:
            raise ValueError(f"prompt lengths {lengths} must be in [1, {self.cache_len - 1}]")
        self.settings.set(rows, params)
        index = torch.tensor(rows, device=self.device)
        for row, p, n in zip(rows, params, lengths, strict=True):
            seed = None if p.greedy else fresh_seed() if p.seed is None else p.seed
            self.generators[row] = None if seed is None else torch.Generator(self.device).manual_seed(seed)
            self.lengths[row] = n
            self.active.add(row)
        T = max(lengths)
        idx = torch.zeros(len(rows), T, dtype=torch.long)
        for r, prompt in enumerate(prompts):
            idx[r, : len(prompt)] = torch.as_tensor(prompt)
        idx = idx.to(self.device)
        last = torch.tensor(lengths, device=self.device) - 1
        if any(p.repetition_penalty != 1.0 for p in params) and self.counts is None:
            self.counts = torch.zeros(self.rows, self.vocab_size, dtype=torch.int, device=self.device)
        if self.counts is not None:
            real = (torch.arange(T, device=self.device) < (last + 1)[:, None]).int()  # (b, T): 0 on padding
            self.counts[index] = torch.zeros_like(self.counts[index]).scatter_add_(1, idx, real)
        if self.kv_cache:
            everything = rows == list(range(self.rows))
            mask = self.model.causal_mask[None, None, :T, :T]  # padding after a prompt is never attended
            logits = self.model(
                idx, torch.arange(T, device=self.device), mask, self.attn_impl, None if everything else index, last
            )[:, -1]
        else:
            self.seq[index, :T] = idx
            logits = self.model(idx, logits_at=last)[:, -1]
        draw = self._choose(logits, index, rows, logprobs)
        self.tokens[index, 0] = draw.tokens
        self.pos[index, 0] = last + 1
        return draw

    def release(self, rows: Sequence[int]) -> None:
        """Free rows: a step computes them but nobody reads them, until a prefill gives them to a new sequence."""
        for row in rows:
            self.active.discard(row)
            self.generators[row] = None
            self.settings.params[row] = None

    # ------------------------------------------------------------------------------------------ one step

    @torch.inference_mode()
    def step(self, logprobs: int = -1) -> Draw:
        """One new token for every row (B,): each active row at its own position, with its own settings.

        Rows already at the end of the cache write their last position again: the caller ends them first."""
        if self.counts is not None:  # the token fed now counts as seen from this step on
            self.counts.scatter_add_(1, self.tokens, torch.ones_like(self.tokens, dtype=self.counts.dtype))
        active = sorted(self.active) or [0]
        filled = max(self.lengths[r] for r in active) + 1  # positions written once this step's token is in
        logits = self._logits(filled)
        draw = self._choose(logits, None, active, logprobs)
        self.tokens[:, 0] = draw.tokens
        self.pos.add_(1).clamp_(max=self.cache_len - 1)
        for r in self.active:
            self.lengths[r] = min(self.lengths[r] + 1, self.cache_len - 1)
        self.steps += 1
        return draw

    def _logits(self, filled: int) -> torch.Tensor:
        """(B, V_padded) every row's next logits, with the caches or by recomputing each sequence."""
        if not self.kv_cache:
            rows = torch.arange(self.rows, device=self.device)
            self.seq[rows, self.pos[:, 0]] = self.tokens[:, 0]
            logits = self.model(self.seq[:, :filled])  # the longest row's tokens so far; the causal mask does the rest
            return logits[rows, self.pos[:, 0]]
        length = step_length(filled, self.cache_len, self.forward)
        mask = self.model.cache_mask(self.pos, length)  # (B, 1, 1, S')
        if not self.compiled:
            return decode_logits(self.model, self.tokens, self.pos, mask, self.attn_impl)
        first = self._first_compile(length)
        started = time.perf_counter()
        if first:
            log.info("compiling the decode step…")
        try:
            out = self.forward(self.model, self.tokens, self.pos, mask, self.attn_impl)
        except torch._dynamo.exc.FailOnRecompileLimitHit:  # raised while compiling, before the step has run
            log.warning(
                "the compiled decode step met torch's recompile limit (one compile per batch size, dtype and "
                "weights): this core runs eagerly from now on."
            )
            self.forward, self.compiled = decode_logits, False
            return decode_logits(self.model, self.tokens, self.pos, mask, self.attn_impl)
        if first:
            log.info("compiled the decode step in %.1f s", time.perf_counter() - started)
        return out.clone()  # a CUDA graph's output is overwritten by its next replay

    def _choose(self, logits: torch.Tensor, index: torch.Tensor | None, rows: list[int], logprobs: int) -> Draw:
        """Sample the next tokens of logits (b, V_padded): all rows (index None) or those of index."""
        logits = logits[:, : self.vocab_size].float()  # the embedding's padding is never a choice
        controls = self.settings.controls(rows, self.vocab_size)
        knobs = self.settings.knobs if index is None else self.settings.select(index)
        counts = None if self.counts is None else (self.counts if index is None else self.counts[index])
        race = None
        if controls.sample:
            race = self.race if index is None else self.race[index]
            for i, row in enumerate(rows if index is not None else range(self.rows)):
                generator = self.generators[row]
                if generator is not None and (index is not None or row in self.active):
                    race[i].exponential_(1, generator=generator)  # one draw per row per token, from its own stream
        tokens = choose(logits, knobs, counts, race, controls)
        if logprobs < 0:
            return Draw(tokens)
        logp = torch.log_softmax(logits, dim=-1)
        top = torch.topk(logp, min(logprobs, self.vocab_size), dim=-1)
        return Draw(tokens, logp.gather(-1, tokens[:, None])[:, 0], top.values, top.indices)

    def _first_compile(self, length: int) -> bool:
        """Whether a step reading `length` positions compiles now (the first of its kind in this process): the
        only time compiling is worth a line in the log. A CPU step compiles one graph below the whole cache and
        one for it (llm.sampler.compiled); a CUDA graph, one."""
        kind = (getattr(self.forward, "key", 0), self.device, self.rows, self.cache_len, length == self.cache_len)
        if kind in _COMPILED:
            return False
        _COMPILED.add(kind)
        return True

    def warm_up(self) -> None:
        """Compile the step before anyone waits for it: the shortest length attention reads and the whole cache,
        the two graphs a CPU step needs (llm.sampler.compiled). What free rows write is overwritten before use."""
        if not self.compiled:
            return
        started = time.perf_counter()
        log.info("compiling the decode step…")
        with torch.inference_mode():
            for filled in (1, self.cache_len):
                length = step_length(filled, self.cache_len, self.forward)
                self._first_compile(length)
                self.forward(self.model, self.tokens, self.pos, self.model.cache_mask(self.pos, length), self.attn_impl)
        log.info("compiled the decode step in %.1f s", time.perf_counter() - started)

    def close(self) -> None:
        """Free the caches, unless the model had them before this core (a compiled step keeps using them)."""
        if self.kv_cache and not self.kept and not self.compiled:
            self.model.clear_caches()


# ---------------------------------------------------------------------------------------------- host side


@dataclass
class RowOutput:
    """One sequence's host side: its accepted tokens and text, and why it ended.

    accept(token) applies, in order: a stop token ends it (the token is not kept); the token's text is released
    as it becomes safe to show (never half a character, never half a stop string); a stop string ends it; its
    budget ends it ("length")."""

    budget: int  # new tokens it may make
    stop_tokens: frozenset[int]
    stream: TextStream | None = None  # None: ids only
    ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None

    @classmethod
    def make(
        cls,
        budget: int,
        stop_tokens: Sequence[int] = (),
        tokenizer: Tokenizer | None = None,
        stop_strings: Sequence[str] = (),
    ) -> RowOutput:
        stream = TextStream(tokenizer, stop_strings) if tokenizer is not None else None
        return cls(budget, frozenset(stop_tokens), stream)

    @property
    def text(self) -> str:
        return self.stream.text if self.stream is not None else ""

    def accept(self, token: int, logprob: TokenLogprob | None = None) -> str:
        """Take one new token; the text that became safe to show."""
        if self.finish_reason is not None:
            return ""
        if token in self.stop_tokens:
            self.finish_reason = "stop"
            return ""
        self.ids.append(token)
        if logprob is not None:
            self.logprobs.append(logprob)
        chunk = ""
        if self.stream is not None:
            chunk = self.stream.push(token)
            if self.stream.stopped:
                self.finish_reason = "stop"
                return chunk
        if len(self.ids) >= self.budget:
            self.finish_reason = "length"
        return chunk

    def end(self, reason: str) -> str:
        """End it now (reason one of FINISH_REASONS) unless it has ended; what text it still held back."""
        if self.finish_reason is None:
            self.finish_reason = reason
        return self.stream.finish() if self.stream is not None else ""
