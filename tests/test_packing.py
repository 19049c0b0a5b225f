"""Packed windows keep their documents apart: a conversation packed behind others has the logits it has alone
(positions from 0, attention inside it only), each epoch packs the conversations anew, and a killed fine-tuning run
resumes onto the same windows and the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llm.config import model_preset
from llm.data.conversations import PackedWindows, pack
from llm.data.tokens import document_positions
from llm.model import GPT, document_mask
from llm.tokenizer import IGNORE
from llm.training.module import LitGPT
from tests.test_scale import ROOT, final_weights

BYTES = np.ones(512, dtype=np.int64)  # one byte a token: enough for packing


def examples(lengths: list[int], seed: int = 0) -> list[tuple[list[int], list[bool]]]:
    """Made-up conversations: random ids in 3..299, the second half of each the assistant's to learn."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(3, 300, n).tolist(), [i >= n // 2 for i in range(n)]) for n in lengths]


def net(attn: str, pos: str) -> GPT:
    """A tiny model of the default recipe's layout whose every weight is random: with the zero-initialised
    projections of a fresh model, attention would add nothing and any mask would pass."""
    config = model_preset("tiny", vocab_size=320, block_size=64, n_layer=3, n_embd=32, n_head=4, n_kv_head=2)
    config.attn, config.pos = attn, pos
    torch.manual_seed(0)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("pos_kind", ["rope", "learned"])
@pytest.mark.parametrize("attn", ["sdpa", "explicit"])
def test_a_packed_conversation_has_the_logits_it_has_alone(attn: str, pos_kind: str) -> None:
    model = net(attn, pos_kind)
    lit = LitGPT(model, None, compile=False, seed=0)
    convs = examples([7, 23, 3, 15, 9], seed=1)  # short and long, five to a window
    x, _, pos, _ = pack(convs, 63, pad_id=0, token_bytes=BYTES)
    assert len(x) == 1  # all five in one window, padding after them
    with torch.no_grad():
        packed = lit(x, pos)[0]
        unmasked = lit(x)[0]  # the same window with the mask off: attention runs across the conversations
    start, leaked = 0, 0.0
    for i, (ids, _) in enumerate(convs):
        n = len(ids) - (i == len(convs) - 1)  # the window's last token is a target only, never an input
        with torch.no_grad():
            alone = model(torch.tensor([ids[:n]]))[0]
        torch.testing.assert_close(packed[start : start + n], alone, atol=1e-5, rtol=1e-5)
        leaked = max(leaked, float((unmasked[start : start + n] - alone).abs().max()))
        start += len(ids)
    assert leaked > 1e-2  # without the mask the later conversations see the earlier ones: this test tests the mask


def test_document_mask_and_positions_from_end_of_document_tokens() -> None:
    x = torch.tensor([5, 6, 0, 7, 8, 9, 0, 0, 4])  # 0 ends a document: the next token starts one
    pos = document_positions(x, eod=0)
    assert pos.tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 0]
    mask = document_mask(pos[None])[0, 0]
    assert mask.shape == (9, 9) and mask[4].tolist() == [False, False, False, True, True, False, False, False, False]
    assert mask[2, :3].all() and not mask[3, :3].any()  # the end token belongs to the document it ends
    assert mask.diagonal().all() and not mask.triu(1).any()  # causal, and every query sees itself


def test_each_epoch_packs_the_conversations_anew_and_the_same_seed_packs_the_same() -> None:
    convs = examples([5, 17, 9, 30, 4, 11, 8, 21, 6, 13, 25, 3], seed=2)
    data = PackedWindows(convs, 32, 0, BYTES, seed=7, with_bytes=False)
    windows = {e: data.packed(e) for e in range(4)}
    assert not torch.equal(windows[0][0][: len(windows[1][0])], windows[1][0][: len(windows[0][0])])
    assert len({tuple(windows[e][0].flatten().tolist()) for e in windows}) == 4  # four epochs, four packings
    learned = sorted(t for ids, keep in convs for t, k in zip(ids[1:], keep[1:], strict=True) if k)
    for e, (x, y, pos, _) in windows.items():
        assert sorted(y[y != IGNORE].tolist()) == learned, e  # every conversation once an epoch, nothing lost
        assert data.windows(e) == len(x) and int((pos == 0).sum()) >= len(convs)
    again = PackedWindows(convs, 32, 0, BYTES, seed=7, with_bytes=False)
    for e in (3, 1):  # any order of asking: a resumed run packs its epoch as the killed one did
        assert all(torch.equal(a, b) for a, b in zip(again.packed(e), windows[e], strict=True))
    assert torch.equal(again[(1, 2)]["input"], windows[1][0][2])
    fixed = PackedWindows(convs, 32, 0, BYTES, seed=None, with_bytes=True)
    assert torch.equal(fixed.packed(0)[0], fixed.packed(5)[0]) and "bytes" in fixed[0]  # validation: one packing


