"""bench/speedrun.py's recipes: the rows it compares are the configs train.py would build, changed where it says."""

from dataclasses import replace

import pytest

from bench.speedrun import MODDED_MUON, ablations, other_optimizer, recipes
from llm.config import model_preset
from llm.training.optim import optim_preset


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_the_three_recipes_are_nanogpt_ours_and_modded_nanogpt_at_one_size(preset):
    peers, ours, modded = recipes(preset, vocab_size=2048)
    shape = model_preset(preset, vocab_size=2048, dropout=0.0, attn="sdpa")
    for recipe in (*peers, ours, modded):  # one size: layers, width, heads and context
        for key in ("n_layer", "n_embd", "n_head", "block_size", "vocab_size"):
            assert getattr(recipe.model, key) == getattr(shape, key), (recipe.name, key)
    assert [p.optim.beta2 for p in peers] == [0.95, 0.99] and all(p.optim.muon is None for p in peers)
    assert peers[0].model.pos == "learned" and peers[0].model.norm == "layernorm" and peers[0].model.mlp == "gelu"
    assert ours.optim == optim_preset("muon").for_width(shape.n_embd)  # the default optimizer, as training builds it
    m, o = modded.model, modded.optim
    assert (m.value_embeds, m.unet_skips, m.tie_embeddings, m.logit_softcap) == (1, True, True, 15.0)
    assert (o.mtp_weights, o.untie_at) == ((0.5, 0.25), pytest.approx(2 / 3))  # a tied head untied late; t+2, t+3
    assert m.n_kv_head == m.n_head and (m.pos, m.mlp, m.qk_norm, m.norm) == ("rope", "relu2", True, "rmsnorm")
    assert (o.schedule, o.warmup_steps, o.beta1, o.weight_decay) == ("wsd", 0, 0.8, 0.0)
    assert o.muon.lr == pytest.approx(MODDED_MUON["lr"] * ours.optim.muon.lr / optim_preset("muon").muon.lr)
    assert (o.muon.ns, o.muon.normuon_beta2) == ("polar_express", 0.95)
    assert all(p.optim.warmup_steps == optim_preset("adamw").warmup_steps for p in peers)


def test_peer_warmup_changes_only_nanogpts_warmup():
    peers, ours, modded = recipes("small", vocab_size=2048)
    short, ours2, modded2 = recipes("small", vocab_size=2048, peer_warmup=7)
    assert [p.optim.warmup_steps for p in short] == [7, 7]
    assert [replace(p.optim, warmup_steps=0) for p in short] == [replace(p.optim, warmup_steps=0) for p in peers]
    assert (ours2, modded2) == (ours, modded)


def test_ablations_change_one_thing_each_and_only_an_optimizer_swap_sweeps_its_own_lrs():
    peers, ours, _ = recipes("tiny", vocab_size=2048)
    changed = {r.name.removeprefix("ours, "): r for r in ablations(peers[0], ours)}
    schedule = f"schedule={'cosine' if ours.optim.schedule == 'wsd' else 'wsd'}"  # the other one
    norm = f"norm={'rmsnorm' if ours.model.norm == 'layernorm' else 'layernorm'}"
    value_embeds = f"value_embeds={0 if ours.model.value_embeds else 1}"
    normuon = f"muon.normuon_beta2={None if ours.optim.muon.normuon_beta2 else 0.95}"  # NorMuon undone, or added
    wanted = {"AdamW", schedule, norm, value_embeds, "muon.ns=polar_express", normuon}
    wanted |= {"mtp_weights=[0.5, 0.25]", "untie_at=0.67", f"document_mask={not ours.document_mask}"}
    assert wanted | {"unet_skips=True", "pos=learned"} <= set(changed)
    for name, recipe in changed.items():
        model_diff = {k for k, v in recipe.model.to_dict().items() if v != getattr(ours.model, k)} - {"mlp_hidden"}
        optim_same = recipe.optim == ours.optim
        mask_diff = recipe.document_mask != ours.document_mask
        assert len(model_diff) + (not optim_same) + mask_diff == 1 or name == "AdamW", (name, model_diff)
        assert other_optimizer(recipe, ours) == (name == "AdamW")
    assert changed[schedule].optim.schedule != ours.optim.schedule and changed[schedule].model == ours.model


