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
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where transformers >= 4.43 saves a chat template
# Qwen2's pre-tokenizer regex (transformers' Qwen2Tokenizer; Qwen2.5 and Qwen3 use it too)
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""  # contractions, words, single digits
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # punctuation, newlines, spaces
)


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


def chat_template_from_hf(folder: str | Path) -> str | None:
    """A Hugging Face folder's chat template: chat_template.jinja (transformers >= 4.43 writes it), else
    tokenizer_config.json's chat_template (a string, or a list of named ones: the 'default'); None if neither."""
    folder = Path(folder)
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        return (folder / CHAT_TEMPLATE_FILE).read_text()
    config = folder / "tokenizer_config.json"
    template = json.loads(config.read_text()).get("chat_template") if config.is_file() else None
    if isinstance(template, list):
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def save_hf_tokenizer(
    tok: Tokenizer,
    out: str | Path,
    model_max_length: int,
    chat_template: str | None = None,
    template_tokens: dict[str, str] | None = None,
) -> Path:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json that AutoTokenizer loads as a
    PreTrainedTokenizerFast giving tok's ids (no BOS added, special tokens in text read as text); chat_template
    (the model's, llm/chat_template.py) goes into tokenizer_config.json, where every transformers version reads it,
    with the special tokens it names (template_tokens: bos_token, eos_token, ...).

    A chat model's template writes its turn markers as text that must become their ids, as our own rendering does
    (llm/chat_template.ChatTokens): for one, split_special_tokens is off, so apply_chat_template gives our ids."""
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
        "split_special_tokens": chat_template is None,  # "<|endoftext|>" in a text is text, as in training
        **special,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
        config |= template_tokens or {}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return out


def _gguf_pre(spec: dict) -> str | None:
    """llama.cpp's name (tokenizer.ggml.pre) for a byte-level BPE's pre-tokenizer, or None if it has none.

    llama.cpp's converter tells them apart by hashing a test string's ids; the structure says the same here."""
    pre, normalizer = spec.get("pre_tokenizer") or {}, spec.get("normalizer")
    steps = pre.get("pretokenizers", [pre])
    kinds = [p.get("type") for p in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and normalizer is None:
        return "gpt-2"  # GPT-2's regex inside ByteLevel: ours, GPT-2's
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm" if normalizer is None else None  # digits one by one, then GPT-2's regex: SmolLM, SmolLM2
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        if steps[0].get("pattern", {}).get("Regex") == QWEN2_SPLIT and steps[0].get("behavior") == "Isolated":
            return "qwen2"  # Qwen2, Qwen2.5, Qwen3 (their NFC normaliser is left out, as llama.cpp's converter does)
    return None


def gguf_vocab(tok: Tokenizer) -> dict:
    """GGUF's tokenizer.ggml.* values of a byte-level BPE: tokens by id, their types, merges, EOS id, and the
    pre-tokenizer's name.

    Byte-level BPEs are written as llama.cpp's tokenizer model 'gpt2', with one of the pre-tokenizers it knows
    (_gguf_pre): GPT-2's regex (ours), SmolLM's digits-then-GPT-2, Qwen2's regex."""
    spec = json.loads(tok.to_str())
    model = spec["model"]
    pre = _gguf_pre(spec) if model.get("type") == "BPE" else None
    if pre is None:
        steps = (spec.get("pre_tokenizer") or {}).get("pretokenizers", [spec.get("pre_tokenizer") or {}])
        kinds = [p.get("type") for p in steps]
        raise ConfigError(
            f"format=gguf: the tokenizer is {model.get('type')} with pre-tokenizers {kinds}; only byte-level BPEs "
            "with GPT-2's, SmolLM's or Qwen2's pre-tokenizer are written to GGUF"
        )
    n = tok.get_vocab_size()
    tokens = [""] * n
    for text, i in tok.get_vocab().items():
        tokens[i] = text
    added = tok.get_added_tokens_decoder()

    def kind(i: int) -> int:  # as llama.cpp's converter: special, or looking like <|...|>, is a control token
        if i not in added:
            return TOKEN_NORMAL
        looks = tokens[i].startswith("<|") and tokens[i].endswith("|>")
        return TOKEN_CONTROL if added[i].special or looks else TOKEN_USER_DEFINED

    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]  # tokenizers >= 0.20: pairs
    types = [kind(i) for i in range(n)]
    return {"tokens": tokens, "types": types, "merges": merges, "eos_id": tok.token_to_id(eod_token(tok)), "pre": pre}
