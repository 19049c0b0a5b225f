"""Inference: turn a trained checkpoint into text, with the model's KV caches, sampling controls and streaming.

core.py is the one decode core (prefill, decode step, per-row sampling); generation.py runs it for a fixed batch,
and the server's engine (llm.serve.engine) schedules requests over it."""

from llm.sampler.core import FINISH_REASONS, DecodeCore, RowOutput, TokenLogprob
from llm.sampler.device import DTYPES, resolve_compile, resolve_device, resolve_dtype
from llm.sampler.generation import Generation, generate, generate_ids
from llm.sampler.params import (
    SamplingParams,
    check_max_new_tokens,
    check_prompts,
    generation_defaults,
    read_prompts,
    read_stop,
)
from llm.sampler.processors import Controls, RowSettings, choose
from llm.sampler.streaming import TextStream

__all__ = [
    "DTYPES",
    "FINISH_REASONS",
    "Controls",
    "DecodeCore",
    "Generation",
    "RowOutput",
    "RowSettings",
    "SamplingParams",
    "TextStream",
    "TokenLogprob",
    "check_max_new_tokens",
    "check_prompts",
    "choose",
    "generate",
    "generate_ids",
    "generation_defaults",
    "read_prompts",
    "read_stop",
    "resolve_compile",
    "resolve_device",
    "resolve_dtype",
]
