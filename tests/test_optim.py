"""optim=adamw and optim=muon: parameter split, one optimizer for Lightning, exact state round trip, resume."""

from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from llm.config import model_preset
from llm.errors import ConfigError
from llm.model import GPT
from llm.training import LitGPT
from llm.training.optim import (
    NS_COEFFICIENTS,
    NS_NORM_SCALE,
    Muon,
    MuonWithAdamW,
    build_optimizer,
    hidden_matrices,
    newton_schulz,
    optim_preset,
)
from llm.training.schedule import warmup_cosine
from tests.conftest import compose_train
from tests.test_scale import final_weights, run_train

HIDDEN = {"attn.qkv.weight", "attn.proj.weight", "mlp.fc.weight", "mlp.proj.weight"}
MUON = dict(lr=0.02, momentum=0.95, weight_decay=0.0, ns="quintic", normuon_beta2=None)  # conf/optim/muon.yaml's keys


def tiny_model(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    shape = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_kv_head=1, n_embd=32)
    return GPT(model_preset("tiny", **{**shape, **kw}))


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(seed))
    return data[:, :-1], data[:, 1:]


def train_steps(net: GPT, opt: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        x, y = batch(step)
        loss = F.cross_entropy(net(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_adamw_is_one_adamw_over_the_decay_groups():
    net = tiny_model()
    opt = build_optimizer(net, optim_preset("adamw", lr=3e-3))
    assert type(opt) is torch.optim.AdamW
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert all(g["lr"] == 3e-3 and g["betas"] == (0.9, 0.95) for g in opt.param_groups)


@pytest.mark.parametrize("kw", [dict(), dict(tie_embeddings=False, pos="learned", norm="layernorm", bias=True)])
def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(kw):
    net = tiny_model(**kw)
    opt = build_optimizer(net, optim_preset("muon", lr=3e-3, muon=dict(MUON, lr=0.05, momentum=0.9, weight_decay=0.01)))
    assert isinstance(opt, MuonWithAdamW)
    names = {id(p): n for n, p in net.named_parameters()}
    muon = [names[id(p)] for g in opt.muon.param_groups for p in g["params"]]
    adamw = [names[id(p)] for g in opt.adamw.param_groups for p in g["params"]]
    assert sorted(muon) == sorted(f"blocks.{i}.{n}" for i in range(2) for n in HIDDEN)
    assert sorted(muon + adamw) == sorted(names.values())  # every parameter once, the tied embedding once
    assert "wte.weight" in adamw and ("lm_head.weight" in adamw) == (not net.config.tie_embeddings)
    assert [g["lr"] for g in opt.param_groups] == [3e-3, 3e-3, 0.05]  # AdamW decay, AdamW no decay, Muon
    assert opt.muon.param_groups[0]["momentum"] == 0.9 and opt.muon.param_groups[0]["weight_decay"] == 0.01
    assert all(g is h for g, h in zip(opt.param_groups, [*opt.adamw.param_groups, *opt.muon.param_groups], strict=True))


def test_one_schedule_scales_both_learning_rates():
    net = tiny_model()
    opt = build_optimizer(net, optim_preset("muon", lr=1e-3))
    schedule = LambdaLR(opt, partial(warmup_cosine, warmup_steps=2, total_steps=10, min_lr_ratio=0.1))
    for step in range(6):
        m = warmup_cosine(step, 2, 10, 0.1)
        assert [g["lr"] for g in opt.muon.param_groups + opt.adamw.param_groups] == pytest.approx(
            [0.02 * m, 1e-3 * m, 1e-3 * m]
        )
        train_steps(net, opt, range(step, step + 1))
        schedule.step()


def test_muon_state_round_trips_bit_for_bit(tmp_path):
    """Three steps, save, three more; a fresh model and optimizer loaded from the save end identical."""
    config = optim_preset("muon", lr=3e-3)
    net = tiny_model()
    opt = build_optimizer(net, config)
    train_steps(net, opt, range(3))
    saved_net, saved_opt = {k: v.clone() for k, v in net.state_dict().items()}, opt.state_dict()
    torch.save(saved_opt, tmp_path / "opt.pt")
    train_steps(net, opt, range(3, 6))

    resumed = tiny_model(seed=1)
    resumed.load_state_dict(saved_net)
    opt2 = build_optimizer(resumed, config)
    opt2.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))  # as a checkpoint is read back
    assert len(opt2.state) == len(list(net.parameters()))  # every parameter has its state back
    train_steps(resumed, opt2, range(3, 6))
    for (name, a), b in zip(net.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert all(
        g is h for g, h in zip(opt2.param_groups, [*opt2.adamw.param_groups, *opt2.muon.param_groups], strict=True)
    )


def test_newton_schulz_is_torchs_in_bfloat16_and_orthogonalises_in_float32():
    from torch.optim._muon import _zeropower_via_newtonschulz

    g = torch.randn(48, 16, generator=torch.Generator().manual_seed(0))
    coefficients = (3.4445, -4.775, 2.0315)
    ours = newton_schulz(g, [coefficients] * 5, 1e-7, torch.bfloat16)
    assert torch.equal(ours, _zeropower_via_newtonschulz(g, coefficients, 5, 1e-7))
    singular = torch.linalg.svdvals(newton_schulz(g, [coefficients] * 5, 1e-7, torch.float32))
    assert singular.min() > 0.5 and singular.max() < 1.3  # U V' up to the quintic's deliberate slack


def test_polar_express_is_closer_to_orthogonal_in_the_same_five_steps():
    """Polar Express's per-step polynomials (NS_COEFFICIENTS) leave the singular values nearer 1 than the quintic,
    most of all the small ones a gradient of low effective rank has."""
    g = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    g = g @ torch.diag(torch.logspace(0, -3, 32))  # singular values spread over three decades
    spread = {}
    for ns in ("quintic", "polar_express"):
        x = newton_schulz(g, NS_COEFFICIENTS[ns], 1e-7, torch.float32, NS_NORM_SCALE[ns])
        spread[ns] = (torch.linalg.svdvals(x) - 1).abs().mean().item()
    assert spread["polar_express"] < 0.7 * spread["quintic"]


def test_normuon_evens_out_the_rows_of_the_update_and_keeps_its_norm():
    net = tiny_model()
    muon = dict(lr=0.02, momentum=0.95, weight_decay=0.0, ns="polar_express", normuon_beta2=0.95)
    opt = build_optimizer(net, optim_preset("muon", muon=muon))
    assert {(g["ns"], g["normuon_beta2"]) for g in opt.muon.param_groups} == {("polar_express", 0.95)}
    update = torch.randn(8, 16) * torch.linspace(0.1, 3, 8)[:, None]  # rows of very different sizes
    state: dict = {}
    out = Muon._normalise_rows(state, update, 0.0, 1e-7)  # beta2 0: this step's row RMS alone
    rms = out.square().mean(dim=1)
    assert torch.allclose(rms, rms.mean().expand(8), rtol=1e-4)  # every row the same RMS
    assert out.norm().item() == pytest.approx(update.norm().item(), rel=1e-5)  # the whole keeps its norm
    assert state["row_second_moment"].shape == (8, 1)
    train_steps(net, opt, range(2))
    assert all(opt.muon.state[p]["row_second_moment"].shape == (p.size(0), 1) for p in hidden_matrices(net))


def test_muon_steps_like_torchs_with_the_same_state():
    """Our Muon only moves Newton-Schulz to float32 on CPU: in bfloat16 its steps are torch.optim.Muon's, bit for
    bit, and its state (what a checkpoint holds) has the same layout."""
    nets = [tiny_model(), tiny_model()]
    ours = Muon(hidden_matrices(nets[0]), lr=0.02, weight_decay=0.1)
    ours.ns_dtype = torch.bfloat16
    torchs = torch.optim.Muon(hidden_matrices(nets[1]), lr=0.02, weight_decay=0.1)
    for net, opt in zip(nets, [ours, torchs], strict=True):
        train_steps(net, opt, range(3))
    for a, b in zip(hidden_matrices(nets[0]), hidden_matrices(nets[1]), strict=True):
        assert torch.equal(a, b)
    mine, theirs = ours.state_dict(), torchs.state_dict()
    assert [(g.pop("ns"), g.pop("normuon_beta2")) for g in mine["param_groups"]] == [("quintic", None)]
    assert mine["param_groups"] == theirs["param_groups"]
    assert all(
        torch.equal(mine["state"][k]["momentum_buffer"], v["momentum_buffer"]) for k, v in theirs["state"].items()
    )
    assert len(mine["state"]) == len(theirs["state"]) == 8


def test_flat_parameters_are_refused_by_muon():
    net = tiny_model()
    net.blocks[0].mlp.fc.weight = torch.nn.Parameter(net.blocks[0].mlp.fc.weight.detach().flatten())
    with pytest.raises(ConfigError, match=r"optim=muon needs 2-D weight matrices.*use optim=adamw with trainer=fsdp"):
        build_optimizer(net, optim_preset("muon"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(lr=0.0), "optim.lr=0.0 must be > 0"),
        (dict(beta2=1.0), "optim.beta2=1.0 must be in [0, 1)"),
        (dict(warmup_steps=2.5), "optim.warmup_steps=2.5 must be a whole number >= 0"),
        (dict(muon=dict(MUON, lr=-1)), "optim.muon.lr=-1 must be > 0"),
        (dict(muon=dict(MUON, momentum=1.0)), "optim.muon.momentum=1.0 must be in [0, 1)"),
        (dict(muon=dict(MUON, ns="cubic")), "optim.muon.ns='cubic' is not one of ['quintic', 'polar_express']"),
        (dict(muon=dict(MUON, normuon_beta2=1)), "optim.muon.normuon_beta2=1 must be in [0, 1), or null for plain"),
        (dict(muon=dict(lr=0.02, momentum=0.9)), "optim.muon lacks the key 'weight_decay'"),
        (dict(muon=dict(MUON, nesterov=True)), "optim.muon has no key 'nesterov'"),
        (dict(muon="yes"), "optim.muon='yes' must be null or a node with keys lr, momentum, weight_decay, ns, normuon"),
        (dict(betas=(0.9, 0.9)), "optim has no key 'betas'"),
    ],
)
def test_bad_optim_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        optim_preset("muon", **overrides)
    assert message in str(e.value)


def test_module_without_optim_cannot_train():
    with pytest.raises(ConfigError, match="LitGPT was built without optim"):
        LitGPT(tiny_model(), None, compile=False, seed=0).configure_optimizers()


@pytest.mark.parametrize("choice", ["adamw", "muon"])
def test_optim_group_composes_into_the_module(tmp_path, choice):
    cfg = compose_train(tmp_path, [f"optim={choice}"])
    module = instantiate(cfg.module)
    assert (module.optim.muon is not None) == (choice == "muon")
    assert module.optim.lr == cfg.optim.lr


def test_lightning_trains_with_muon_under_accumulation_clipping_and_bf16(tmp_path):
    """One optimizer to Lightning: accumulation, gradient clipping and bf16-mixed run, and the checkpoint
    holds both states."""
    net = tiny_model()
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    module = LitGPT(net, optim_preset("muon", lr=3e-3, warmup_steps=1), compile=False, seed=0)
    data = torch.randint(0, 64, (16, 17), generator=torch.Generator().manual_seed(0))
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        accumulate_grad_batches=2,
        gradient_clip_val=1.0,
        precision="bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader([{"input": row[:-1], "target": row[1:]} for row in data], batch_size=2))
    assert trainer.global_step == 3
    assert all(not torch.equal(p, start[n]) for n, p in net.named_parameters())  # every weight moved
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    ckpt = torch.load(tmp_path / "x.ckpt", weights_only=True)
    (state,) = ckpt["optimizer_states"]
    assert set(state) == {"adamw", "muon"} and len(state["muon"]["state"]) == len(hidden_matrices(net))
    lrs = [g["lr"] for g in module.optimizers().optimizer.param_groups]
    assert lrs[-1] / lrs[0] == pytest.approx(0.02 / 3e-3)  # one schedule for both


@pytest.mark.slow
def test_killed_muon_run_resumes_to_the_same_weights_bit_for_bit(tmp_path, corpus):
    """tests/test_scale.py's SIGKILL resume test, with optim=muon."""
    common = [
        "optim=muon",
        "trainer.max_steps=8",
        "trainer.val_check_interval=4",
        "callbacks.last.every_n_train_steps=2",
        "trainer.deterministic=true",
        "model.config.dropout=0.1",  # the RNG must resume too
    ]
    run_train([*common, f"hydra.run.dir={tmp_path / 'a'}"], tmp_path, corpus)
    kill = ["+callbacks.kill._target_=tests.helpers.KillAtStep", "+callbacks.kill.step=5"]
    killed = run_train([*common, f"hydra.run.dir={tmp_path / 'b'}", *kill], tmp_path, corpus, check=False)
    assert killed.returncode == -9  # SIGKILL: no clean-up ran
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and set(ckpt["optimizer_states"][0]) == {"adamw", "muon"}
    run_train([*common, f"hydra.run.dir={tmp_path / 'c'}", f"ckpt_path={tmp_path / 'b'}"], tmp_path, corpus)
    a, c = final_weights(tmp_path / "a"), final_weights(tmp_path / "c")
    assert a.keys() == c.keys()
    for name in a:
        assert torch.equal(a[name], c[name]), name


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_wider_models_train_at_lower_rates(name):
    """Both peaks scale by (base_width / n_embd) ** width_power above base_width; narrower models keep them."""
    config = optim_preset(name, lr=4e-3, base_width=64, width_power=0.5)
    for width, scale in ((32, 1.0), (64, 1.0), (256, 0.5)):
        opt = build_optimizer(tiny_model(n_embd=width), config)
        expected = [4e-3 * scale] * 2 + ([config.muon.lr * scale] if config.muon else [])
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(expected)
    unscaled = build_optimizer(tiny_model(n_embd=256), optim_preset(name, lr=4e-3, base_width=None))
    assert unscaled.param_groups[0]["lr"] == 4e-3


def test_fine_tuning_keeps_its_learning_rate_at_any_width():
    from omegaconf import OmegaConf

    from llm.config import config_dir

    for name in ("finetune", "sft"):
        assert OmegaConf.load(config_dir() / "experiment" / f"{name}.yaml").optim.base_width is None


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "wide"])
def test_a_bad_base_width_is_named(value):
    with pytest.raises(ConfigError, match="optim.base_width"):
        optim_preset("muon", base_width=value)


