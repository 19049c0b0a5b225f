"""Inference: turn a trained checkpoint into text, with the model's KV caches, sampling controls and streaming."""

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
from llm.sampler.processors import Sampler, build_processors
from llm.sampler.streaming import TextStream

__all__ = [
    "DTYPES",
    "Generation",
    "Sampler",
    "SamplingParams",
    "TextStream",
    "build_processors",
    "check_max_new_tokens",
    "check_prompts",
    "generate",
    "generate_ids",
    "generation_defaults",
    "read_prompts",
    "read_stop",
    "resolve_compile",
    "resolve_device",
    "resolve_dtype",
]
