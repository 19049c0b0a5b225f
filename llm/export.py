"""`python -m llm.export ckpt_path=… format=hf|gguf out=…` (or `llm-export`): a trained checkpoint for other tools.

format=hf writes a folder that transformers' AutoModelForCausalLM and AutoTokenizer load (GPT2LMHeadModel or
LlamaForCausalLM, weights in safetensors); format=gguf writes one .gguf file for llama.cpp. A model neither
layout can express is refused by name, with the overrides that make one (docs/export.md).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from llm.checkpoint import find_checkpoint, load_checkpoint, run_folder
from llm.config import config_dir, register_resolvers
from llm.errors import ConfigError
from llm.interop.gguf import write_gguf
from llm.interop.hf import export_layout, save_pretrained
from llm.interop.tokenizer import save_hf_tokenizer
from llm.tokenizer import eod_id

log = logging.getLogger(__name__)
FORMATS = ("hf", "gguf")


def export(ckpt_path: str | Path, format: str, out: str | Path | None = None, outputs_root: str = "outputs") -> Path:
    """Write the checkpoint in `format` to out (default: export/ in its run folder); returns what was written."""
    if format not in FORMATS:
        raise ConfigError(f"format={format!r} is not one of {list(FORMATS)}")
    path = find_checkpoint(ckpt_path, outputs_root)
    model, tokenizer, _ = load_checkpoint(path)
    layout = export_layout(model.config)  # refused before anything is written
    run = run_folder(path)
    if out is None:
        out = run / "export" / ("hf" if format == "hf" else "model.gguf")
    out = Path(out).expanduser()
    if format == "gguf":
        written = write_gguf(model, tokenizer, out, name=run.name)
    else:
        eod = eod_id(tokenizer)
        written = save_pretrained(model, out, bos_id=eod, eos_id=eod)
        save_hf_tokenizer(tokenizer, out, model.config.block_size)
    log.info("exported %s (%s layout) to %s", path, layout, written)
    return written


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="export")
def _hydra_main(cfg: DictConfig) -> None:
    """Bad config or input: one line naming the key on stderr, exit code 2, no traceback."""
    try:
        print(export(cfg.ckpt_path, cfg.format, cfg.out, cfg.paths.outputs_root))
    except ConfigError as e:
        log.error("%s", e)
        sys.exit(2)


def main() -> None:
    register_resolvers()
    _hydra_main()


if __name__ == "__main__":
    main()
