"""The decode step compiled for the device it runs on: llm.sampler.core compiles its model forward with it.

On CUDA the step is replayed as a CUDA graph (mode="reduce-overhead"), which wants fixed shapes: attention reads
the whole cache. On a CPU it is compiled by inductor with:

- the weights frozen into the graph (`freezing`), as constants the compiler may lay out for its own kernels;
- those kernels for the matrix products: inductor's C++ GEMM template, timed against ATen's product for each
  shape when the step compiles (`max_autotune`, `max_autotune_gemm_backends="CPP,ATEN"`); at eight rows they
  ran the step's products about twice as fast as ATen's, which repacks each weight on every call;
- attention reading only the filled prefix of the cache, its length left dynamic, so that one graph serves
  every length below the whole cache (and a second the whole).

Frozen weights are copies: a step compiled for some weights must not run with others. A CompiledStep takes
weights_key(model) when it is made and passes it on every call, and the graph is guarded on it: another model,
or the same one after its parameters have changed (an optimizer step, load_state_dict), compiles afresh rather
than using the old weights. A DecodeCore makes one: generate() one per call, the server's engine one for its life.
docs/benchmarks.md has the measurements.
"""

from __future__ import annotations

import itertools
import warnings
import weakref
from collections.abc import Callable

import torch
from torch import nn

from llm.model import filled_length

CPU_INDUCTOR = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
# Autotuning writes its timing tables to stderr; the core logs one line of its own instead (llm.sampler.core)
QUIET = {"autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}

_keys: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, int]] = weakref.WeakKeyDictionary()
_next_key = itertools.count()


def _version(p: torch.Tensor) -> int:
    # a tensor made under inference_mode has no version counter; it can be changed in place only there
    return -1 if p.is_inference() else p._version


def weights_key(model: nn.Module) -> int:
    """A number for model's weights as they are now: the same while they stay so, a new one for another model or
    once any parameter has been replaced or changed in place (its version counter moves)."""
    state = tuple((id(p), _version(p)) for p in model.parameters())
    seen = _keys.get(model)
    if seen is None or seen[0] != state:
        seen = (state, next(_next_key))
        _keys[model] = seen
    return seen[1]


def _keyed(key: int, fn: Callable, *args):
    torch._check(key >= 0)  # reads key, so the graph is guarded on its value: new weights, a new graph
    return fn(*args)


class CompiledStep:
    """fn(model, tokens, pos, mask, *rest) compiled as one graph for model's weights as they are when it is made
    (make another after changing them: a new key, a new graph): mask (B, 1, 1, S') says how many cache positions
    attention reads (step_length). The key and the compiler's settings are fixed here, not per step: computing a
    key took about 0.4 ms, several percent of a batch-1 step."""

    def __init__(self, fn: Callable, model: nn.Module) -> None:
        import torch._inductor.config as inductor_config

        device = next(model.parameters()).device
        self.fn = fn
        self.fixed_shapes = device.type == "cuda"  # CUDA graphs: the whole cache, one graph
        self.key = weights_key(model) if device.type == "cpu" else 0  # weights are frozen on CPU only
        # read when the step compiles (its first call, any recompile); through torch.compile(options=...)
        # freezing is ignored
        settings = {**(CPU_INDUCTOR if device.type == "cpu" else {}), **QUIET}
        self.settings = inductor_config.patch({k: v for k, v in settings.items() if hasattr(inductor_config, k)})
        mode = "reduce-overhead" if self.fixed_shapes else "default"
        self.compiled = torch.compile(_keyed, mode=mode, fullgraph=True, dynamic=False)

    def __call__(self, model: nn.Module, tokens: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, *rest):
        if not self.fixed_shapes:
            # S' dynamic: one graph for every filled length (torch ignores a negative dim here)
            torch._dynamo.maybe_mark_dynamic(mask, mask.dim() - 1)
        with self.settings, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")  # inductor's, while compiling
            return self.compiled(self.key, self.fn, model, tokens, pos, mask, *rest)


def step_length(filled: int, cache_len: int, step: Callable) -> int:
    """Cache positions a decode step reads when `filled` are filled: those rounded up (filled_length), or the whole
    cache for a step replayed as a CUDA graph."""
    return cache_len if getattr(step, "fixed_shapes", False) else filled_length(filled, cache_len)