def test_a_bench_run_unties_its_head_and_predicts_further_tokens_as_train_py_does(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import numpy as np
    import torch

    from bench.speedrun import Recipe, Run, Tokens

    rng = np.random.default_rng(0)
    rng.integers(0, 64, 4000).astype(np.uint16).tofile(tmp_path / "train.bin")
    rng.integers(0, 64, 600).astype(np.uint16).tofile(tmp_path / "val.bin")
    data = Tokens(tmp_path, "uint16", 16, 4, 4, 0, torch.device("cpu"))
    model = model_preset("tiny", vocab_size=64, block_size=16, n_layer=2, n_head=2, n_kv_head=1, n_embd=32)
    optim = replace(optim_preset("muon"), untie_at=0.5, mtp_weights=(0.5,))
    args = SimpleNamespace(seed=0, compile=False, minutes=1.0, bf16=False, clip=1.0)
    run = Run(Recipe("ours", model, optim), optim, data, torch.ones(64, dtype=torch.long), args)
    monkeypatch.setattr(Run, "expected_steps", lambda self: 6)  # as if the clock said 6 steps fit
    seen = []
    monkeypatch.setattr("bench.speedrun.multi_token_losses", lambda lg, y, w: seen.append(w) or (lg.sum(), lg.mean()))
    for _ in range(6):
        run.train_step()
    assert run.net.lm_head.weight.grad is not None  # the steps after untying train the head itself
    assert not run.net.config.tie_embeddings and run.net.lm_head.weight is not run.net.wte.weight  # at step 3 of 6
    assert any(p is run.net.lm_head.weight for g in run.opt.param_groups for p in g["params"])
    assert seen[0] == [1.0, 0.5] and seen[-1] == [1.0, 0.0]  # the extra weight falls to 0 by 0.67 of the run


def test_a_bench_run_with_the_document_mask_attends_within_each_document(tmp_path):
    """The ablation's run trains and validates each document of a window alone, as train.py does with
    data.document_mask: a change to one document leaves the logits of the next alone."""
    import numpy as np
    import torch

    from bench.speedrun import Recipe, Run, Tokens

    rng = np.random.default_rng(0)
    rng.integers(1, 64, 4000).astype(np.uint16).tofile(tmp_path / "train.bin")
    rng.integers(1, 64, 600).astype(np.uint16).tofile(tmp_path / "val.bin")
    from types import SimpleNamespace

    data = Tokens(tmp_path, "uint16", 16, 4, 4, 0, torch.device("cpu"))
    model = model_preset("tiny", vocab_size=64, block_size=16, n_layer=2, n_head=2, n_kv_head=1, n_embd=32)
    model.zero_init_proj = False  # attention that adds something from the first step
    args = SimpleNamespace(seed=0, compile=False, minutes=1.0, bf16=False, clip=1.0)
    runs = {
        m: Run(
            Recipe("ours", model, optim_preset("muon"), document_mask=m),
            optim_preset("muon"),
            data,
            torch.ones(64, dtype=torch.long),
            args,
        )
        for m in (False, True)
    }
    x = torch.randint(1, 64, (1, 16))
    x[0, 6] = 0  # a document ends at 6: the next starts at 7
    y = x.clone()
    y[0, 2] = (x[0, 2] + 1) % 63 + 1  # another token in the first document
    with torch.no_grad():
        masked = [runs[True].forward(t) for t in (x, y)]
        plain = [runs[False].forward(t) for t in (x, y)]
    torch.testing.assert_close(masked[0][0, 7:], masked[1][0, 7:])  # the second document never sees the first
    assert not torch.allclose(plain[0][0, 7:], plain[1][0, 7:])
    runs[True].train_step()
    runs[True].evaluate()
    assert np.isfinite(runs[True].final_bpb)


def test_nanogpts_random_windows_are_slices_of_the_split_at_offsets_drawn_anew_each_batch(tmp_path):
    import numpy as np
    import torch

    from bench.speedrun import Tokens

    train = np.arange(3000, dtype=np.uint16)  # each token its own position: a window shows where it starts
    train.tofile(tmp_path / "train.bin")
    np.zeros(200, dtype=np.uint16).tofile(tmp_path / "val.bin")
    data = Tokens(tmp_path, "uint16", 16, 8, 4, 0, torch.device("cpu"))
    draw = data.batches(seed=3, sampling="random")
    batches = [next(draw) for _ in range(20)]
    starts = torch.cat([x[:, 0] for x, _ in batches])
    for x, y in batches:  # contiguous windows, targets one token on
        assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(8, 15, dtype=torch.long)) and torch.equal(y, x + 1)
    assert (starts % 16 != starts[0] % 16).any()  # offsets not on one grid, as an epoch's windows are
    again = data.batches(seed=3, sampling="random")
    assert all(torch.equal(next(again)[0], x) for x, _ in batches)  # the same seed, the same batches
    epoch = next(data.batches(seed=3))[0][:, 0]
    assert (epoch % 16 == epoch[0] % 16).all()  # the epoch sampler's windows share one phase


def test_the_nanogpt_row_sweeps_beta2_and_window_sampling():
    peers, _, _ = recipes("tiny", vocab_size=2048, peer_sampling=("epoch", "random"))
    swept = [(p.optim.beta2, p.sampling) for p in peers]
    assert swept == [(b2, sampling) for sampling in ("epoch", "random") for b2 in (0.95, 0.99)]
    assert all(p.model == peers[0].model for p in peers)
