"""Continuous batching: one thread owns the model and decodes every running request together, one token a step.

The model's KV caches have max_batch rows ("slots") of block_size positions. A request (a Job) waits in a bounded
queue; at the start of each step the free slots take the oldest waiting jobs, whose prompts are prefilled into
those rows alone (GPT.forward's cache_rows), and then one decode step runs for every slot, each row at its own
position. A job leaves its slot when it ends (end-of-document token, stop string, max_tokens, timeout,
cancellation), and the next step can give the slot to a waiting job. Rows never see each other: each has its own
positions in the causal mask, so a greedy job gives the same tokens whoever shares the batch with it.

The engine knows nothing of HTTP: a job reports its text through on_event(kind, value), called on the engine
thread: ("text", chunk) as text becomes safe to show (TextStream), then ("done", finish_reason) once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer

from llm.model import GPT
from llm.sampler.compiled import CompiledStep, step_length
from llm.sampler.processors import Temperature, TopP
from llm.sampler.streaming import TextStream
from llm.tokenizer import eod_id

log = logging.getLogger(__name__)

OnEvent = Callable[[str, object], None]  # ("text", chunk) then ("done", finish_reason), on the engine thread
FINISH_REASONS = ("stop", "length", "timeout", "cancelled", "error")


class QueueFull(Exception):
    """The queue holds queue_size jobs already: the caller should retry later."""


@dataclass(eq=False)
class Job:
    """One sequence to generate. temperature 0 is greedy; seed None draws a fresh seed."""

    prompt_ids: list[int]
    max_tokens: int  # prompt + max_tokens <= block_size: the caller checks it
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    timeout: float  # seconds from submission, queue wait included
    on_event: OnEvent = lambda kind, value: None
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    cancelled: bool = False  # set from any thread: the engine ends the job at its next step
    deadline: float = 0.0
    generator: torch.Generator | None = None
    stream: TextStream | None = None

    def cancel(self) -> None:
        self.cancelled = True


def decode_logits(model: GPT, tokens: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Every slot's next logits (B, V): tokens (B, 1) at positions pos (B, 1), each row over its own cache.

    mask (B, 1, 1, S') from model.cache_mask: row b sees its positions <= pos[b] among the first S'."""
    return model(tokens, pos, mask)[:, -1]