def test_warmup_stable_decay_holds_the_peak_then_cools_down_linearly():
    from llm.training.schedule import lr_schedule, warmup_stable_decay

    m = [warmup_stable_decay(step, 2, 20, 0.1, 0.25) for step in range(22)]
    assert m[:2] == pytest.approx([1 / 3, 2 / 3])  # warmup, as the cosine's
    assert m[2:15] == [1.0] * 13  # stable until the last 25% of 20 steps
    assert m[15:20] == pytest.approx([0.1 + 0.9 * k / 5 for k in (5, 4, 3, 2, 1)])  # linear, 1 -> 0.1
    assert m[20:] == [0.1, 0.1]  # the floor after the end
    assert lr_schedule("wsd", 2, 20, 0.1, 0.25)(16) == m[16]
    assert lr_schedule("cosine", 2, 20, 0.1, 0.25)(16) == warmup_cosine(16, 2, 20, 0.1)
    cosine = [warmup_cosine(step, 2, 20, 0.1) for step in range(20)]
    assert sum(m[:20]) > sum(cosine)  # more of the run at the peak


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schedule": "linear"}, "optim.schedule='linear' is not one of ['cosine', 'wsd']"),
        ({"cooldown_frac": 0.0}, "optim.cooldown_frac=0.0 must be in (0, 1]"),
    ],
)
def test_a_bad_schedule_names_the_key_and_the_allowed_values(change, message):
    with pytest.raises(ConfigError) as e:
        optim_preset("muon", **change)
    assert str(e.value) == message


