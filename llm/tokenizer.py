"""Byte-level BPE trained on your own corpus with Hugging Face `tokenizers`.

Byte-level means every string round-trips: the base alphabet is the 256 bytes, so nothing is ever
unknown, and merges learned from the corpus make frequent byte sequences single tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOD = "<|endoftext|>"  # separates documents in the token stream
# ChatML's turn markers, reserved in every tokenizer we train (ids 1 and 2), so any model trained here can be
# fine-tuned to chat (experiment=sft, llm/chat_template.py) without growing its embeddings. Like EOD they are
# inserted by id only: the same strings in a document are text.
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (EOD, IM_START, IM_END)
# A tokenizer imported with a pretrained model ends documents with its own token: GPT-2's is EOD; Llama 3's,
# Llama 2's / Mistral's and Gemma's are these, looked up in this order.
END_TOKENS = (EOD, "<|end_of_text|>", "</s>", "<eos>")
# Not a token: the target of a position with nothing to predict (the padding of a short window, llm/data/tokens.py).
# F.cross_entropy's default ignore_index, so the loss (llm/training/module.py) skips it.
IGNORE = -100


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Learn merges from texts until the vocabulary holds vocab_size tokens (or no pair repeats)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_batched(texts), trainer=trainer)
    return _text_is_text(tok)


def _text_is_text(tok: Tokenizer) -> Tokenizer:
    """The string "<|endoftext|>" (or a chat marker) inside a document or prompt is encoded as ordinary text: only
    the data pipeline inserts the end-of-document token, by id, and only a chat template its markers
    (llm/chat_template.py). (Not saved in tokenizer.json: set on load.)"""
    tok.encode_special_tokens = True
    return tok


def _batched(texts: Iterable[str], size: int = 256) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def eod_token(tok: Tokenizer) -> str:
    """The end-of-document token: the first of END_TOKENS the tokenizer has."""
    for token in END_TOKENS:
        if tok.token_to_id(token) is not None:
            return token
    raise ValueError(f"tokenizer has none of the end-of-document tokens {list(END_TOKENS)}")


def eod_id(tok: Tokenizer) -> int:
    return tok.token_to_id(eod_token(tok))


def load_tokenizer(source: str | Path) -> Tokenizer:
    """From a tokenizer.json path, or from the JSON string a checkpoint carries."""
    if isinstance(source, Path) or not source.lstrip().startswith("{"):
        return _text_is_text(Tokenizer.from_file(str(source)))
    return _text_is_text(Tokenizer.from_str(source))
