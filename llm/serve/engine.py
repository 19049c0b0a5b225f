"""Continuous batching: one thread schedules every running request over the decode core, one token a step.

The engine runs no model and samples nothing itself: llm.sampler.core.DecodeCore does both, with the same code
`generate()` uses. The core's caches have max_batch rows ("slots") of block_size positions. A request (a Job)
waits in a bounded queue; at the start of each step the free slots take the oldest waiting jobs, which the core
prefills into those rows alone, and then one core step decodes a token for every slot, each row at its own
position with its own settings and random generator. A job leaves its slot when it ends (a stop token or string,
max_tokens, timeout, cancellation, an error), and the next step can give the slot to a waiting job. So a job
gives the same tokens whoever shares the batch with it, and the same as `generate()` with its settings and seed.

Failures end the jobs they touch and nothing else: a job that cannot start ends with "error" alone; a failed step
ends the jobs in it and the engine serves on; if the engine thread itself dies, every job in it or waiting ends
with "error", submit() refuses new ones (EngineStopped) and on_death is called (the server exits: docs/serving.md).

The engine knows nothing of HTTP: a job reports through on_event(kind, value), called on the engine thread:
("text", chunk) as text becomes safe to show, then ("done", finish_reason) once.
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
from llm.sampler.core import FINISH_REASONS, DecodeCore, RowOutput, TokenLogprob
from llm.sampler.params import SamplingParams
from llm.tokenizer import eod_id

log = logging.getLogger(__name__)

OnEvent = Callable[[str, object], None]  # ("text", chunk) then ("done", finish_reason), on the engine thread


class QueueFull(Exception):
    """The queue holds queue_size jobs already: the caller should retry later."""


class EngineStopped(Exception):
    """The engine thread has stopped or died: no job will run."""


@dataclass(eq=False)
class Job:
    """One sequence to generate: prompt token ids, at most max_tokens new ones, sampled with params (seed None: a
    fresh seed). The end-of-document token always stops it; stop strings and stop_token_ids too. logprobs k: each
    token's log-probability and the k most likely (TokenLogprob) in token_logprobs."""

    prompt_ids: list[int]
    max_tokens: int  # prompt + max_tokens <= block_size
    params: SamplingParams
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    logprobs: int | None = None
    timeout: float = 60.0  # seconds from submission, queue wait included
    on_event: OnEvent = lambda kind, value: None
    output: RowOutput | None = None  # made when the job starts
    finish_reason: str | None = None  # one of FINISH_REASONS
    error: str | None = None  # why, when finish_reason is "error"
    cancelled: bool = False  # set from any thread: the engine ends the job at its next step
    deadline: float = 0.0
    sources: list[dict] | None = None  # retrieval: the passages its prompt was given (the answer names them)

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def token_ids(self) -> list[int]:
        return self.output.ids if self.output is not None else []

    @property
    def text(self) -> str:
        return self.output.text if self.output is not None else ""

    @property
    def token_logprobs(self) -> list[TokenLogprob]:
        return self.output.logprobs if self.output is not None else []


def _asked(job: Job) -> int:
    """How many top log-probabilities a job wants: -1 none, 0 the chosen token's only."""
    return -1 if job.logprobs is None else job.logprobs


