"""Inference: turn a trained checkpoint into text."""

from llm.sampler.generate import generate

__all__ = ["generate"]
