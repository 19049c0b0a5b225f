"""The LightningDataModules: folders of documents in, batches of token windows out (TextDataModule); or files of
conversations in, packed windows with the loss on the assistant's tokens out (ChatDataModule, experiment=sft).

prepare_data (once per machine): ingest -> split by document -> train the tokenizer on the training
side -> write train.bin / val.bin. All of it is cached under cache_dir by a fingerprint of the corpus
and the settings, so an unchanged corpus is tokenized once and its tokenizer reused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from llm.atomic import remove_stale_temps, write_bytes, write_text
from llm.chat_template import ChatTemplate, ChatTokens
from llm.data.conversations import Conversation, PackedWindows, read_conversations, split_conversations, tokenize
from llm.data.discover import DEFAULT_EXCLUDE, expand_paths
from llm.data.pipeline import ingest
from llm.data.reader import Settings
from llm.data.tokens import (
    EpochSampler,
    TokenWindows,
    check_align,
    token_byte_lengths,
    token_cache,
)
from llm.errors import ConfigError
from llm.retrieval.build import write_index
from llm.retrieval.grounded import synthetic
from llm.tokenizer import IGNORE, eod_id, load_tokenizer

log = logging.getLogger(__name__)


class WindowsDataModule(L.LightningDataModule):
    """What both data modules share: loaders over train_set / val_set, and the position in the epoch that a
    checkpoint saves, so that a resumed run goes on with the next batch it would have read."""

    batch_size: int
    seed: int
    num_workers: int
    val_windows: int | None

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer: Tokenizer | None = None
        self.train_set = self.val_set = None
        self._epoch, self._batches = 0, 0  # training batches consumed in this epoch (saved in checkpoints)
        self._resume: tuple[int, int] | None = None

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        n = self.train_set.windows(epoch)  # the windows of the epoch this loader starts (conversations: it varies)
        sampler = EpochSampler(n, self.batch_size, self.seed, rank, world, self._position)
        return self._loader(self.train_set, sampler)  # the last batch of an epoch may be short: no window dropped

    def val_dataloader(self) -> DataLoader | list:
        """The first val_windows validation windows (all when null), in order."""
        if self.val_set is None:
            return []
        rank, world = self._rank()
        n = len(self.val_set) if self.val_windows is None else min(self.val_windows, len(self.val_set))
        return self._loader(self.val_set, list(range(rank, n, world)))

    def _loader(self, dataset, sampler) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    # Exact resume: the checkpoint records how many training batches of which epoch were consumed;
    # the sampler of a resumed run starts after them.

    def _position(self) -> tuple[int, int]:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        skip = self._resume[1] if self._resume is not None and self._resume[0] == epoch else 0
        self._resume, self._epoch, self._batches = None, epoch, skip
        return epoch, skip

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training:
            self._batches += 1  # called as the loop takes a batch, after any prefetching
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "batches": self._batches}

    def load_state_dict(self, state: dict) -> None:
        self._resume = (state["epoch"], state["batches"])


class TextDataModule(WindowsDataModule):
    holds_documents = True  # held-out documents to score (callbacks.evaluate's bpb)

    def __init__(
        self,
        paths: str | Sequence[str],  # one path or a list; ~, $VARS and glob patterns expand
        out_dir: str,
        cache_dir: str,
        vocab_size: int,
        tokenizer_sample_mb: float,  # the BPE learns from at most this much of the training text (a sample)
        block_size: int,
        batch_size: int,
        val_fraction: float,
        seed: int,
        align: str,  # none | document: where training windows start (TokenWindows)
        document_mask: bool,  # attention within each document of a window only, positions from 0 in each
        val_windows: int | None,
        num_workers: int,
        ingest: Mapping,  # llm.data.reader.Settings: workers, time/memory limits, strategies
        tokenizer: str | None,  # a tokenizer.json to encode with instead of training a BPE (init_from sets it)
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
    ) -> None:
        """Every value is checked here, before any work: a bad one is a ConfigError naming its data.* key."""
        super().__init__()
        self.chat_template = None  # documents: a base model, which chats through the plain template
        self.paths = [str(p) for p in expand_paths(paths, key="data.paths")]
        if block_size < 1:
            raise ConfigError(f"data.block_size={block_size} (it follows model.config.block_size) must be at least 1")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size} must be at least 1")
        if val_windows is not None and val_windows < 1:
            raise ConfigError(f"data.val_windows={val_windows} must be at least 1, or null (all of them)")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={val_fraction} must be in [0, 1)")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers={num_workers} must be 0 (load in the main process) or more")
        if vocab_size < 259:  # byte-level BPE: the special tokens and the 256 bytes come first
            raise ConfigError(
                f"data.vocab_size={vocab_size} (it follows model.config.vocab_size) must be at least 259: "
                "the end-of-document token, the two chat markers and the 256 bytes"
            )
        if tokenizer is not None and not Path(tokenizer).is_file():
            raise ConfigError(f"data.tokenizer={tokenizer}: no such file (a tokenizer.json, or null to train one)")
        self.tokenizer_file = Path(tokenizer) if tokenizer is not None else None
        self.out_dir = Path(out_dir)
        self.cache_dir = Path(cache_dir)
        self.vocab_size = vocab_size
        if tokenizer_sample_mb <= 0:
            raise ConfigError(f"data.tokenizer_sample_mb={tokenizer_sample_mb} must be more than 0")
        self.tokenizer_sample_mb = tokenizer_sample_mb
        self.block_size = block_size
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.val_windows = val_windows
        self.num_workers = num_workers
        self.align = check_align(align)
        if not isinstance(document_mask, bool):
            raise ConfigError(f"data.document_mask={document_mask!r} is not one of [true, false]")
        self.document_mask = document_mask
        self.exclude = tuple(exclude)
        Settings.from_mapping(ingest)  # checked now; the workers build their own from the mapping
        self.ingest_settings = dict(ingest or {})
        self.meta: dict = {}

    @property
    def pointer(self) -> Path:
        return self.out_dir / "dataset.json"  # tells every rank where prepare_data put the tokens

    def prepare_data(self) -> None:
        remove_stale_temps(self.out_dir)  # left by a killed write of the manifest or the tokenizer
        result = ingest(
            self.paths, self.out_dir, self.exclude, settings=self.ingest_settings, cache_dir=self.cache_dir / "ingest"
        )
        docs = result.documents
        if not docs:
            raise ConfigError(
                f"data.paths: no usable document under {self.paths}: see {self.out_dir / 'manifest.jsonl'}"
            )
        write_index(docs, self.paths, self.cache_dir, self.out_dir)  # answers cite the run's documents (retrieval)
        folder = token_cache(
            docs,
            self.cache_dir,
            self.vocab_size,
            self.val_fraction,
            self.seed,
            self.tokenizer_sample_mb,
            self.tokenizer_file,
        )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_bytes(self.out_dir / "tokenizer.json", (folder / "tokenizer.json").read_bytes())
        write_text(self.pointer, json.dumps({"folder": str(folder.resolve())}))

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        folder = Path(json.loads(self.pointer.read_text())["folder"])
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        self.tokenizer = load_tokenizer(folder / "tokenizer.json")
        dtype, eod = self.meta["dtype"], eod_id(self.tokenizer)
        mask = self.document_mask
        self.train_set = TokenWindows(
            folder / "train.bin", dtype, self.block_size, eod, self.seed, self.align, None, mask
        )
        self.val_set = None
        if self.meta["val_tokens"] > 0:  # phase 0, in order: the same windows every validation and every run
            token_bytes = token_byte_lengths(self.tokenizer)
            val = folder / "val.bin"
            self.val_set = TokenWindows(val, dtype, self.block_size, eod, None, "none", token_bytes, mask)


class ChatDataModule(WindowsDataModule):
    """Conversations in (.jsonl files, OpenAI's format), packed windows out, the loss on the assistant's tokens only
    (llm/data/conversations.py). The model to fine-tune brings the tokenizer and the chat template (init_from);
    the checkpoint carries the template on to infer.py, the server and the export."""

    holds_documents = False  # conversations: its val/bpb is over the assistant's tokens

    def __init__(
        self,
        paths: str | Sequence[str],  # .jsonl files, or folders of them
        out_dir: str,
        block_size: int,
        batch_size: int,
        val_fraction: float,
        seed: int,
        val_windows: int | None,
        num_workers: int,
        tokenizer: str | None,  # the model's tokenizer.json (init_from sets it)
        chat_template: str | None,  # a JSON file of the template (init_from sets it); null: ChatML
        synthetic: int,  # made-up grounded conversations added (experiment=grounded, llm/retrieval/grounded.py)
        passages: int,  # at most this many passages in each made-up conversation
        questions: int,  # at most this many questions asked of each made-up conversation's passages
    ) -> None:
        super().__init__()
        if isinstance(synthetic, bool) or not isinstance(synthetic, int) or synthetic < 0:
            raise ConfigError(f"data.synthetic={synthetic!r} must be a whole number of conversations, 0 for none")
        for key, value in (("data.passages", passages), ("data.questions", questions)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}={value!r} must be a whole number, at least 1")
        self.synthetic, self.passages, self.questions = synthetic, passages, questions
        self.paths = expand_paths(paths, key="data.paths") if (paths or not synthetic) else []
        if tokenizer is None:
            raise ConfigError(
                "data.tokenizer is null: experiment=sft fine-tunes a model, give it with init_from=PATH "
                "(one of our checkpoints or run folders, or a Hugging Face folder)"
            )
        for key, value in (("data.tokenizer", tokenizer), ("data.chat_template", chat_template)):
            if value is not None and not Path(value).is_file():
                raise ConfigError(f"{key}={value}: no such file")
        if block_size < 1 or batch_size < 1:
            raise ConfigError(f"data.block_size={block_size} and data.batch_size={batch_size} must be at least 1")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={val_fraction} must be in [0, 1)")
        if val_windows is not None and val_windows < 1:
            raise ConfigError(f"data.val_windows={val_windows} must be at least 1, or null (all of them)")
        self.out_dir, self.tokenizer_file = Path(out_dir), Path(tokenizer)
        self.template_file = Path(chat_template) if chat_template is not None else None
        self.block_size, self.batch_size, self.val_fraction = block_size, batch_size, val_fraction
        self.seed, self.val_windows, self.num_workers = seed, val_windows, num_workers
        self.chat_template: ChatTemplate | None = None

    def train_dataloader(self) -> DataLoader:
        """The windows of the epoch that starts: Lightning must ask for them every epoch, since each packs anew."""
        every = self.trainer.reload_dataloaders_every_n_epochs if self.trainer is not None else 1
        if every != 1:
            raise ConfigError(
                f"trainer.reload_dataloaders_every_n_epochs={every} must be 1 for conversations: each epoch packs them "
                "anew, and the loader must be made again to read that epoch's windows (experiment=sft sets it)"
            )
        return super().train_dataloader()

    def _files(self) -> list[Path]:
        files = []
        for path in self.paths:
            files += sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
        return files

    def prepare_data(self) -> None:
        conversations, records = read_conversations(self._files())
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.out_dir / "manifest.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        write_bytes(self.out_dir / "tokenizer.json", self.tokenizer_file.read_bytes())
        if not conversations and not self.synthetic:
            raise ConfigError(
                f"data.paths: no usable conversation in {[str(p) for p in self.paths]}: "
                f"see {self.out_dir / 'manifest.jsonl'}"
            )

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        self.tokenizer = load_tokenizer(self.tokenizer_file)
        template = json.loads(self.template_file.read_text()) if self.template_file is not None else None
        self.chat_template = ChatTemplate.from_dict(template) if template else ChatTemplate.chatml()
        chat = ChatTokens(self.chat_template, self.tokenizer)
        conversations, _ = read_conversations(self._files())  # small files: each rank reads them again
        fits = lambda messages: len(chat.training_example(messages)[0]) <= self.block_size + 1  # noqa: E731
        made_up = synthetic(self.synthetic, self.passages, self.questions, self.seed, fits)
        conversations += [Conversation("synthetic", i, messages) for i, messages in enumerate(made_up, start=1)]
        train, val = split_conversations(conversations, self.val_fraction, self.seed)
        token_bytes = token_byte_lengths(self.tokenizer)
        pad = eod_id(self.tokenizer)
        self.train_set = PackedWindows(tokenize(train, chat), self.block_size, pad, token_bytes, self.seed, False)
        self.val_set = (
            PackedWindows(tokenize(val, chat), self.block_size, pad, token_bytes, None, True) if val else None
        )
        scored = int((self.train_set.packed(0)[1] != IGNORE).sum())
        log.info(
            "conversations: %d train (%d windows in epoch 0, packed anew each epoch, %d assistant tokens to learn), "
            "%d val; template %s",
            len(train),
            len(self.train_set),
            scored,
            len(val),
            self.chat_template.name,
        )
