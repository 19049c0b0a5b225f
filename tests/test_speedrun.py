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
    assert (m.value_embeds, m.unet_skips, m.tie_embeddings, m.logit_softcap) == (1, True, False, 15.0)
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
    wanted = {"AdamW", schedule, norm, value_embeds, "muon.ns=polar_express", "muon.normuon_beta2=0.95"}
    assert wanted | {"unet_skips=True", "pos=learned"} <= set(changed)
    for name, recipe in changed.items():
        model_diff = {k for k, v in recipe.model.to_dict().items() if v != getattr(ours.model, k)} - {"mlp_hidden"}
        optim_same = recipe.optim == ours.optim
        assert len(model_diff) + (not optim_same) == 1 or name == "AdamW", (name, model_diff)
        assert other_optimizer(recipe, ours) == (name == "AdamW")
    assert changed[schedule].optim.schedule != ours.optim.schedule and changed[schedule].model == ours.model
