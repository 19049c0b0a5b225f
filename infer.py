"""Generate text from a trained checkpoint: `python infer.py ckpt_path=last 'prompt="def "'`.

The quotes inside keep the trailing space: Hydra strips it from an unquoted value.

`prompt_file=prompts.txt` runs one prompt per line as a batch; `interactive=true` opens a REPL.
See conf/infer.yaml for every key. The generated text goes to stdout; logs go to stderr.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from tokenizers import Tokenizer

import llm.config  # noqa: F401  (registers the ${repo:} resolver)
from llm.checkpoint import find_checkpoint, load_checkpoint
from llm.model import GPT
from llm.sampler import DTYPES, SamplingParams, generate

log = logging.getLogger("llm.infer")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but this machine has no CUDA GPU that torch can use: use auto or cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} is not one of {['auto', *DTYPES]}")
    return DTYPES[name]


def resolve_compile(value: object, device: torch.device, kv_cache: bool) -> bool:
    if str(value) not in ("auto", "True", "False", "true", "false"):
        raise ValueError(f"compile={value!r} must be auto, true or false")
    wanted = device.type == "cuda" if str(value) == "auto" else str(value).lower() == "true"
    if wanted and not kv_cache:
        log.info("compile applies to the cached decode step only: kv_cache=false runs eagerly")
    return wanted and kv_cache


ESCAPES = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\\\": "\\"}


def read_stop(value: object) -> list[str]:
    r"""stop= as one string or a list. On the command line Hydra keeps \n as two characters, so \n, \t, \r
    and \\ are read here as newline, tab, carriage return and backslash: 'stop=["\n\n"]' stops at a blank line."""
    if value is None:
        return []
    items = [value] if isinstance(value, (str, int, float)) else list(value)  # type: ignore[call-overload]
    return [re.sub(r"\\[ntr\\]", lambda m: ESCAPES[m.group()], str(item)) for item in items]


def read_prompts(cfg: DictConfig) -> list[str]:
    if cfg.get("prompt_file"):
        path = Path(cfg.prompt_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"prompt_file={cfg.prompt_file}: no such file")
        prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"prompt_file={cfg.prompt_file} has no prompt: write one prompt per line")
        return prompts
    if cfg.prompt is None or str(cfg.prompt) == "":
        raise ValueError("prompt is empty: give some text to continue, e.g. 'prompt=\"def \"'")
    return [str(cfg.prompt)]


def load(cfg: DictConfig) -> tuple[GPT, Tokenizer, torch.device]:
    path = find_checkpoint(cfg.ckpt_path, cfg.paths.outputs_root)
    device = resolve_device(cfg.device)
    model, tokenizer, _ = load_checkpoint(path)
    model.to(device=device, dtype=resolve_dtype(cfg.dtype, device))
    log.info("loaded %s (%.2fM parameters) on %s", path, model.num_params() / 1e6, device)
    return model, tokenizer, device


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def infer(cfg: DictConfig) -> None:
    prompts = [] if cfg.interactive else read_prompts(cfg)
    # bad values are named before the checkpoint loads
    SamplingParams(cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p, cfg.repetition_penalty, cfg.seed)
    if not isinstance(cfg.max_new_tokens, int) or cfg.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={cfg.max_new_tokens!r} must be an integer, at least 1")
    model, tokenizer, device = load(cfg)
    options = dict(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        min_p=cfg.min_p,
        repetition_penalty=cfg.repetition_penalty,
        seed=cfg.seed,
        stop=read_stop(cfg.stop),
        kv_cache=cfg.kv_cache,
        compile=resolve_compile(cfg.compile, device, cfg.kv_cache),
    )
    if cfg.interactive:
        if options["compile"]:  # one cache size for every turn, so the step compiles once
            options["cache_len"] = model.config.block_size
        repl(model, tokenizer, cfg.stream, options)
        return
    stream = cfg.stream and len(prompts) == 1
    if stream:
        write(prompts[0])
    on_text = (lambda _row, text: write(text)) if stream else None
    results = generate(model, tokenizer, prompts, on_text=on_text, **options)
    for i, (prompt, result) in enumerate(zip(prompts, results, strict=True)):
        if not stream:
            write(("\n" if i else "") + prompt + result.text)
        write("\n")
        log.info("prompt %d: %d new tokens, finished by %s", i, len(result.token_ids), result.finish_reason)


def repl(model: GPT, tokenizer: Tokenizer, stream: bool, options: dict) -> None:
    """Each line continues the transcript so far (older text falls out of the context). /reset, /quit."""
    sys.stderr.write("interactive: type a line and press enter; /reset forgets the conversation, /quit ends\n")
    transcript = ""
    while True:
        sys.stderr.write("> ")
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line or line.strip() == "/quit":  # end of input or /quit
            return
        if line.strip() == "/reset":
            transcript = ""
            continue
        if not line.strip():
            continue
        transcript += line
        on_text = (lambda _row, text: write(text)) if stream else None
        result = generate(model, tokenizer, transcript, on_text=on_text, **options)[0]
        if not stream:
            write(result.text)
        write("\n")
        transcript += result.text + "\n"


@hydra.main(version_base="1.3", config_path="conf", config_name="infer")
def main(cfg: DictConfig) -> None:
    try:
        infer(cfg)
    except (FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    main()