def test_a_piece_of_a_cut_conversation_with_nothing_to_learn_is_left_out() -> None:
    long_system = (list(range(3, 83)), [False] * 70 + [True] * 10)  # 80 tokens, the assistant's at the end
    x, y, pos, n_bytes = pack([long_system, *examples([5, 6])], 31, 0, BYTES)
    assert len(x) >= 2 and bool(((y != IGNORE).sum(1) > 0).all())  # every window has something to learn
    learned = (y != IGNORE).sum().item()
    assert learned == 10 + 3 + 3  # the long one's 10 (none lost), and the second halves of the short ones


def test_conversations_refuse_a_loader_made_once(tmp_path: Path) -> None:
    from llm.data.datamodule import ChatDataModule
    from llm.errors import ConfigError

    class Trainer:
        reload_dataloaders_every_n_epochs = 0
        current_epoch = 0

    (tmp_path / "tok.json").write_text("{}")
    dm = ChatDataModule(
        tmp_path, str(tmp_path / "out"), 32, 2, 0.1, 0, None, 0, str(tmp_path / "tok.json"), None, 0, 3, 3
    )
    dm.trainer = Trainer()
    with pytest.raises(ConfigError, match=r"trainer.reload_dataloaders_every_n_epochs=0 must be 1"):
        dm.train_dataloader()


# ------------------------------------------------------------------------------------ a killed fine-tuning run

SHAPE = [
    "model.config.n_layer=2",
    "model.config.n_embd=32",
    "model.config.n_head=2",
    "model.config.n_kv_head=1",
    "model.config.block_size=96",
    "model.config.vocab_size=320",
    "trainer.accelerator=cpu",
    "data.batch_size=2",
]


@pytest.mark.slow
def test_a_killed_fine_tuning_run_packs_the_same_windows_and_ends_bit_exact(tmp_path: Path, corpus: Path) -> None:
    from llm.train import train
    from tests.conftest import compose_train

    base = compose_train(tmp_path / "base", [*SHAPE, f"data.paths=[{corpus}]", "trainer.max_steps=2"], tiny=False)
    train(base)
    chats = tmp_path / "chats.jsonl"
    with open(chats, "w") as f:
        for i in range(10):  # short and long answers, one to four to a window
            reply = "ok " * (1 + i % 4 * 5)
            turns = [{"role": "user", "content": f"item {i}?"}, {"role": "assistant", "content": reply}]
            f.write(json.dumps({"messages": turns}) + "\n")
    common = [
        *SHAPE,
        "experiment=sft",
        f"init_from={base.paths.output_dir}",
        f"data.paths=[{chats}]",
        "trainer.max_steps=12",
        "trainer.val_check_interval=5",
        "callbacks.last.every_n_train_steps=3",  # step 6: in the middle of an epoch
        "+callbacks.record._target_=tests.helpers.RecordBatches",
        "model.config.dropout=0.1",  # the random draws must resume too
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    train_py = [sys.executable, str(ROOT / "train.py"), f"paths.cache_dir={tmp_path / 'cache'}"]

    def run(name: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
        args = [*common, f"+callbacks.record.out={tmp_path / name}.txt", f"hydra.run.dir={tmp_path / name}", *extra]
        proc = subprocess.run([*train_py, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert not check or proc.returncode == 0, proc.stderr[-3000:]
        return proc

    run("unbroken")
    killed = run("killed", "+callbacks.kill._target_=tests.helpers.KillAtStep", "+callbacks.kill.step=8", check=False)
    assert killed.returncode == -9
    assert torch.load(tmp_path / "killed/checkpoints/last.ckpt", weights_only=True)["global_step"] == 6
    run("killed", f"ckpt_path={tmp_path / 'killed'}")  # no kill callback this time

    def batches(name: str) -> dict[int, str]:
        lines = [line.split(" ", 2) for line in (tmp_path / f"{name}.txt").read_text().splitlines()]
        return {int(step): f"{epoch} {digest}" for step, epoch, digest in lines}  # the resumed run's win

    unbroken, resumed = batches("unbroken"), batches("killed")
    assert sorted(unbroken) == list(range(12)) and resumed == unbroken
    epochs = [int(v.split()[0]) for v in unbroken.values()]
    assert max(epochs) >= 2  # several epochs, each packed anew: the windows of each differ
    by_epoch = {e: {v.split()[1] for v in unbroken.values() if int(v.split()[0]) == e} for e in set(epochs)}
    assert by_epoch[0].isdisjoint(by_epoch[1])
    a, b = final_weights(tmp_path / "unbroken"), final_weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
