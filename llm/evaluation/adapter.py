"""Our GPT as an lm-evaluation-harness model (`lm_eval.api.model.LM`), tokenizing exactly as the harness's own
Hugging Face backend (`--model hf`) does, so that both give the same numbers for an exported checkpoint.

- loglikelihood: lm-eval's TemplateLM splits (context, continuation) into token ids; here they are scored in
  batches, longest first, right-padded, through the KV-cache-free forward.
- loglikelihood_rolling: a document in windows of the model's context (lm-eval's get_rolling_token_windows):
  each window predicts `stride` new tokens after block_size - stride tokens of context (stride = block_size,
  the harness's own choice, by default), the first conditioned on the end-of-document token.
- generate_until: greedy (or sampled, when the task asks) continuation through the KV-cache sampler, stopped by
  the task's stop strings or the end-of-document token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tokenizers import Tokenizer

from llm.errors import ConfigError
from llm.model import GPT
from llm.sampler import SamplingParams, generate_ids
from llm.tokenizer import eod_id


class GPTLM(TemplateLM):
    """model in eval mode on its device; batch_size windows per forward; stride: see the module docstring."""

    def __init__(
        self, model: GPT, tokenizer: Tokenizer, batch_size: int, max_gen_toks: int, stride: int | None = None
    ) -> None:
        super().__init__()
        block = model.config.block_size
        if stride is not None and not 1 <= stride <= block:
            raise ConfigError(f"stride={stride} must be in [1, {block}] (the model's context), or null")
        self.model = model.eval()
        self._tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = block
        self.max_gen_toks = max_gen_toks
        self.stride = stride or block
        self._device = next(model.parameters()).device

    @property
    def eot_token_id(self) -> int:
        return eod_id(self._tokenizer)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self._tokenizer.encode(string, add_special_tokens=False).ids

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self._tokenizer.decode(list(tokens))

    def get_model_info(self) -> dict:
        c = self.model.config
        return {"model_num_parameters": self.model.num_params(non_embedding=False), "max_length": c.block_size}

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str] | None, list[int], list[int]]], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        """(log P(continuation | context), whether greedy decoding gives the continuation) for each request.

        A continuation longer than the context (where the hf backend stops with an assertion) is scored in pieces of
        at most block_size tokens, each after as much of what precedes it as fits: the sum of its log-probabilities."""
        L = self.max_length
        pieces, owner = [], []
        for n, (_, context, continuation) in enumerate(requests):
            if not continuation:
                raise ValueError("lm-eval asked for the log-likelihood of an empty continuation")
            for a in range(0, len(continuation), L):
                pieces.append((context + continuation[:a], continuation[a : a + L]))
                owner.append(n)
        totals = [[0.0, True] for _ in requests]
        for n, (logprob, greedy) in zip(owner, self._score(pieces), strict=True):
            totals[n][0] += logprob
            totals[n][1] = totals[n][1] and greedy
        return [(logprob, greedy) for logprob, greedy in totals]

    @torch.no_grad()
    def _score(self, requests: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(context, continuation of at most block_size tokens) pairs, in batches, longest first, right-padded."""
        L, V = self.max_length, self.model.config.vocab_size
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0] + requests[i][1]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            inputs, conts = [], []
            for i in chunk:
                context, continuation = requests[i]
                inputs.append((context + continuation)[-(L + 1) :][:-1])  # what predicts every continuation token
                conts.append(continuation)
            T = max(len(x) for x in inputs)
            batch = torch.full((len(inputs), T), self.eot_token_id, dtype=torch.long)  # right-padded
            for r, x in enumerate(inputs):
                batch[r, : len(x)] = torch.tensor(x)
            logprobs = self.model(batch.to(self._device))[..., :V].float().log_softmax(-1)  # (B, T, V)
            for r, (i, x, cont) in enumerate(zip(chunk, inputs, conts, strict=True)):
                rows = logprobs[r, len(x) - len(cont) : len(x)]  # (len(cont), V): the continuation's predictions
                target = torch.tensor(cont, device=rows.device)
                logprob = rows.gather(-1, target[:, None]).sum()
                greedy = bool((rows.argmax(-1) == target).all())
                results[i] = (float(logprob), greedy)
        return results

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of each whole string, in windows of the model's context (see the module docstring)."""
        windows, owner = [], []
        for n, (string,) in enumerate(req.args for req in requests):
            rolling = get_rolling_token_windows(
                token_list=self.tok_encode(string),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=self.max_length - self.stride + 1,
            )
            for context, continuation in map(make_disjoint_window, rolling):
                windows.append((None, context, continuation))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows), strict=True):
            totals[n] += logprob
        return totals

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Each context continued until one of its `until` strings, the end-of-document token or max_gen_toks."""
        out: list[str] = [""] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):  # one batch per set of generation settings
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        for members in groups.values():
            kwargs = dict(requests[members[0]].args[1])
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            new = min(int(kwargs.pop("max_gen_toks", self.max_gen_toks)), self.max_length - 1)
            temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
            params = SamplingParams.defaults(temperature=temperature, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
            members = sorted(members, key=lambda i: -len(requests[i].args[0]))
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                # the context left-truncated to leave room for the new tokens, as the hf backend does
                prompts = [self.tok_encode(requests[i].args[0])[-(self.max_length - new) :] for i in chunk]
                prompts = [p or [self.prefix_token_id] for p in prompts]
                gens = generate_ids(
                    self.model,
                    prompts,
                    new,
                    params,
                    stop_tokens=[self.eot_token_id],
                    tokenizer=self._tokenizer,
                    stop_strings=until,
                )
                for i, g in zip(chunk, gens, strict=True):
                    text = g.text
                    for stop in until:  # the sampler leaves a stop string out; the harness's backends cut there too
                        text = text.split(stop)[0]
                    out[i] = text
        return out
