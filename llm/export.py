"""`python -m llm.export ckpt_path=… format=hf|gguf out=… dtype=…` (or `llm-export`): a checkpoint for other tools.

format=hf writes a folder that transformers' AutoModelForCausalLM and AutoTokenizer load (GPT2LMHeadModel,
LlamaForCausalLM, Qwen2ForCausalLM or Qwen3ForCausalLM, weights in safetensors); format=gguf writes one .gguf file
for llama.cpp, its matrices in dtype (f32, f16, bf16, q8_0). A model no layout can express is refused by name, with
the overrides that make one (docs/export.md). The chat template a checkpoint carries (llm/checkpoint.py's
CHAT_TEMPLATE) goes into both: tokenizer_config.json's chat_template, GGUF's tokenizer.chat_template.
"""

from __future__ import annotations

import logging
from pathlib import Path

from llm.chat_template import ChatTemplate, ChatTokens
from llm.checkpoint import CHAT_TEMPLATE, find_checkpoint, load_checkpoint, run_folder
from llm.config import run_command
from llm.errors import ConfigError
from llm.interop.gguf import check_dtype, write_gguf
from llm.interop.hf import export_layout, save_pretrained
from llm.interop.tokenizer import save_hf_tokenizer
from llm.tokenizer import eod_id

log = logging.getLogger(__name__)
FORMATS = ("hf", "gguf")


def export(
    ckpt_path: str | Path,
    format: str,
    out: str | Path | None = None,
    outputs_root: str = "outputs",
    dtype: str = "f32",
) -> Path:
    """Write the checkpoint in `format` to out (default: export/ in its run folder); returns what was written.

    dtype: the GGUF file's matrices (f32, f16, bf16, q8_0); a Hugging Face folder is float32."""
    if format not in FORMATS:
        raise ConfigError(f"format={format!r} is not one of {list(FORMATS)}")
    if check_dtype(dtype) != "f32" and format != "gguf":
        raise ConfigError(f"dtype={dtype} is for format=gguf; format=hf writes float32 (dtype=f32)")
    path = find_checkpoint(ckpt_path, outputs_root)
    model, tokenizer, ckpt = load_checkpoint(path)
    layout = export_layout(model.config)  # refused before anything is written
    run = run_folder(path)
    template = ChatTemplate.from_dict(ckpt[CHAT_TEMPLATE]) if ckpt.get(CHAT_TEMPLATE) else None
    chat_template = template.source if template is not None else None  # the Jinja, when the model learned one
    if out is None:
        out = run / "export" / ("hf" if format == "hf" else f"model-{dtype}.gguf" if dtype != "f32" else "model.gguf")
    out = Path(out).expanduser()
    if format == "gguf":
        written = write_gguf(model, tokenizer, out, name=run.name, dtype=dtype, chat_template=chat_template)
    else:
        eod = eod_id(tokenizer)
        # a chat model's reply ends with its turn: generate() stops at that token too
        turn_end = ChatTokens(template, tokenizer).end_ids if template is not None else []
        written = save_pretrained(model, out, bos_id=eod, eos_id=eod, stop_ids=[eod, *turn_end])
        save_hf_tokenizer(tokenizer, out, model.config.block_size, chat_template, template.special if template else {})
    log.info("exported %s (%s layout) to %s", path, layout, written)
    return written


def main() -> None:
    run_command("export", lambda c: print(export(c.ckpt_path, c.format, c.out, c.paths.outputs_root, c.dtype)))


if __name__ == "__main__":
    main()