class Engine:
    """The decode core over max_batch slots, and the queue; start() runs step() on a thread of its own."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, max_batch: int, queue_size: int, compile: bool) -> None:
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.block_size = model.config.block_size
        self.vocab_size = model.config.vocab_size
        self.eod = eod_id(tokenizer)
        # one cache for every step, whoever joins; compiled for the weights as they are now: the engine serves them
        self.core = DecodeCore(model.eval(), max_batch, self.block_size, compile=compile)
        self.slots: list[Job | None] = [None] * max_batch
        self.waiting: deque[Job] = deque()
        self.wake = threading.Condition()
        self.thread: threading.Thread | None = None
        self.running = False
        self.died: str | None = None  # why the engine thread died, once it has
        self.step_since: float | None = None  # when the step running now began (time.monotonic); None between
        self.on_death: Callable[[], None] | None = None  # called on the engine thread when it dies

    # ------------------------------------------------------------------------------------------ any thread

    @property
    def alive(self) -> bool:
        """The engine thread is running and takes jobs."""
        return self.running and self.thread is not None and self.thread.is_alive()

    @property
    def steps(self) -> int:
        """Decode steps run, for the logs and tests."""
        return self.core.steps

    def submit(self, jobs: list[Job]) -> None:
        """Queue jobs, all or none: QueueFull when fewer than len(jobs) places are left, EngineStopped once the
        engine has stopped or died. (An engine not started yet queues them: a caller may run step() itself.)"""
        with self.wake:
            if self.died is not None or (self.thread is not None and not self.alive):
                raise EngineStopped(f"the engine is not running{f': {self.died}' if self.died else ''}")
            if len(self.waiting) + len(jobs) > self.queue_size:
                raise QueueFull(
                    f"{len(self.waiting)} requests are waiting, the most the queue holds is {self.queue_size}"
                )
            now = time.monotonic()
            for job in jobs:
                job.deadline = now + job.timeout
                self.waiting.append(job)
            self.wake.notify()

    def stalled(self, limit: float) -> float | None:
        """How long the step running now has run, when that is over limit seconds: the engine is hung."""
        since = self.step_since
        if since is None:
            return None
        running = time.monotonic() - since
        return running if running > limit else None

    def active(self) -> int:
        """Slots in use."""
        return sum(job is not None for job in self.slots)

    def queued(self) -> int:
        return len(self.waiting)

    def warm_up(self) -> None:
        """Compile the decode step before any request waits for it (a minute or two on a CPU)."""
        self.core.warm_up()

    def start(self) -> None:
        self.running = True
        self.thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        self.thread.start()

    def stop(self, wait: float | None = None) -> None:
        """End the thread after its current step; jobs still running or waiting end as cancelled. wait: seconds to
        wait for the step to end (None: as long as it takes; a hung step is not waited for)."""
        with self.wake:
            self.running = False
            self.wake.notify()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(wait)
        self._end_all("cancelled")

    # ------------------------------------------------------------------------------------------ engine thread

    def _run(self) -> None:
        try:
            while True:
                with self.wake:
                    while self.running and not self.waiting and not self.active():
                        self.wake.wait()
                    if not self.running:
                        return
                try:
                    self.step_since = time.monotonic()
                    self.step()
                except Exception as e:  # a failed step ends the jobs in it, not the server
                    log.exception("decode step failed: its requests end with an error")
                    for slot, job in enumerate(self.slots):
                        if job is not None:
                            self._end(slot, "error", f"the decode step failed: {e}")
                finally:
                    self.step_since = None
        except BaseException as e:  # the loop itself failed: the thread ends here (no other thread can catch it)
            self.died = f"{type(e).__name__}: {e}"
            log.critical("the engine thread died", exc_info=True)
        finally:
            if self.running:  # the loop ended without stop(): the engine thread died
                self.died = self.died or "the engine thread ended"
                self.running = False
                log.error("the engine thread died (%s): every request in it ends with an error", self.died)
                self._end_all("error", f"the engine stopped: {self.died}")
                if self.on_death is not None:
                    self.on_death()

    @torch.inference_mode()
    def step(self) -> None:
        """Admit waiting jobs into free slots (prefill), then decode one token for every slot in use."""
        self._end_expired()
        self._admit()
        busy = [slot for slot, job in enumerate(self.slots) if job is not None]
        if not busy:
            return
        draw = self.core.step(max(_asked(self.slots[slot]) for slot in busy))
        tokens = draw.tokens[busy].tolist()  # one host sync a step
        for slot, token in zip(busy, tokens, strict=True):
            self._accept(slot, token, draw)

    def _end_expired(self) -> None:
        now = time.monotonic()
        for slot, job in enumerate(self.slots):
            if job is not None and (job.cancelled or now > job.deadline):
                self._end(slot, "cancelled" if job.cancelled else "timeout")

    def _admit(self) -> None:
        """The oldest waiting jobs into the free slots: each is set up on its own (one that cannot start ends with
        an error alone), then their prompts are prefilled together into those rows only."""
        free = [slot for slot, job in enumerate(self.slots) if job is None]
        taken: list[Job] = []
        with self.wake:
            now = time.monotonic()
            while len(taken) < len(free) and self.waiting:
                job = self.waiting.popleft()
                if job.cancelled or now > job.deadline:
                    self._finish(job, "cancelled" if job.cancelled else "timeout")
                else:
                    taken.append(job)
        joining = []
        for job in taken:
            try:
                self._start(job)
            except Exception as e:
                log.warning("a request could not start: %s", e)
                self._finish(job, "error", f"the request could not start: {e}")
                continue
            joining.append((free[len(joining)], job))
        if not joining:
            return
        try:
            self._prefill(joining)
        except Exception:  # which one failed? each alone: only that one ends
            for slot, job in joining:
                try:
                    self._prefill([(slot, job)])
                except Exception as e:
                    log.warning("a request's prefill failed: %s", e)
                    self._finish(job, "error", f"the prompt could not be prefilled: {e}")

    def _start(self, job: Job) -> None:
        """Check a job and give it its output; ValueError says what is wrong with it."""
        n = len(job.prompt_ids)
        if not 1 <= n < self.block_size:
            raise ValueError(
                f"a prompt of {n} tokens: the context of {self.block_size} holds 1 to {self.block_size - 1}"
            )
        bad = [i for i in (*job.prompt_ids, *job.stop_token_ids) if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        if not 1 <= job.max_tokens <= self.block_size - n:
            raise ValueError(f"max_tokens={job.max_tokens} with a prompt of {n} tokens passes the context")
        stops = [self.eod, *job.stop_token_ids]
        job.output = RowOutput.make(job.max_tokens, stops, self.tokenizer, job.stop)

    def _prefill(self, joining: list[tuple[int, Job]]) -> None:
        slots = [slot for slot, _ in joining]
        logprobs = max(_asked(job) for _, job in joining)
        draw = self.core.prefill(
            slots, [job.prompt_ids for _, job in joining], [job.params for _, job in joining], logprobs
        )
        for i, (slot, job) in enumerate(joining):
            self.slots[slot] = job
            self._accept(slot, int(draw.tokens[i]), draw, i)

    def _accept(self, slot: int, token: int, draw, row: int | None = None) -> None:
        """One new token of the job in slot (row of draw: default the slot): text, stops, max_tokens."""
        job = self.slots[slot]
        logprob = draw.logprobs(slot if row is None else row) if job.logprobs is not None else None
        if logprob is not None:
            logprob.top = logprob.top[: job.logprobs]  # the batch computed as many as its greediest job asked
        chunk = job.output.accept(token, logprob)
        if chunk:
            self._emit(job, "text", chunk)
        if job.output.finish_reason is not None:
            self._end(slot, job.output.finish_reason)

    def _end(self, slot: int, reason: str, error: str | None = None) -> None:
        """End the job in slot and free the slot."""
        job = self.slots[slot]
        self.slots[slot] = None
        self.core.release([slot])
        self._finish(job, reason, error)

    def _finish(self, job: Job, reason: str, error: str | None = None) -> None:
        if job.finish_reason is not None:
            return
        assert reason in FINISH_REASONS, reason
        if job.output is not None:
            tail = job.output.end(reason)
            if tail and reason in ("stop", "length"):
                self._emit(job, "text", tail)
        job.finish_reason, job.error = reason, error
        self._emit(job, "done", reason)

    def _end_all(self, reason: str, error: str | None = None) -> None:
        """End every job in a slot or in the queue."""
        with self.wake:
            waiting = list(self.waiting)
            self.waiting.clear()
        for slot, job in enumerate(self.slots):
            if job is not None:
                self._end(slot, reason, error)
        for job in waiting:
            self._finish(job, reason, error)

    @staticmethod
    def _emit(job: Job, kind: str, value: object) -> None:
        """A job's event; a listener that fails costs that listener, never the engine."""
        try:
            job.on_event(kind, value)
        except Exception:
            log.exception("a request's event listener failed")
