"""What multi-token prediction costs a training step: forward, objective and backward of modded-nanogpt's model
(bench/speedrun.py's third recipe) with the next-token loss only, with multi-token prediction as
llm/training/objective.py computes it (one log-softmax over the vocabulary, read at every offset), and with one
full cross-entropy per offset (the straightforward way, three softmaxes over (B, T, V)).

    python -m bench.objective                  # tiny and small, 16 sequences a step, every core
    python -m bench.objective --presets small --batch 8
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from bench.speedrun import MODDED_MTP, recipes
from llm import provenance
from llm.config import model_preset
from llm.model import GPT
from llm.training.objective import multi_token_losses, token_cross_entropy


def separate(logits: torch.Tensor, y: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """The objective with one cross-entropy (its own log-softmax) per offset."""
    T = logits.size(1)
    total = sum(w * token_cross_entropy(logits[:, : T - k], y[:, k:]) for k, w in enumerate(weights))
    return total / sum(weights)


def step_seconds(net: GPT, x: torch.Tensor, y: torch.Tensor, objective, repeats: int) -> float:
    """The fastest of `repeats` forward + objective + backward passes, after one to warm up."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        objective(net(x), y).backward()
        net.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"], help="conf/model presets")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    weights = [1.0, *MODDED_MTP]
    print(f"{time.strftime('%Y-%m-%d')}, {provenance.describe()}; {provenance.hardware()}, {args.threads} threads")
    print(f"modded-nanogpt's model, multi-token weights {weights}, batch {args.batch}, float32\n")
    print("| preset | next token only | multi-token, one log-softmax | multi-token, one cross-entropy per offset |")
    print("| --- | ---: | ---: | ---: |")
    for preset in args.presets:
        model = recipes(preset, vocab_size=model_preset(preset).vocab_size)[2].model  # the preset's vocabulary
        torch.manual_seed(0)
        net = GPT(model)
        x, y = torch.randint(0, model.vocab_size, (2, args.batch, model.block_size))
        plain = step_seconds(net, x, y, lambda lg, t: multi_token_losses(lg, t, [1.0])[1], args.repeats)
        shared = step_seconds(net, x, y, lambda lg, t: multi_token_losses(lg, t, weights)[1], args.repeats)
        apart = step_seconds(net, x, y, lambda lg, t: separate(lg, t, weights), args.repeats)
        print(
            f"| `{preset}` | {plain * 1e3:,.0f} ms | {shared * 1e3:,.0f} ms ({shared / plain:.2f}×) "
            f"| {apart * 1e3:,.0f} ms ({apart / plain:.2f}×) |"
        )


if __name__ == "__main__":
    main()
