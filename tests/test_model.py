import pytest
import torch
import torch.nn.functional as F

from llm.config import model_preset
from llm.errors import ConfigError
from llm.model import GPT, MLP, GPTConfig, KVCache, apply_rope, filled_length, repeat_kv

SWITCHES_OFF = dict(
    qk_norm=False, zero_init_proj=False, logit_softcap=None, tie_embeddings=True, value_embeds=0, unet_skips=False
)
VARIANTS = {
    "rope-rms-swiglu-gqa": dict(n_kv_head=2),
    "gpt2-style": dict(pos="learned", norm="layernorm", mlp="gelu", bias=True),
    "qk-norm": dict(qk_norm=True),
    "relu2": dict(mlp="relu2"),
    "zero-init-proj": dict(zero_init_proj=True),
    "softcap": dict(logit_softcap=0.1),  # below the raw logits at init (std ~0.1): tanh bends them
    "untied": dict(tie_embeddings=False),
    "every-switch-gqa": dict(
        n_kv_head=2, qk_norm=True, mlp="relu2", zero_init_proj=True, logit_softcap=0.1, tie_embeddings=False
    ),
    "qwen2-qkv-bias": dict(n_kv_head=2, qkv_bias=True),  # biases on q, k, v only
    "qwen3-head-dim": dict(n_kv_head=2, qk_norm=True, head_dim=12, tie_embeddings=False),  # heads 4 x 12 = 48 != 32
    "head-dim-narrow": dict(head_dim=4),  # heads 4 x 4 = 16 < 32
    "value-embeds-unet-gqa": dict(n_kv_head=2, value_embeds=1, unet_skips=True),  # modded-nanogpt's additions
}
ROTARY_VARIANTS = {k: v for k, v in VARIANTS.items() if v.get("pos", "rope") == "rope"}


def tiny(**kw) -> GPTConfig:
    """A 2-layer, 32-wide model: RoPE, RMSNorm, SwiGLU, one K/V head per query head, every switch off."""
    base = dict(
        vocab_size=100,
        block_size=16,
        n_layer=2,
        n_head=4,
        n_kv_head=4,
        n_embd=32,
        pos="rope",
        norm="rmsnorm",
        mlp="swiglu",
        mlp_hidden=None,
        bias=False,
        **SWITCHES_OFF,
    )
    return model_preset("tiny", **{**base, **kw})