class Engine:
    """The model, its batch-slotted caches and the queue; start() runs step() on a thread of its own."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, max_batch: int, queue_size: int, compile: bool) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.block_size = model.config.block_size
        self.vocab_size = model.config.vocab_size
        self.eod = eod_id(tokenizer)
        self.device = model.lm_head.weight.device
        model.setup_caches(max_batch, self.block_size)  # one cache for every step, whoever joins
        self.slots: list[Job | None] = [None] * max_batch
        self.tokens = torch.zeros(max_batch, 1, dtype=torch.long, device=self.device)  # (B, 1) the token to feed
        self.pos = torch.zeros(max_batch, 1, dtype=torch.long, device=self.device)  # (B, 1) where it goes
        self.temperature = torch.ones(max_batch, 1, device=self.device)  # (B, 1) per-slot sampling settings
        self.top_p = torch.ones(max_batch, 1, device=self.device)
        # compiled for the weights as they are now: the engine serves them unchanged
        self.decode = CompiledStep(decode_logits, model) if compile else decode_logits
        self.waiting: deque[Job] = deque()
        self.wake = threading.Condition()
        self.thread: threading.Thread | None = None
        self.running = False
        self.steps = 0  # decode steps run, for the logs and tests

    # ------------------------------------------------------------------------------------------ any thread

    def submit(self, jobs: list[Job]) -> None:
        """Queue jobs, all or none: QueueFull when fewer than len(jobs) places are left."""
        with self.wake:
            if len(self.waiting) + len(jobs) > self.queue_size:
                raise QueueFull(
                    f"{len(self.waiting)} requests are waiting, the most the queue holds is {self.queue_size}"
                )
            now = time.monotonic()
            for job in jobs:
                job.deadline = now + job.timeout
                self.waiting.append(job)
            self.wake.notify()

    def active(self) -> int:
        """Slots in use."""
        return sum(job is not None for job in self.slots)

    def queued(self) -> int:
        return len(self.waiting)

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Compile the decode step before any request waits for it (a minute or two on a CPU): a step over the
        free slots at the shortest length attention reads and at the whole context, the two graphs it needs
        (llm.sampler.compiled). What the free rows write at position 0 is overwritten before anyone reads it."""
        for filled in (1, self.block_size):
            mask = self.model.cache_mask(self.pos, step_length(filled, self.block_size, self.decode))
            self.decode(self.model, self.tokens, self.pos, mask)

    def start(self) -> None:
        self.running = True
        self.thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """End the thread after its current step; jobs still running or waiting end as cancelled."""
        with self.wake:
            self.running = False
            self.wake.notify()
        if self.thread is not None:
            self.thread.join()
        for job in [*self.waiting, *self.slots]:
            if job is not None and job.finish_reason is None:
                self._finish(job, "cancelled")
        self.waiting.clear()
        self.slots = [None] * self.max_batch

    # ------------------------------------------------------------------------------------------ engine thread

    def _run(self) -> None:
        while True:
            with self.wake:
                while self.running and not self.waiting and not self.active():
                    self.wake.wait()
                if not self.running:
                    return
            try:
                self.step()
            except Exception:  # a failed step ends the jobs in it, not the server
                log.exception("decode step failed: its requests end with an error")
                for slot, job in enumerate(self.slots):
                    if job is not None:
                        self._finish(job, "error")
                        self.slots[slot] = None

    @torch.inference_mode()
    def step(self) -> None:
        """Admit waiting jobs into free slots (prefill), then decode one token for every slot in use."""
        self._end_expired()
        self._admit()
        busy = [slot for slot, job in enumerate(self.slots) if job is not None]
        if not busy:
            return
        # Attention reads the positions up to the longest busy row's newest token (prompt + tokens - 1, rounded up),
        # not the whole context; a free slot's row is ignored whatever it reads. Replayed as a CUDA graph, the
        # whole context (step_length).
        filled = max(len(self.slots[slot].prompt_ids) + len(self.slots[slot].token_ids) for slot in busy)
        length = step_length(filled, self.block_size, self.decode)
        mask = self.model.cache_mask(self.pos, length)  # (B, 1, 1, S')
        logits = self.decode(self.model, self.tokens, self.pos, mask)  # (B, V): free slots compute and are ignored
        new = self._sample(logits, busy)
        self.tokens[:, 0] = new
        self.pos.add_(1).clamp_(max=self.block_size - 1)  # a job ends before its row passes the context; free rows
        self.steps += 1
        for slot, token in zip(busy, new[busy].tolist(), strict=True):  # one host sync a step
            self._accept(slot, token)

    def _end_expired(self) -> None:
        now = time.monotonic()
        for slot, job in enumerate(self.slots):
            if job is not None and (job.cancelled or now > job.deadline):
                self._finish(job, "cancelled" if job.cancelled else "timeout")
                self.slots[slot] = None

    def _admit(self) -> None:
        """The oldest waiting jobs into the free slots: prefill their prompts (right-padded) in those rows only."""
        free = [slot for slot, job in enumerate(self.slots) if job is None]
        joining: list[tuple[int, Job]] = []
        with self.wake:
            now = time.monotonic()
            while free and self.waiting:
                job = self.waiting.popleft()
                if job.cancelled or now > job.deadline:
                    self._finish(job, "cancelled" if job.cancelled else "timeout")
                    continue
                joining.append((free.pop(0), job))
        if not joining:
            return
        for slot, job in joining:
            self.slots[slot] = job
            job.stream = TextStream(self.tokenizer, job.stop)
            job.generator = torch.Generator(self.device)
            if job.seed is None:
                job.generator.seed()  # a fresh, nondeterministic seed
            else:
                job.generator.manual_seed(job.seed)
            self.temperature[slot] = job.temperature
            self.top_p[slot] = job.top_p
        slots = [slot for slot, _ in joining]
        lengths = [len(job.prompt_ids) for _, job in joining]
        idx = torch.zeros(len(joining), max(lengths), dtype=torch.long)
        for row, (_, job) in enumerate(joining):
            idx[row, : len(job.prompt_ids)] = torch.tensor(job.prompt_ids)
        T = idx.size(1)
        rows = torch.tensor(slots, device=self.device)
        mask = self.model.causal_mask[None, None, :T, :T]  # (1, 1, T, T): padding after a prompt is never attended
        logits = self.model(idx.to(self.device), torch.arange(T, device=self.device), mask, cache_rows=rows)
        last = logits[torch.arange(len(joining)), torch.tensor(lengths) - 1]  # (b, V) at each prompt's end
        scattered = torch.zeros(self.max_batch, last.size(-1), dtype=last.dtype, device=self.device)
        scattered[rows] = last
        first = self._sample(scattered, slots)
        self.tokens[rows, 0] = first[rows]
        self.pos[rows, 0] = torch.tensor(lengths, device=self.device)
        for slot, token in zip(slots, first[rows].tolist(), strict=True):
            self._accept(slot, token)

    def _sample(self, logits: torch.Tensor, busy: list[int]) -> torch.Tensor:
        """Next token of every slot (B,): argmax where temperature is 0, else a draw from top-p of softmax(l / t).

        Each job draws from its own generator (the exponential race, as llm.sampler does), so a seeded job gives
        the same text whichever jobs share the batch."""
        logits = logits[:, : self.vocab_size].float()  # (B, V) the real vocabulary
        greedy = logits.argmax(dim=-1)
        sampled = [slot for slot in busy if self.slots[slot].temperature > 0]
        if not sampled:
            return greedy
        hot = self.temperature.clamp_min(1e-6)  # greedy rows: any value, their draw is not used
        probs = torch.softmax(TopP(self.top_p)(Temperature(hot)(logits, None), None), dim=-1)
        race = torch.ones_like(probs)
        for slot in sampled:
            race[slot].exponential_(1, generator=self.slots[slot].generator)
        drawn = torch.argmax(probs / race, dim=-1)
        return torch.where(self.temperature[:, 0] > 0, drawn, greedy)

    def _accept(self, slot: int, token: int) -> None:
        """One new token of the job in slot: stop token, stream its text, stop strings, max_tokens."""
        job = self.slots[slot]
        reason = None
        if token == self.eod:
            reason = "stop"
        else:
            job.token_ids.append(token)
            chunk = job.stream.push(token)
            if chunk:
                job.on_event("text", chunk)
            if job.stream.stopped:
                reason = "stop"
            elif len(job.token_ids) >= job.max_tokens:
                reason = "length"
        if reason is not None:
            self._finish(job, reason)
            self.slots[slot] = None

    def _finish(self, job: Job, reason: str) -> None:
        if job.stream is not None:
            tail = job.stream.finish()
            if tail and reason in ("stop", "length"):
                job.on_event("text", tail)
            job.text = job.stream.text
        job.finish_reason = reason
        job.on_event("done", reason)
