"""The LightningDataModule: folders in, batches of token windows out.

prepare_data (once per machine): ingest -> split by document -> train the tokenizer on the training
side -> write train.bin / val.bin. All of it is cached under cache_dir by a fingerprint of the corpus
and the settings, so an unchanged corpus is tokenized once and its tokenizer reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from llm.atomic import fsync_dir, remove_stale_temps, write_bytes, write_text
from llm.data.discover import DEFAULT_EXCLUDE, expand_paths
from llm.data.pipeline import ingest
from llm.data.reader import Settings
from llm.data.tokens import (
    EpochSampler,
    TokenWindows,
    check_align,
    split_documents,
    token_byte_lengths,
    token_dtype,
    tokenizer_sample,
    write_tokens,
)
from llm.errors import ConfigError
from llm.tokenizer import eod_id, load_tokenizer, train_tokenizer

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when the token files or the tokenizer recipe change (2: <|endoftext|> in text is text)


class TextDataModule(L.LightningDataModule):
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
        val_windows: int | None,
        num_workers: int,
        ingest: Mapping,  # llm.data.reader.Settings: workers, time/memory limits, strategies
        tokenizer: str | None,  # a tokenizer.json to encode with instead of training a BPE (init_from sets it)
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
    ) -> None:
        """Every value is checked here, before any work: a bad one is a ConfigError naming its data.* key."""
        super().__init__()
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
        if vocab_size < 257:  # byte-level BPE: the 256 bytes and the end-of-document token come first
            raise ConfigError(
                f"data.vocab_size={vocab_size} (it follows model.config.vocab_size) must be at least 257: "
                "the 256 bytes and the end-of-document token"
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
        self.exclude = tuple(exclude)
        Settings.from_mapping(ingest)  # checked now; the workers build their own from the mapping
        self.ingest_settings = dict(ingest or {})
        self.tokenizer: Tokenizer | None = None
        self.meta: dict = {}
        self._epoch, self._batches = 0, 0  # training batches consumed in this epoch (saved in checkpoints)
        self._resume: tuple[int, int] | None = None

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
        settings = [FORMAT_VERSION, self.vocab_size, self.val_fraction, self.seed, self.tokenizer_sample_mb]
        if self.tokenizer_file is not None:  # a given tokenizer: its content, not a vocab size, fixes the ids
            settings.append(hashlib.sha256(self.tokenizer_file.read_bytes()).hexdigest())
        # text_key changes with the source, the ingester's version and its settings: new text, new tokens
        digest = hashlib.sha256(json.dumps([settings, sorted((d.path, d.text_key) for d in docs)]).encode())
        folder = self.cache_dir / digest.hexdigest()[:16]
        if (folder / "meta.json").exists():
            log.info("corpus unchanged: reusing tokenizer and tokens in %s", folder)
        else:
            self._build(docs, folder)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_bytes(self.out_dir / "tokenizer.json", (folder / "tokenizer.json").read_bytes())
        write_text(self.pointer, json.dumps({"folder": str(folder.resolve())}))

    def _build(self, docs, folder: Path) -> None:
        train_docs, val_docs = split_documents(docs, self.val_fraction, self.seed)
        folder.parent.mkdir(parents=True, exist_ok=True)
        for old in folder.parent.glob(f"{folder.name}.*.tmp"):  # left by a run that was killed while building
            if not _alive(old.name.split(".")[1]):
                shutil.rmtree(old, ignore_errors=True)
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")  # two runs building at once never share it
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        if self.tokenizer_file is not None:
            tok = load_tokenizer(self.tokenizer_file)
            if tok.get_vocab_size() > self.vocab_size:
                raise ConfigError(
                    f"data.tokenizer={self.tokenizer_file} has {tok.get_vocab_size()} tokens, more than "
                    f"data.vocab_size={self.vocab_size} (model.config.vocab_size)"
                )
        else:
            sample = tokenizer_sample(train_docs, int(self.tokenizer_sample_mb * 2**20), self.seed)
            tok = train_tokenizer(sample, self.vocab_size)
        write_text(tmp / "tokenizer.json", tok.to_str(pretty=True))
        meta = {
            "dtype": token_dtype(tok.get_vocab_size()).name,
            "vocab_size": tok.get_vocab_size(),
            "train_tokens": write_tokens(train_docs, tok, tmp / "train.bin"),
            "val_tokens": write_tokens(val_docs, tok, tmp / "val.bin") if val_docs else 0,
            "train_docs": [d.path for d in train_docs],
            "val_docs": [d.path for d in val_docs],
        }
        write_text(tmp / "meta.json", json.dumps(meta, indent=1))
        if (folder / "meta.json").exists():  # another run finished the same entry first: use that one
            shutil.rmtree(tmp, ignore_errors=True)
            return
        try:
            tmp.rename(folder)  # the cache entry appears whole or not at all
            fsync_dir(folder.parent)
        except OSError:
            if not (folder / "meta.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # lost the race to an identical entry
        counts = f"{meta['train_tokens']} train / {meta['val_tokens']} val tokens, vocab {meta['vocab_size']}"
        log.info("tokenized %d docs: %s -> %s", len(docs), counts, folder)

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        folder = Path(json.loads(self.pointer.read_text())["folder"])
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        self.tokenizer = load_tokenizer(folder / "tokenizer.json")
        dtype, eod = self.meta["dtype"], eod_id(self.tokenizer)
        self.train_set = TokenWindows(folder / "train.bin", dtype, self.block_size, eod, self.seed, self.align)
        self.val_set = None
        if self.meta["val_tokens"] > 0:  # phase 0, in order: the same windows every validation and every run
            token_bytes = token_byte_lengths(self.tokenizer)
            self.val_set = TokenWindows(folder / "val.bin", dtype, self.block_size, eod, None, "none", token_bytes)

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        sampler = EpochSampler(len(self.train_set), self.batch_size, self.seed, rank, world, self._position)
        return self._loader(self.train_set, sampler)  # the last batch of an epoch may be short: no window dropped

    def val_dataloader(self) -> DataLoader | list:
        """The first val_windows windows of val.bin (all when null), consecutive from its first token."""
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


def _alive(pid: str) -> bool:
    """Whether process pid still runs: the build folder it owns is not stale."""
    try:
        os.kill(int(pid), 0)
    except PermissionError:  # it runs, as another user
        return True
    except (ValueError, ProcessLookupError):
        return False
    return True
