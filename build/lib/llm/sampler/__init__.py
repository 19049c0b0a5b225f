"""Inference: turn a trained checkpoint into text, with a KV cache, sampling controls and streaming."""

from llm.sampler.generate import DTYPES, Generation, generate, generate_ids
from llm.sampler.kv_cache import KVCache, kv_caches, release_kept_caches, remove_caches, setup_caches
from llm.sampler.processors import Sampler, SamplingParams, build_processors
from llm.sampler.streaming import TextStream

__all__ = [
    "DTYPES",
    "Generation",
    "KVCache",
    "Sampler",
    "SamplingParams",
    "TextStream",
    "build_processors",
    "generate",
    "generate_ids",
    "kv_caches",
    "release_kept_caches",
    "remove_caches",
    "setup_caches",
]
