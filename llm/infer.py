"""`python infer.py [overrides]` (or `llm-infer` when installed): generate text from a trained checkpoint.

Example: `python infer.py ckpt_path=last 'prompt="def "'`.

The quotes inside keep the trailing space: Hydra strips it from an unquoted value.

`prompt_file=prompts.txt` runs one prompt per line as a batch; `interactive=true` opens a REPL. `chat=true` sends
each prompt as a user's message in the checkpoint's chat template (llm/chat_template.py) and prints the reply,
which ends with the assistant's turn; with `interactive=true` the conversation goes on. With `retrieval.index=`
(docs/retrieval.md) each question is given the index's best passages and the reply is followed by where they are.
See conf/infer.yaml for every key. The generated text goes to stdout; logs go to stderr.
"""

from __future__ import annotations

import dataclasses
import logging
import sys

import torch
from omegaconf import DictConfig
from tokenizers import Tokenizer

from llm.chat_template import ChatTokens
from llm.config import check_flag, run_command
from llm.errors import ConfigError
from llm.loading import load  # serve.py loads the same way
from llm.model import GPT
from llm.retrieval.context import Retriever, source
from llm.retrieval.index import Hit
from llm.sampler import (
    SamplingParams,
    check_max_new_tokens,
    generate,
    read_prompts,
    read_stop,
    resolve_compile,
)

log = logging.getLogger(__name__)


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def write_row(_row: int, text: str) -> None:
    """on_text for one stream: the text as it arrives."""
    write(text)


def infer(cfg: DictConfig) -> None:
    # every key is checked before the checkpoint loads
    interactive = check_flag("interactive", cfg.interactive)
    stream = check_flag("stream", cfg.stream)
    kv_cache = check_flag("kv_cache", cfg.kv_cache)
    use_chat = check_flag("chat", cfg.chat)
    prompts = [] if interactive else read_prompts(cfg.prompt, cfg.prompt_file)
    options = dict(
        max_new_tokens=check_max_new_tokens(cfg.max_new_tokens),
        params=SamplingParams.from_config(cfg),
        stop=read_stop(cfg.stop),
        kv_cache=kv_cache,
    )
    retriever = Retriever.from_config(cfg.get("retrieval"), cfg.paths.outputs_root)
    if retriever is not None and not use_chat:
        raise ConfigError("retrieval.index gives passages to a chat: it needs chat=true")
    model, tokenizer, device, template = load(cfg)
    options["compile"] = resolve_compile(cfg.compile, device, kv_cache)
    if use_chat:
        options["chat"] = ChatTokens(template, tokenizer)
        log.info("chat: the %s template", template.name)
    budget = model.config.block_size - options["max_new_tokens"]  # prompt tokens that leave room for the reply
    if interactive:
        if options["compile"]:  # one cache size for every turn, so the step compiles once
            options["cache_len"] = model.config.block_size
        repl(model, tokenizer, stream, options, retriever, budget)
        return
    stream = stream and len(prompts) == 1
    if stream and not use_chat:
        write(prompts[0])
    inputs, sources = list(prompts), [[] for _ in prompts]
    if retriever is not None:
        grounded = [retriever.ground(options["chat"], [{"role": "user", "content": p}], budget) for p in prompts]
        inputs, sources = [messages for messages, _ in grounded], [hits for _, hits in grounded]
    results = generate(model, tokenizer, inputs, on_text=write_row if stream else None, **options)
    for i, (prompt, result) in enumerate(zip(prompts, results, strict=True)):
        if not stream:
            separator = "\n" if i else ""
            write(separator + ("" if use_chat else prompt) + result.text)
        write("\n")
        write_sources(sources[i])
        log.info("prompt %d: %d new tokens, finished by %s", i, len(result.token_ids), result.finish_reason)


def write_sources(hits: list[Hit]) -> None:
    """After a grounded reply, the passages it was given: one line each, `[n] path, page p`."""
    for n, hit in enumerate(hits, start=1):
        write(f"[{n}] {source(hit.path, hit.page)}\n")


def repl(
    model: GPT, tokenizer: Tokenizer, stream: bool, options: dict, retriever: Retriever | None = None, budget: int = 0
) -> None:
    """Each line continues the transcript so far (older text falls out of the context). /reset, /quit. With chat,
    each line is the user's next message and the conversation so far goes with it.

    A seed seeds the session once: the same lines give the same session, and each turn draws on from where
    the last one stopped (seeding every turn would repeat the same draws: the same reply to different lines)."""
    params = options["params"]
    if params.seed is not None:
        torch.manual_seed(params.seed)  # the CPU's and every GPU's generator
        options = {**options, "params": dataclasses.replace(params, seed=None)}
    sys.stderr.write("interactive: type a line and press enter; /reset forgets the conversation, /quit ends\n")
    on_text = write_row if stream else None
    transcript = ""
    conversation: list[dict[str, str]] = []
    while True:
        sys.stderr.write("> ")
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line or line.strip() == "/quit":  # end of input or /quit
            return
        if line.strip() == "/reset":
            transcript, conversation = "", []
            continue
        if not line.strip():
            continue
        hits: list[Hit] = []
        if options.get("chat") is not None:
            conversation.append({"role": "user", "content": line.rstrip("\n")})
            asked = conversation  # with retrieval: the passages for this question, in this turn only
            if retriever is not None:
                asked, hits = retriever.ground(options["chat"], conversation, budget)
            result = generate(model, tokenizer, [asked], on_text=on_text, **options)[0]
            conversation.append({"role": "assistant", "content": result.text})
        else:
            transcript += line
            result = generate(model, tokenizer, transcript, on_text=on_text, **options)[0]
            transcript += result.text + "\n"
        if not stream:
            write(result.text)
        write("\n")
        write_sources(hits)


def main() -> None:
    run_command("infer", infer)


if __name__ == "__main__":
    main()