def randomise_zero_weights(model: GPT) -> None:
    """zero_init_proj leaves no gradient to qkv or fc at init: give those weights values to compare with."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02, generator=gen)


@pytest.mark.parametrize("kw", VARIANTS.values(), ids=VARIANTS.keys())
def test_output_shape_and_padded_vocab(kw):
    config = tiny(**kw)
    model = GPT(config)
    logits = model(torch.randint(0, 100, (3, 11)))
    assert logits.shape == (3, 11, 128)  # 100 padded up to a multiple of 64
    assert (model.lm_head.weight is model.wte.weight) == config.tie_embeddings


@pytest.mark.parametrize("attn", ["explicit", "sdpa"])
@pytest.mark.parametrize("kw", VARIANTS.values(), ids=VARIANTS.keys())
def test_causal(attn, kw):
    torch.manual_seed(0)
    model = GPT(tiny(attn=attn, **kw)).eval()
    randomise_zero_weights(model)  # zero-initialised projections would hide every position's attention
    x = torch.randint(0, 100, (2, 16))
    y = x.clone()
    y[:, 9:] = torch.randint(0, 100, (2, 7))  # change only the future of position 8
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 9:], b[:, 9:])


@pytest.mark.parametrize("kw", VARIANTS.values(), ids=VARIANTS.keys())
def test_explicit_equals_sdpa_outputs_and_gradients(kw):
    torch.manual_seed(0)
    explicit = GPT(tiny(attn="explicit", **kw))
    fused = GPT(tiny(attn="sdpa", **kw))
    randomise_zero_weights(explicit)
    fused.load_state_dict(explicit.state_dict())
    x = torch.randint(0, 100, (2, 16))
    outs, grads = [], []
    for model in (explicit, fused):
        logits = model(x)
        F.cross_entropy(logits.flatten(0, 1), x.roll(-1, 1).flatten()).backward()
        outs.append(logits)
        grads.append({n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    assert all(g.any() for g in grads[0].values())  # every parameter gets a gradient to compare
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(tiny(n_layer=2, n_embd=64))
    opt = torch.optim.AdamW(model.param_groups(0.0), lr=1e-2)
    x = torch.randint(0, 100, (4, 16))
    y = torch.randint(0, 100, (4, 16))
    first = None
    for _ in range(60):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 4.0  # about ln(128) at initialisation
    assert loss.item() < 0.1


def test_residual_projections_are_scaled():
    model = GPT(tiny(n_layer=8, n_embd=256))
    std_proj = model.blocks[0].attn.proj.weight.std().item()
    std_qkv = model.blocks[0].attn.qkv.weight.std().item()
    assert std_qkv == pytest.approx(0.02, rel=0.05)
    assert std_proj == pytest.approx(0.02 / 4, rel=0.1)  # 0.02 / sqrt(2 * 8)


@pytest.mark.parametrize("kw", [dict(norm="layernorm", bias=True, pos="learned"), dict()])
def test_param_groups_decay_matrices_only(kw):
    model = GPT(tiny(**kw))
    decay, no_decay = model.param_groups(0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    # FSDP hands the optimizer flat 1-D shards: the groups must not change
    flat: dict[int, torch.nn.Parameter] = {}  # one flat copy per parameter: the tied embedding stays shared
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            setattr(module, name, flat.setdefault(id(p), torch.nn.Parameter(p.detach().flatten())))
    shapes = {n: p.dim() for n, p in GPT(tiny(**kw)).named_parameters()}
    flat_decay, _ = model.param_groups(0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in flat_decay["params"]) == sorted(n for n, d in shapes.items() if d >= 2)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(attn="flash"), "model.config.attn='flash' is not one of ['explicit', 'sdpa']"),
        (dict(norm="batchnorm"), "model.config.norm='batchnorm' is not one of ['rmsnorm', 'layernorm']"),
        (dict(n_kv_head=3), "must be divisible by model.config.n_kv_head=3"),
        (dict(mlp="relu3"), "model.config.mlp='relu3' is not one of ['swiglu', 'gelu', 'relu2']"),
        (dict(qk_norm="yes"), "model.config.qk_norm='yes' is not one of [true, false]"),
        (dict(zero_init_proj=1), "model.config.zero_init_proj=1 is not one of [true, false]"),
        (dict(tie_embeddings=None), "model.config.tie_embeddings=None is not one of [true, false]"),
        (dict(logit_softcap=0.0), "model.config.logit_softcap=0.0 must be a number > 0, or null for no cap"),
        (dict(logit_softcap="30"), "model.config.logit_softcap='30' must be a number > 0, or null for no cap"),
        (dict(qkv_bias=1), "model.config.qkv_bias=1 is not one of [true, false]"),
        (dict(head_dim=0), "model.config.head_dim=0 must be an integer >= 1, or null for n_embd / n_head"),
        (dict(head_dim="64"), "model.config.head_dim='64' must be an integer >= 1, or null for n_embd / n_head"),
        (dict(head_dim=5), "rotary embedding needs an even head size, got 5"),
        (dict(n_head=3, head_dim=None), "must be divisible by model.config.n_head=3, or model.config.head_dim set"),
        (dict(value_embeds=2), "model.config.value_embeds=2 must be a whole number from 0 to (n_layer + 1) // 2 = 1"),
        (dict(value_embeds=True), "model.config.value_embeds=True must be a whole number from 0 to (n_layer + 1) // 2"),
        (dict(unet_skips="yes"), "model.config.unet_skips='yes' is not one of [true, false]"),
    ],
)
def test_bad_config_names_key_and_allowed_values(kw, message):
    with pytest.raises(ConfigError) as e:
        tiny(**kw)
    assert message in str(e.value)


def test_too_long_sequence_is_refused():
    with pytest.raises(ValueError, match="longer than block_size=16"):
        GPT(tiny())(torch.zeros(1, 17, dtype=torch.long))


def test_gpt2_preset_is_gpt2_with_124m_parameters():
    config = model_preset("gpt2-124m")
    gpt2 = dict(pos="learned", norm="layernorm", mlp="gelu", bias=True, n_kv_head=12, **SWITCHES_OFF)
    assert {k: getattr(config, k) for k in gpt2} == gpt2
    with torch.device("meta"):
        model = GPT(config)
    assert config.padded_vocab_size == 50304
    assert 123e6 < model.num_params(non_embedding=False) < 125e6


def test_every_switch_is_required():
    """No switch has a default in code: a preset YAML that forgot one would not load."""
    with pytest.raises(TypeError, match="qk_norm"):
        GPTConfig(
            vocab_size=100,
            block_size=16,
            n_layer=2,
            n_head=4,
            n_kv_head=None,
            n_embd=32,
            attn="sdpa",
            pos="rope",
            norm="rmsnorm",
            mlp="swiglu",
            bias=False,
            dropout=0.0,
        )


def test_qk_norm_makes_attention_blind_to_the_scale_of_q_and_k():
    torch.manual_seed(0)
    x = torch.randint(0, 100, (2, 16))
    for qk_norm in (True, False):
        model = GPT(tiny(qk_norm=qk_norm)).eval()
        before = model(x)
        with torch.no_grad():
            for block in model.blocks:
                block.attn.qkv.weight[: 2 * 32] *= 30.0  # the q and k rows (n_kv_head = n_head)
        same = torch.allclose(model(x), before, atol=1e-3)  # off: differences of ~0.2
        assert same == qk_norm
    model = GPT(tiny(qk_norm=True))
    gains = {n for n, _ in model.named_parameters()} - {n for n, _ in GPT(tiny()).named_parameters()}
    assert gains == {f"blocks.{i}.attn.{q}_norm.weight" for i in (0, 1) for q in "qk"}
    _, no_decay = model.param_groups(0.1)
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert all(id(p) in no_decay_ids for n, p in model.named_parameters() if n in gains)


def test_relu2_mlp_is_relu_squared_of_a_4x_hidden_layer():
    config = tiny(mlp="relu2")
    assert config.mlp_hidden == 4 * 32
    mlp = MLP(config)
    x = torch.randn(3, 32)
    torch.testing.assert_close(mlp(x), mlp.proj(F.relu(mlp.fc(x)) ** 2))
    assert mlp.fc.weight.shape == (128, 32)


def test_zero_init_proj_starts_every_block_as_the_identity():
    torch.manual_seed(0)
    model = GPT(tiny(zero_init_proj=True))
    projections = [n for n, p in model.named_parameters() if n.endswith("proj.weight")]
    assert len(projections) == 4 and all(not p.any() for n, p in model.named_parameters() if n in projections)
    x = torch.randint(0, 100, (2, 16))
    torch.testing.assert_close(model(x), model.lm_head(model.norm(model.wte(x))))
    scaled = GPT(tiny()).blocks[0].attn.proj.weight.std().item()
    assert scaled == pytest.approx(0.02 / 2, rel=0.2)  # off: the scaled normal init


def test_logit_softcap_bounds_logits_smoothly():
    torch.manual_seed(0)
    raw = GPT(tiny(n_embd=64, n_head=4, n_kv_head=4))
    capped = GPT(tiny(n_embd=64, n_head=4, n_kv_head=4, logit_softcap=0.5))
    capped.load_state_dict(raw.state_dict())
    x = torch.randint(0, 100, (2, 16))
    a, b = raw(x), capped(x)
    assert a.abs().max() > 0.5 > b.abs().max()
    torch.testing.assert_close(b, 0.5 * torch.tanh(a / 0.5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert capped(x).dtype == torch.bfloat16  # the dtype autocast gave the head, capped in float32


def test_untied_head_is_its_own_matrix_counted_in_parameters_and_flops():
    tied, untied = GPT(tiny()), GPT(tiny(tie_embeddings=False))
    extra = 128 * 32  # padded vocab x n_embd
    assert untied.num_params() == tied.num_params() + extra
    assert untied.flops_per_token() == tied.flops_per_token()  # the input side is a lookup either way
    decay, _ = untied.param_groups(0.1)
    assert any(p is untied.lm_head.weight for p in decay["params"])
    assert untied.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize("name", ["tiny", "small", "gpt2-124m"])
def test_every_preset_names_every_switch(name):
    from omegaconf import OmegaConf

    from llm.config import config_dir

    node = OmegaConf.load(config_dir() / "model" / f"{name}.yaml").config
    assert {"qk_norm", "zero_init_proj", "logit_softcap", "tie_embeddings", "mlp", "value_embeds", "unet_skips"} <= set(
        node
    )


@pytest.mark.parametrize("attn", ["explicit", "sdpa"])
def test_both_attentions_drop_weights_not_outputs(attn):
    """Dropout on attention weights, as SDPA does: the mix of values that reaches proj is rarely exactly 0."""
    torch.manual_seed(0)
    model = GPT(tiny(attn=attn, dropout=0.5)).train()
    seen = []
    model.blocks[0].attn.proj.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model(torch.randint(0, 100, (2, 16)))
    assert (seen[0] == 0).float().mean() < 0.3  # dropping the outputs would zero about half (the early
    # rows of few keys may lose them all)


@pytest.mark.parametrize("attn", ["explicit", "sdpa"])
@pytest.mark.parametrize("kw", VARIANTS.values(), ids=VARIANTS.keys())
def test_attention_weights_are_the_ones_attention_uses(attn, kw):
    torch.manual_seed(0)
    model = GPT(tiny(attn=attn, **kw)).eval()
    idx = torch.randint(0, 100, (2, 7))
    seen = []  # each layer's attention input and output during model(idx)
    hooks = [
        block.attn.register_forward_hook(lambda module, args, out: seen.append((args[0], args[1], args[6], out)))
        for block in model.blocks
    ]
    model(idx)
    for h in hooks:
        h.remove()
    maps = model.attention_weights(idx)
    assert len(maps) == 2
    for block, w, (x, rope, ve, out) in zip(model.blocks, maps, seen, strict=True):
        attn_layer = block.attn
        assert w.shape == (2, 4, 7, 7) and w.dtype == torch.float32 and not w.requires_grad
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 7))
        assert torch.all(w.triu(diagonal=1) == 0), "a token attends to a later token"
        assert torch.all(w[:, :, 0, 0] == 1)  # the first token can only look at itself
        _, _, v = attn_layer.project(x, rope, ve)  # ve: the layer's value embedding, where it has one
        y = w @ repeat_kv(v, attn_layer.n_head // attn_layer.n_kv_head)  # (B, nh, T, hs)
        y = attn_layer.proj(y.transpose(1, 2).reshape(2, 7, -1))
        torch.testing.assert_close(y, out, rtol=1e-5, atol=1e-6)  # weights @ V is the layer's output, either impl


def test_setup_caches_and_clear_caches():
    model = GPT(tiny(n_kv_head=2))
    assert model.causal_mask is None and all(b.attn.kv_cache is None for b in model.blocks)  # training has none
    assert model.setup_caches(3, 12) is False  # made, not kept
    caches = [b.attn.kv_cache for b in model.blocks]
    assert all(isinstance(c, KVCache) for c in caches)
    assert caches[0].k_cache.shape == caches[1].v_cache.shape == (3, 2, 12, 8)  # (B, n_kv, S, hs)
    assert caches[0].k_cache.dtype == torch.float32
    assert torch.equal(model.causal_mask, torch.ones(12, 12, dtype=torch.bool).tril())
    assert "blocks.0.attn.kv_cache" in dict(model.named_modules())  # a child module: moves with model.to()
    assert not any("cache" in k or "causal" in k for k in model.state_dict())  # never saved in a checkpoint
    assert model.setup_caches(3, 12) is True
    assert [b.attn.kv_cache for b in model.blocks] == caches  # the same shape: the same buffers
    assert model.setup_caches(3, 12, dtype=torch.bfloat16) is False
    assert model.blocks[0].attn.kv_cache is not caches[0]
    assert model.blocks[0].attn.kv_cache.k_cache.dtype == torch.bfloat16
    model.setup_caches(1, 16)
    assert model.blocks[0].attn.kv_cache.k_cache.shape == (1, 2, 16, 8)
    with pytest.raises(ValueError, match="longer than block_size=16"):
        model.setup_caches(1, 17)
    model.clear_caches()
    assert model.causal_mask is None and all(b.attn.kv_cache is None for b in model.blocks)


def test_a_forward_without_positions_leaves_the_caches_alone():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    x = torch.randint(0, 100, (2, 9))
    expected = model(x)
    model.setup_caches(2, 16)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    assert all(b.attn.kv_cache.k_cache.abs().sum() == 0 for b in model.blocks)


@pytest.mark.parametrize("impl", ["explicit", "sdpa"])
def test_attention_implementation_per_call(impl):
    torch.manual_seed(0)
    model = GPT(tiny(attn="sdpa" if impl == "explicit" else "explicit")).eval()
    x = torch.randint(0, 100, (2, 9))
    reference = GPT(tiny(attn=impl)).eval()
    reference.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(x, attn_impl=impl), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("attn", ["explicit", "sdpa"])
@pytest.mark.parametrize(
    "kw", [{}, VARIANTS["rope-rms-swiglu-gqa"], VARIANTS["gpt2-style"]], ids=["rope", "gqa", "gpt2"]
)
def test_a_step_over_the_filled_prefix_equals_one_over_the_whole_cache(attn, kw):
    """cache_mask(pos, S'): attention reads only the first S' cache positions; rows at different positions (3 and
    7: prompts of different lengths, as in a batch or a server's slots) get the logits of a step over all S."""
    torch.manual_seed(0)
    model = GPT(tiny(attn=attn, **kw)).eval()
    randomise_zero_weights(model)
    idx = torch.randint(0, 100, (2, 7))
    idx[0, 3:] = 0  # row 0's prompt is 3 tokens, right-padded
    model.setup_caches(2, 16)
    model(idx, torch.arange(7), model.causal_mask[None, None, :7, :7])
    pos = torch.tensor([[3], [7]])
    x = torch.randint(0, 100, (2, 1))
    whole = model(x, pos, model.causal_mask[pos][:, None])  # (2, 1, 1, 16): every cache position
    for length in (8, filled_length(8, 16, bucket=5), 16):  # the filled 8, rounded up to 10, the whole cache
        mask = model.cache_mask(pos, length)
        assert mask.shape == (2, 1, 1, length)
        torch.testing.assert_close(model(x, pos, mask), whole)
    alone = GPT(tiny(attn=attn, **kw)).eval()  # row 0 by itself, without a cache: its 3 tokens and the new one
    alone.load_state_dict(model.state_dict())
    torch.testing.assert_close(
        model(x, pos, model.cache_mask(pos, 8))[0, -1], alone(torch.cat([idx[:1, :3], x[:1]], 1))[0, -1]
    )


def test_filled_length_rounds_up_to_the_bucket_within_the_cache():
    assert [filled_length(n, 272) for n in (2, 64, 65, 200, 257, 272)] == [64, 64, 128, 256, 272, 272]
    assert filled_length(10, 16, bucket=4) == 12


def test_head_dim_and_qkv_bias_shape_the_projections():
    """head_dim: q, k, v are n_head * head_dim wide, proj maps them back to n_embd; qkv_bias: q, k, v biases only."""
    model = GPT(tiny(n_kv_head=2, head_dim=12, qkv_bias=True, qk_norm=True))
    attn = model.blocks[0].attn
    assert attn.qkv.weight.shape == (4 * 12 + 2 * 2 * 12, 32) and attn.qkv.bias.shape == (96,)
    assert attn.proj.weight.shape == (32, 48) and attn.proj.bias is None  # Qwen2: none on o_proj
    assert attn.q_norm.weight.shape == (12,)  # one gain per head channel, shared by the heads (Qwen3's q_norm)
    assert model.setup_caches(1, 8) is False and attn.kv_cache.k_cache.shape == (1, 2, 8, 12)
    assert model.rope_cos.shape == (16, 6)  # rotary over the head's 12 channels
    assert GPT(tiny()).blocks[0].attn.qkv.bias is None  # off by default: checkpoints from before load as they were
    assert tiny().head_dim is None and tiny().head_size == 8  # null: n_embd / n_head
    # a checkpoint's model_config without the two keys (as before they existed) loads, and one is written so
    older = {k: v for k, v in tiny().to_dict().items() if k not in ("qkv_bias", "head_dim")}  # before the keys
    assert GPTConfig(**older) == tiny()  # a checkpoint written before them reads as the same shape
    assert GPTConfig(**tiny().to_dict()) == tiny()
    assert tiny(qkv_bias=True, head_dim=12).to_dict().items() >= {("qkv_bias", True), ("head_dim", 12)}


def test_qk_norm_is_applied_per_head_before_rope():
    """Qwen3's order: q_norm(q) over each head's channels, then the rotation (transformers' Qwen3Attention)."""
    torch.manual_seed(0)
    model = GPT(tiny(qk_norm=True, head_dim=12, n_kv_head=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    attn, x = model.blocks[0].attn, torch.randn(2, 5, 32)
    _, rope = model._embed(torch.zeros(2, 5, dtype=torch.long))
    q, k, _ = attn.project(x, rope)
    raw_q = attn.qkv(x)[..., :48].view(2, 5, 4, 12).transpose(1, 2)
    normed = raw_q * torch.rsqrt(raw_q.pow(2).mean(-1, keepdim=True) + 1e-5) * attn.q_norm.weight
    torch.testing.assert_close(q, apply_rope(normed, *rope))
    assert not torch.allclose(q, attn.q_norm(apply_rope(raw_q, *rope)), atol=1e-3)  # the other order differs


@pytest.mark.parametrize("attn", ["explicit", "sdpa"])
@pytest.mark.parametrize("kw", ROTARY_VARIANTS.values(), ids=ROTARY_VARIANTS.keys())
def test_cached_decoding_equals_recomputing(attn, kw):
    """Prefill 5 tokens into the caches, then decode 6 more one at a time: each step's logits are those of the
    whole sequence run without a cache."""
    torch.manual_seed(0)
    model = GPT(tiny(attn=attn, **kw)).eval()
    randomise_zero_weights(model)
    idx = torch.randint(0, 100, (2, 11))
    with torch.no_grad():
        full = model(idx)
        model.setup_caches(2, 16)
        steps = [model(idx[:, :5], torch.arange(5), model.causal_mask[None, None, :5, :5])]
        for t in range(5, 11):
            pos = torch.full((2, 1), t)
            steps.append(model(idx[:, t : t + 1], pos, model.cache_mask(pos, t + 1)))
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_value_embeddings_pair_layers_from_both_ends_and_mix_into_v():
    """Table i feeds layers i and n_layer - 1 - i; each such layer mixes v = λ0 v + λ1 ve, λ from (0.5, 0.5)."""
    model = GPT(tiny(n_layer=6, n_kv_head=2, value_embeds=2))
    mixing = [i for i, block in enumerate(model.blocks) if block.attn.ve_lambdas is not None]
    assert mixing == [0, 1, 4, 5]
    assert [tuple(t.weight.shape) for t in model.value_embeds] == [(128, 16)] * 2  # padded vocab x (n_kv * hs)
    assert model.blocks[0].attn.ve_lambdas.tolist() == [0.5, 0.5]
    # the tables are lookups: parameters, but no FLOPs; the mixing weights never decay
    plain = GPT(tiny(n_layer=6, n_kv_head=2))
    assert model.num_params() == plain.num_params() + 2 * 128 * 16 + 4 * 2
    assert model.flops_per_token() == plain.flops_per_token() + 4 * 2 * 6
    _, no_decay = model.param_groups(0.1)
    assert any(p is model.blocks[5].attn.ve_lambdas for p in no_decay["params"])


def test_value_embeddings_at_lambda_1_0_and_unet_skips_at_weight_0_are_the_plain_model():
    """With its mixing weights at (1, 0) and its skip weights at 0, the model computes what the plain one does;
    at their initial values it does not: the additions are where the code says they are, and only there."""
    torch.manual_seed(0)
    plain = GPT(tiny(n_layer=4, value_embeds=0, unet_skips=False)).eval()
    randomise_zero_weights(plain)
    added = GPT(tiny(n_layer=4, value_embeds=2, unet_skips=True)).eval()
    missing, unexpected = added.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == sorted(
        ["skip_weights", "value_embeds.0.weight", "value_embeds.1.weight"]
        + [f"blocks.{i}.attn.ve_lambdas" for i in range(4)]
    )
    x = torch.randint(0, 100, (2, 16))
    assert not torch.allclose(added(x), plain(x), atol=1e-4)
    with torch.no_grad():
        for block in added.blocks:
            block.attn.ve_lambdas.copy_(torch.tensor([1.0, 0.0]))
        assert not torch.allclose(added(x), plain(x), atol=1e-4)  # the skips still add
        added.skip_weights.zero_()
    torch.testing.assert_close(added(x), plain(x))


def test_unet_skips_add_the_first_halfs_outputs_to_the_second_halfs_inputs_in_reverse():
    """Layer n_layer - 1 - i reads the output of layer i: with every block the identity (zero-initialised
    projections), layer 3 of 4 gets x + w1 x (from layer 1's output, also x), then + w0 (x + w1 x)."""
    model = GPT(tiny(n_layer=4, unet_skips=True, zero_init_proj=True)).eval()
    with torch.no_grad():
        model.skip_weights.copy_(torch.tensor([2.0, 3.0]))
    seen = []
    model._run_blocks(
        torch.ones(1, 1, 32), torch.zeros(1, 1, dtype=torch.long), None, before=lambda i, h: seen.append(h)
    )
    assert [float(h[0, 0, 0]) for h in seen] == [1.0, 1.0, 4.0, 6.0]  # 1, 1, 1 + 3 * 1, 4 + 2 * 1