@pytest.mark.parametrize("optim", ["muon", "adamw"])
def test_untying_keeps_the_logits_then_trains_the_head_apart_and_a_rebuilt_optimizer_lines_up(optim):
    from llm.training.optim import untie_head, untie_step

    o = optim_preset(optim, untie_at=0.5)
    net = tiny_model(seed=3)
    opt = build_optimizer(net, o)
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
        opt.step()

    step()
    assert untie_step(o, net, 10) == 5 and untie_step(optim_preset(optim), net, 10) is None
    before = net(x).detach()
    head = untie_head(net, opt)
    assert torch.equal(net(x).detach(), before)  # untying alone changes nothing the model computes
    assert net.lm_head.weight is head and head is not net.wte.weight and not net.config.tie_embeddings
    assert untie_step(o, net, 10) is None  # once
    step()
    assert not torch.equal(net.lm_head.weight, net.wte.weight)  # each its own gradient now
    assert opt.state[head]["exp_avg"].shape == head.shape  # AdamW trains the new matrix
    rebuilt = build_optimizer(net, o)  # as a resumed run builds it for the untied model
    rebuilt.load_state_dict(opt.state_dict())
    for p in net.parameters():  # every state back on its own parameter: the head's is not the embedding's
        saved, loaded = opt.state[p], rebuilt.state[p]
        assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    with pytest.raises(ConfigError, match="already untied"):
        untie_head(net, opt)


@pytest.mark.parametrize("value", [1.0, 0, "half"])
def test_a_bad_untie_at_is_named(value):
    with pytest.raises(ConfigError, match=r"^optim.untie_at=.* must be in \(0, 1\), or null"):
        optim_preset("muon", untie_at=value)


def test_untie_at_needs_a_tied_output_layer():
    with pytest.raises(ConfigError, match=r"optim.untie_at=0.5 unties a tied output layer: it needs"):
        LitGPT(tiny_model(tie_embeddings=False), optim_preset("muon", untie_at=0.5), compile=False, seed=0)
