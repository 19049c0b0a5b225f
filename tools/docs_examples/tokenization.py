"""docs/tokenization.md: a byte-level BPE learned from a few lines of text."""

from __future__ import annotations

from collections.abc import Callable

from tokenizers import Tokenizer

from llm.tokenizer import SPECIAL_TOKENS, train_tokenizer
from tools.docs_examples.printing import text

TOKENIZER_TEXT = (
    "Hello World! Hello world, hello there.\n"
    "def hello_world():\n    print('Hello World!')\n"
    "The world says hello. Hello, World!\n"
) * 3


def tokenizer_example(vocab_size: int = 300) -> Tokenizer:
    """A byte-level BPE learned by llm.tokenizer.train_tokenizer from TOKENIZER_TEXT."""
    return train_tokenizer([TOKENIZER_TEXT], vocab_size=vocab_size)


def render_tokenizer() -> str:
    tok = tokenizer_example()
    vocab = tok.get_vocab()
    n_base = len(SPECIAL_TOKENS) + 256  # the special tokens, then the 256 byte symbols
    learned = sorted((i, t) for t, i in vocab.items() if i >= n_base)
    specials = ", ".join(f"{t} (id {vocab[t]})" for t in SPECIAL_TOKENS)
    lines = []
    for s in ("Hello World!", "hello_world", "Hello, café"):
        enc = tok.encode(s)
        pieces = "  ".join(f"{t!r}:{i}" for t, i in zip(enc.tokens, enc.ids, strict=True))
        lines.append(f"{s!r:16} -> {len(enc.ids):2} tokens  {pieces}")
        assert tok.decode(enc.ids) == s  # byte-level: every string round-trips
    return text(
        f"vocabulary: {tok.get_vocab_size()} tokens = {specials}\n"
        f"  + 256 bytes (ids {len(SPECIAL_TOKENS)}-{n_base - 1}) + {len(learned)} learned merges",
        "first learned tokens (id: token)\n" + "\n".join(f"{i}: {t!r}" for i, t in learned[:12]),
        "\n".join(lines),
    )


BLOCKS: dict[str, Callable[[], str]] = {
    "tokenizer": render_tokenizer,
}
