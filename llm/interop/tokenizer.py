"""Tokenizers across formats: our byte-level BPE <-> a Hugging Face folder, and into GGUF's tokenizer metadata.

The same text gives the same ids everywhere, `<|endoftext|>` typed in a text included: it is text, never the
end-of-document token (llm/tokenizer.py). Hugging Face is told so with `split_special_tokens`; llama.cpp
reads special tokens as text unless asked otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from llm.errors import ConfigError
from llm.tokenizer import eod_token, load_tokenizer

TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4  # llama.cpp's token types (gguf.TokenType)


def tokenizer_from_hf(folder: str | Path) -> Tokenizer:
    """A Hugging Face folder's tokenizer: tokenizer.json, or GPT-2's older vocab.json + merges.txt."""
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        tok = load_tokenizer(folder / "tokenizer.json")
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        tok = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok = load_tokenizer(tok.to_str())
    else:
        raise ConfigError(f"init_from={folder}: no tokenizer: expected tokenizer.json, or vocab.json and merges.txt")
    try:
        eod_token(tok)
    except ValueError as e:
        raise ConfigError(f"init_from={folder}: {e}: documents could not be separated") from e
    return tok


def save_hf_tokenizer(tok: Tokenizer, out: str | Path, model_max_length: int) -> Path:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json that AutoTokenizer loads as a
    PreTrainedTokenizerFast giving tok's ids (no BOS added, special tokens in text read as text)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(tok.to_str())
    eod = eod_token(tok)
    special = {"bos_token": eod, "eos_token": eod, "unk_token": eod}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": True,  # "<|endoftext|>" in a text is text, as in training
        **special,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return out


def gguf_vocab(tok: Tokenizer) -> dict:
    """GGUF's tokenizer.ggml.* values of a byte-level BPE: tokens by id, their types, merges, EOS id.

    Only byte-level BPE (GPT-2's scheme, ours) is written: llama.cpp reads it as tokenizer model 'gpt2'
    with the GPT-2 pre-tokenizer regex, which is what pre_tokenizers.ByteLevel applies."""
    spec = json.loads(tok.to_str())
    model, pre = spec["model"], spec.get("pre_tokenizer") or {}
    kinds = [p["type"] for p in pre.get("pretokenizers", [pre])]
    if model.get("type") != "BPE" or kinds != ["ByteLevel"] or not pre.get("use_regex", True):
        raise ConfigError(
            f"format=gguf: the tokenizer is {model.get('type')} with pre-tokenizers {kinds}; "
            "only a byte-level BPE (ByteLevel pre-tokenizer with GPT-2's regex) is written to GGUF"
        )
    n = tok.get_vocab_size()
    tokens = [""] * n
    for text, i in tok.get_vocab().items():
        tokens[i] = text
    added = tok.get_added_tokens_decoder()
    types = [
        (TOKEN_CONTROL if added[i].special else TOKEN_USER_DEFINED) if i in added else TOKEN_NORMAL for i in range(n)
    ]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]  # tokenizers >= 0.20: pairs
    return {"tokens": tokens, "types": types, "merges": merges, "eos_id": tok.token_to_id(eod_token(tok))}
