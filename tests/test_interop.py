"""Hugging Face and GGUF in and out: parity with transformers on tiny random models, round trips, GGUF read-back."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("safetensors")

from llm.checkpoint import load_checkpoint, save_model  # noqa: E402
from llm.config import model_preset  # noqa: E402
from llm.errors import ConfigError  # noqa: E402
from llm.export import export  # noqa: E402
from llm.interop.gguf import permute_rotary  # noqa: E402
from llm.interop.hf import config_from_hf, export_layout, load_pretrained  # noqa: E402
from llm.interop.tokenizer import save_hf_tokenizer  # noqa: E402
from llm.model import GPT, GPTConfig, apply_rope, rope_cache  # noqa: E402
from llm.sampler import SamplingParams, generate_ids  # noqa: E402
from llm.tokenizer import EOD, load_tokenizer, train_tokenizer  # noqa: E402
from tests.conftest import compose_train  # noqa: E402
from train import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MIXED = 'def héllo(x):\n    return f"naïve café — 日本語 {x}"  # ✓\n<|endoftext|>\tdone  \n'
GREEDY = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, seed=None)
NO_SPECIALS = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}  # generate() never stops early

SMALL = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, max_position_embeddings=128)
HF_MODELS = {
    "gpt2": lambda: transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4, **NO_SPECIALS)
    ),
    "llama-gqa": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            **SMALL,
            num_attention_heads=4,
            num_key_value_heads=2,  # grouped-query attention
            rope_theta=5000.0,  # not the default 10000
            rms_norm_eps=1e-6,
            **NO_SPECIALS,
        )
    ),
    # SmolLM2's shape (135M: 576 wide, 9 heads, 3 K/V heads, tied, rope_theta 1e5, eps 1e-5), shrunk
    "smollm2": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            **SMALL | dict(hidden_size=96, intermediate_size=256),
            num_attention_heads=6,
            num_key_value_heads=2,
            rope_theta=100000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            **NO_SPECIALS,
        )
    ),
    # Qwen2.5-0.5B's kind: biases on q, k, v, grouped-query attention, tied, rope_theta 1e6
    "qwen2": lambda: transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(
            **SMALL,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_theta=1e6,
            tie_word_embeddings=True,
            **NO_SPECIALS,
        )
    ),
    # Qwen3's: QK-norm, heads wider than hidden / heads (0.6B: 16 x 128 = 2048 at 1024 wide), untied
    "qwen3": lambda: transformers.Qwen3ForCausalLM(
        transformers.Qwen3Config(
            **SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=1e6, **NO_SPECIALS
        )
    ),
    "qwen3-tied": lambda: transformers.Qwen3ForCausalLM(
        transformers.Qwen3Config(
            **SMALL,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=24,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            **NO_SPECIALS,
        )
    ),
}


ROTARY = dict(norm="rmsnorm", value_embeds=0)  # what tiny has that no rotary layout computes, besides its MLP


def _random_hf(kind: str, folder: Path):
    torch.manual_seed(0)
    model = HF_MODELS[kind]().eval()
    for p in model.parameters():  # larger than init's 0.02, so every weight matters to the logits
        p.data.normal_(0, 0.2 if p.dim() > 1 else 1.0)
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("kind", sorted(HF_MODELS))
def test_imported_model_gives_transformers_logits_and_greedy_tokens(kind: str, tmp_path: Path) -> None:
    theirs = _random_hf(kind, tmp_path)
    ours = load_pretrained(str(tmp_path), attn="explicit")
    hf = theirs.config
    assert ours.config.n_kv_head == getattr(hf, "num_key_value_heads", 4)
    assert ours.config.tie_embeddings == hf.tie_word_embeddings
    assert ours.config.head_size == (getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads)
    assert (ours.config.qkv_bias, ours.config.qk_norm) == (kind == "qwen2", kind.startswith("qwen3"))
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(ids).logits
        got = ours(ids)[..., :300]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

    prompt = ids[:1]
    hf_tokens = theirs.generate(prompt, max_new_tokens=50, do_sample=False, min_new_tokens=0)[0, 12:].tolist()
    our_tokens = generate_ids(ours, [prompt[0].tolist()], 50, SamplingParams.defaults(temperature=0))[0].token_ids
    assert len(hf_tokens) == 50 and our_tokens == hf_tokens


REFUSED = [  # (model_type, change, the one line: the feature and the config key)
    ("llama", {"sliding_window": 4096}, "sliding-window attention (sliding_window=4096) is not supported"),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 4096}, "sliding-window attention (sliding_window=4096)"),
    ("qwen3", {"layer_types": ["full_attention", "sliding_attention"]}, "(layer_types has 'sliding_attention')"),
    (
        "qwen2",
        {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}},
        "rope scaling (rope_parameters rope_type='yarn') is not supported",
    ),
    (
        "llama",
        {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
        "rope scaling (rope_scaling rope_type='llama3')",
    ),
    ("llama", {"attention_bias": True}, "a bias on the attention output (attention_bias=true) is not supported"),
    ("qwen3", {"attention_bias": True}, "a bias on the attention output (attention_bias=true) is not supported"),
    ("llama", {"mlp_bias": True}, "biases in the MLP (mlp_bias=true) are not supported"),
    ("qwen3", {"num_experts": 8}, "mixture-of-experts (num_experts=8) is not supported"),
    ("qwen3_moe", {}, "mixture-of-experts (model_type='qwen3_moe') is not supported"),
    ("qwen2", {"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
    ("mamba", {}, "model_type='mamba' is not one of ['gpt2', 'llama', 'qwen2', 'qwen3']"),
]


@pytest.mark.parametrize("kind, change, message", REFUSED)
def test_what_our_model_cannot_express_is_refused_by_name(kind: str, change: dict, message: str) -> None:
    hf = {"model_type": kind.removesuffix("_moe") if kind != "mamba" else "llama", "vocab_size": 300}
    hf |= {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4}
    hf |= {"max_position_embeddings": 64}
    config_from_hf(hf)  # the plain one is accepted
    with pytest.raises(ConfigError) as e:
        config_from_hf(hf | {"model_type": kind} | change, "models/base")
    line = str(e.value)
    assert "\n" not in line and line.startswith("init_from=models/base: ") and message in line


def test_an_unsupported_base_is_refused_before_its_weights_are_read(tmp_path: Path) -> None:
    """A folder with only a config.json: the feature is named, not the missing weights."""
    hf = dict(SMALL, model_type="qwen2", num_attention_heads=4, use_sliding_window=True, sliding_window=32)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ConfigError, match=r"sliding-window attention \(sliding_window=32\)"):
        load_pretrained(str(tmp_path))


def test_export_refuses_what_no_layout_computes_and_names_the_fix() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^cannot export to the qwen3 layout \(Qwen3ForCausalLM\): model.config.norm=layernorm \(Qwen3 uses "
        r"RMSNorm\); model.config.mlp=relu2 \(Qwen3's MLP is SwiGLU\); model.config.value_embeds=1 \(no layout "
        r"has value embeddings\). Train with model.config.norm=rmsnorm model.config.mlp=swiglu "
        r"model.config.value_embeds=0$",
    ):
        export_layout(
            model_preset("tiny")
        )  # the default recipe: QK-norm is Qwen3's; LayerNorm, ReLU², value embeddings no layout's
    assert export_layout(model_preset("tiny", **ROTARY, mlp="swiglu", qk_norm=False, zero_init_proj=True)) == "llama"
    with pytest.raises(ConfigError, match=r"model.config.logit_softcap=30.0 \(no layout caps logits\)"):
        export_layout(model_preset("tiny", **ROTARY, mlp="swiglu", qk_norm=False, logit_softcap=30.0))
    assert export_layout(model_preset("gpt2-124m", tie_embeddings=False)) == "gpt2"
    llama = dict(ROTARY, mlp="swiglu", qk_norm=False)
    with pytest.raises(ConfigError, match=r"model.config.value_embeds=2 \(no layout has value embeddings\)"):
        export_layout(model_preset("tiny", **{**llama, "value_embeds": 2}))
    with pytest.raises(ConfigError, match=r"model.config.unet_skips=true \(no layout adds one layer's output"):
        export_layout(model_preset("tiny", **llama, unet_skips=True))


LLAMA_LAYOUT = ["experiment=exportable", "model.config.qk_norm=false"]  # tiny's switches that Llama lacks
GPT2_SHRUNK = ["model=gpt2-124m"]  # conftest's TINY shrinks it: 2 layers x 32, 1 K/V head (expanded on export)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two short runs on the test corpus: tiny in the Llama layout (20 steps) and a shrunk gpt2-124m (4 steps)."""
    root = tmp_path_factory.mktemp("interop")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"doc{i}.txt").write_text(MIXED * 3 + f"Note {i}: the quick brown fox. " * 30)
        (corpus / f"mod{i}.py").write_text(f"def add{i}(a, b):\n    return a + b + {i}\n\n" * 10)
    runs = {}
    for name, overrides in (("llama", [*LLAMA_LAYOUT, "trainer.max_steps=20"]), ("gpt2", GPT2_SHRUNK)):
        cfg = compose_train(root / name, [*overrides, "trainer.val_check_interval=10"], corpus)
        train(cfg)
        runs[name] = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    return runs


@pytest.mark.parametrize("layout, cls", [("llama", "LlamaForCausalLM"), ("gpt2", "GPT2LMHeadModel")])
def test_exported_folder_loads_in_transformers_with_our_logits_and_ids(trained, layout, cls, tmp_path) -> None:
    out = export(trained[layout], "hf", tmp_path / "hf")
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ours, tok, _ = load_checkpoint(trained[layout])
    assert type(theirs).__name__ == cls

    ids = tok.encode(MIXED).ids
    assert hf_tok(MIXED)["input_ids"] == ids  # code, non-ASCII, "<|endoftext|>" as text: same ids
    assert tok.token_to_id(EOD) not in ids and hf_tok.decode(ids) == MIXED
    x = torch.tensor([ids[:32]])
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x)[..., : ours.config.vocab_size], atol=1e-4, rtol=0)


def _interleaved_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """llama.cpp's rotation (rope type NORM): adjacent pairs (x[2i], x[2i+1]) turn by angle i."""
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)


def _read_gguf(path: Path) -> tuple[dict, dict]:
    reader = gguf.GGUFReader(path)
    fields = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        values = [field.parts[i] for i in field.data]
        kind = field.types[-1] if field.types else None
        if kind == gguf.GGUFValueType.STRING:
            values = [bytes(v).decode() for v in values]
        else:
            values = [v.tolist()[0] if len(v) == 1 else v.tolist() for v in values]
        fields[name] = values if field.types[0] == gguf.GGUFValueType.ARRAY else values[0]
    # GGUF lists dims fastest-first (ne0 = columns): the reader's array has numpy's (rows, columns) order
    tensors = {  # every type as float32, dequantised as llama.cpp reads it
        t.name: gguf.quants.dequantize(np.array(t.data), t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
        for t in reader.tensors
    }
    return fields, tensors


def test_gguf_holds_every_tensor_and_the_llama_metadata(trained, tmp_path) -> None:
    path = export(trained["llama"], "gguf", tmp_path / "m.gguf")
    hf = export(trained["llama"], "hf", tmp_path / "hf")
    fields, tensors = _read_gguf(path)
    model, tok, _ = load_checkpoint(trained["llama"])
    c = model.config
    assert fields["general.architecture"] == "llama"
    expected = {
        "llama.context_length": c.block_size,
        "llama.embedding_length": c.n_embd,
        "llama.block_count": c.n_layer,
        "llama.feed_forward_length": c.mlp_hidden,
        "llama.attention.head_count": c.n_head,
        "llama.attention.head_count_kv": c.n_kv_head,
        "llama.rope.dimension_count": c.head_size,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.eos_token_id": tok.token_to_id(EOD),
        "tokenizer.ggml.bos_token_id": tok.token_to_id(EOD),
        "tokenizer.ggml.add_bos_token": False,
    }
    assert {k: fields[k] for k in expected} == expected
    assert fields["llama.rope.freq_base"] == pytest.approx(c.rope_base)
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(c.norm_eps)
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == c.vocab_size and tokens[: tok.get_vocab_size()] == [
        tok.id_to_token(i) for i in range(tok.get_vocab_size())
    ]
    assert fields["tokenizer.ggml.token_type"][tok.token_to_id(EOD)] == 3  # control
    merges = json.loads(tok.to_str())["model"]["merges"]
    assert fields["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in merges]
    # the metadata alone is the tokenizer: a BPE rebuilt from it gives our ids (code, non-ASCII, EOD as text)
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens) if fields["tokenizer.ggml.token_type"][i] == 1}  # normal tokens
    rebuilt = Tokenizer(models.BPE(vocab, [tuple(m.split(" ")) for m in fields["tokenizer.ggml.merges"]]))
    rebuilt.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert rebuilt.encode(MIXED).ids == tok.encode(MIXED).ids

    # every tensor: the Hugging Face export's, renamed, with q and k rows in llama.cpp's pair order
    from safetensors.torch import load_file

    state = load_file(hf / "model.safetensors")
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q"}
    per_layer |= {"self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output"}
    per_layer |= {"mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(c.n_layer):
        names |= {f"model.layers.{i}.{k}.weight": f"blk.{i}.{v}.weight" for k, v in per_layer.items()}
    assert sorted(tensors) == sorted(names.values())  # tied: no output.weight, llama.cpp reuses token_embd
    for theirs, ggml in names.items():
        want = state[theirs]
        if ggml.endswith("attn_q.weight"):
            want = permute_rotary(want, c.n_head)
        elif ggml.endswith("attn_k.weight"):
            want = permute_rotary(want, c.n_kv_head)
        assert tensors[ggml].shape == tuple(want.shape) and np.array_equal(tensors[ggml], want.numpy()), ggml

    # the permutation is the right one: llama.cpp's interleaved rotation of the permuted q, k gives our scores
    x = torch.randn(6, c.n_embd)
    q, qp = (
        x @ state["model.layers.0.self_attn.q_proj.weight"].T,
        x @ torch.from_numpy(tensors["blk.0.attn_q.weight"]).T,
    )
    k, kp = (
        x @ state["model.layers.0.self_attn.k_proj.weight"].T,
        x @ torch.from_numpy(tensors["blk.0.attn_k.weight"]).T,
    )
    cos, sin = rope_cache(6, c.head_size, c.rope_base)
    hs = c.head_size
    ours = apply_rope(q[:, :hs], cos, sin) @ apply_rope(k[:, :hs], cos, sin).T  # head 0 against K/V head 0
    cpp = _interleaved_rope(qp[:, :hs], cos, sin) @ _interleaved_rope(kp[:, :hs], cos, sin).T
    torch.testing.assert_close(cpp, ours, atol=1e-5, rtol=1e-5)


def test_gguf_of_the_gpt2_layout(trained, tmp_path) -> None:
    fields, tensors = _read_gguf(export(trained["gpt2"], "gguf", tmp_path / "g.gguf"))
    model, _, _ = load_checkpoint(trained["gpt2"])
    c = model.config
    assert fields["general.architecture"] == "gpt2" and fields["gpt2.block_count"] == c.n_layer
    assert fields["gpt2.attention.head_count_kv"] == c.n_head  # one K/V head per query head, as GPT-2
    assert fields["gpt2.attention.layer_norm_epsilon"] == pytest.approx(c.norm_eps)
    assert np.array_equal(tensors["position_embd.weight"], model.wpe.weight.detach().numpy())
    assert np.array_equal(tensors["output.weight"], model.wte.weight[: c.vocab_size].detach().numpy())
    assert tensors["blk.1.ffn_up.weight"].shape == (c.mlp_hidden, c.n_embd)  # (out, in), as llama.cpp's converter
    assert np.array_equal(tensors["blk.1.ffn_up.weight"], model.blocks[1].mlp.fc.weight.detach().numpy())
    assert tensors["blk.0.attn_qkv.weight"].shape == (3 * c.n_embd, c.n_embd)


def test_export_cli_refuses_the_default_recipe_by_name(tmp_path) -> None:
    """A checkpoint of the default tiny recipe, written as train.py writes one (net.<name> keys)."""
    ckpt = tmp_path / "default.ckpt"
    config = model_preset("tiny", vocab_size=300)
    tok = train_tokenizer(["hello world " * 50], 300)
    save_model(ckpt, GPT(config), tok)
    with pytest.raises(
        ConfigError,
        match=r"mlp=relu2 \(Qwen3's MLP is SwiGLU\);.* Train with model.config.norm=rmsnorm model.config.mlp=swiglu",
    ):
        export(ckpt, "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=r"format='onnx' is not one of \['hf', 'gguf'\]"):
        export(ckpt, "onnx")


def test_finetune_from_a_saved_gpt2_lowers_val_loss_and_exports_again(tmp_path) -> None:
    """A random GPT-2 with its own tokenizer, fine-tuned 30 steps on the built-in corpus's llm/ sources."""
    folder = tmp_path / "gpt2-random"
    tok = train_tokenizer([p.read_text() for p in sorted((ROOT / "llm").rglob("*.py"))], 512)
    torch.manual_seed(0)
    eod = tok.token_to_id(EOD)
    config = transformers.GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=eod,
        eos_token_id=eod,
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    save_hf_tokenizer(tok, folder, 64)
    overrides = [f"init_from={folder}", "experiment=finetune", "trainer.max_steps=30", "trainer.val_check_interval=10"]
    overrides += ["optim.lr=3e-3", "data.batch_size=8"]  # a random start: a pretrained one keeps finetune's 6e-5
    cfg = compose_train(tmp_path / "ft", overrides, ROOT / "llm")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    start = math.log(tok.get_vocab_size())  # a random GPT-2's logits are near uniform: its loss starts there
    # lower after the first validation; between the last two (cosine's tail) it may level off: the corpus is llm/
    assert len(val) == 3 and val[0] > max(val[1:]) and val[-1] < start - 0.5, val
    assert cfg.model.config.n_embd == 64 and cfg.model.config.pos == "learned"  # the folder's shape, not tiny's
    ckpt = run / "checkpoints" / "last.ckpt"
    _, run_tok, _ = load_checkpoint(ckpt)
    assert run_tok.encode(MIXED).ids == tok.encode(MIXED).ids  # the folder's tokenizer: no BPE was trained
    assert (
        load_tokenizer(run / "data" / "tokenizer.json").to_str() == load_tokenizer(folder / "tokenizer.json").to_str()
    )

    # resumed: the checkpoint's weights, not the folder's, and the same tokenizer
    train(compose_train(tmp_path / "ft", [*overrides, "trainer.max_steps=32", f"ckpt_path={run}"], ROOT / "llm"))
    assert torch.load(ckpt, weights_only=True)["global_step"] == 32

    out = export(ckpt, "hf", tmp_path / "again")
    model, _, _ = load_checkpoint(ckpt)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.tensor([tok.encode("def build(node):").ids])
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, model(x)[..., : tok.get_vocab_size()], atol=1e-4, rtol=0)


def test_init_from_offline_says_what_to_download_and_where(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_train(tmp_path, ["init_from=openai-community/gpt2"], tmp_path)
    with pytest.raises(ConfigError, match=r"init_from=openai-community/gpt2: .*hf download openai-community/gpt2"):
        train(cfg)


@pytest.mark.parametrize("kind", sorted(HF_MODELS))
def test_import_then_export_gives_back_every_tensor(kind: str, tmp_path: Path) -> None:
    """HF folder -> our GPT -> HF folder: the same tensors under the same names (an untied head included), the
    same architecture, and transformers' logits of the new folder equal to the first's."""
    from safetensors.torch import load_file

    from llm.interop.hf import save_pretrained

    theirs = _random_hf(kind, tmp_path / "in")
    save_pretrained(load_pretrained(str(tmp_path / "in")), tmp_path / "out", None, None)
    before, after = load_file(tmp_path / "in" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    before = {k: v for k, v in before.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}  # buffers
    assert sorted(after) == sorted(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert ("lm_head.weight" in after) != theirs.config.tie_word_embeddings

    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert type(again) is type(theirs) and config["architectures"] == [type(theirs).__name__]
    assert config["model_type"] == theirs.config.model_type
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, theirs(ids).logits, atol=1e-4, rtol=0)


# ---- bases with their tokenizers, and GGUF in every type -----------------------------------------------------

CHAT = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
CHAT_MARKERS = ["<|im_start|>", "<|im_end|>"]
TEXT = 'def héllo(x):\n    return f"naïve café 日本語 {x}" + 12345  # ✓\n\n  The quick brown fox.\n'


def _bpe(pre_tokenizer, normalizer=None):
    """A byte-level BPE of a base's kind, trained on this repository's sources up to 300 ids (the model's rows)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=[EOD, *CHAT_MARKERS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([p.read_text() for p in sorted((ROOT / "llm").rglob("*.py"))][:20], trainer=trainer)
    return tok


def _save_base_tokenizer(kind: str, folder: Path) -> None:
    """The tokenizer a base of this kind ships: Qwen2's by transformers' own Qwen2Tokenizer (Qwen2.5 and Qwen3 use
    it), SmolLM2's (digits one by one, then GPT-2's byte-level BPE) as its tokenizer.json has it; a chat template."""
    from tokenizers import normalizers, pre_tokenizers

    if kind.startswith("qwen"):
        from tokenizers import Regex
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

        split = pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False)
        tok = _bpe(pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))
        spec = json.loads(tok.to_str())["model"]
        hf_tok = transformers.Qwen2Tokenizer(vocab=spec["vocab"], merges=[tuple(m) for m in spec["merges"]])
        assert isinstance(hf_tok.backend_tokenizer.normalizer, normalizers.NFC)
    else:
        digits = pre_tokenizers.Digits(individual_digits=True)
        tok = _bpe(pre_tokenizers.Sequence([digits, pre_tokenizers.ByteLevel(add_prefix_space=False)]))
        hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOD, bos_token=EOD)
    hf_tok.add_special_tokens({"additional_special_tokens": CHAT_MARKERS})
    hf_tok.chat_template = CHAT
    hf_tok.save_pretrained(folder)


BASES = {"qwen2": "qwen2", "qwen3": "qwen2", "qwen3-tied": "qwen2", "smollm2": "smollm"}  # kind -> tokenizer.ggml.pre


@pytest.mark.parametrize("kind", sorted(BASES))
def test_a_base_comes_with_its_tokenizer_and_chat_template(kind: str, tmp_path: Path) -> None:
    from llm.interop.hf import Pretrained
    from llm.interop.tokenizer import gguf_vocab, tokenizer_from_hf

    _random_hf(kind, tmp_path)
    _save_base_tokenizer(kind, tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = tokenizer_from_hf(tmp_path)
    assert ours.encode(TEXT).ids == theirs(TEXT)["input_ids"]  # digits, non-ASCII, code, blank lines: same ids
    assert ours.decode(ours.encode(TEXT).ids) == TEXT
    pretrained = Pretrained.open(str(tmp_path), None)
    assert pretrained.chat_template == CHAT  # kept for the chat engineer: Pretrained.chat_template
    assert gguf_vocab(ours)["pre"] == BASES[kind]


def _gguf_expected(arch: str, config, tied: bool, chat: bool) -> tuple[set[str], set[str]]:
    """The metadata keys and tensor names llama.cpp's converter writes for this layout, from gguf's own constants."""
    K, T = gguf.Keys, gguf.MODEL_TENSOR
    keys = {K.General.ARCHITECTURE, K.General.TYPE, K.General.NAME, K.General.FILE_TYPE}
    keys |= {K.General.QUANTIZATION_VERSION}
    llm_keys = [K.LLM.BLOCK_COUNT, K.LLM.CONTEXT_LENGTH, K.LLM.EMBEDDING_LENGTH, K.LLM.FEED_FORWARD_LENGTH]
    llm_keys += [K.Attention.HEAD_COUNT, K.Attention.HEAD_COUNT_KV, K.Rope.FREQ_BASE, K.Attention.LAYERNORM_RMS_EPS]
    llm_keys += [K.Attention.KEY_LENGTH, K.Attention.VALUE_LENGTH]
    if arch == "llama":
        llm_keys += [K.LLM.VOCAB_SIZE, K.Rope.DIMENSION_COUNT]
    keys |= {k.format(arch=arch) for k in llm_keys}
    keys |= {K.Tokenizer.MODEL, K.Tokenizer.PRE, K.Tokenizer.LIST, K.Tokenizer.TOKEN_TYPE, K.Tokenizer.MERGES}
    keys |= {K.Tokenizer.BOS_ID, K.Tokenizer.EOS_ID, K.Tokenizer.ADD_BOS} | (
        {K.Tokenizer.CHAT_TEMPLATE} if chat else set()
    )
    layer = [T.ATTN_NORM, T.ATTN_Q, T.ATTN_K, T.ATTN_V, T.ATTN_OUT, T.FFN_NORM, T.FFN_GATE, T.FFN_UP, T.FFN_DOWN]
    layer += [T.ATTN_Q_NORM, T.ATTN_K_NORM] if arch == "qwen3" else []
    whole = [T.TOKEN_EMBD, T.OUTPUT_NORM] + ([] if tied else [T.OUTPUT])
    allowed = gguf.MODEL_TENSORS[gguf.MODEL_ARCH[arch.upper()]]
    assert all(t in allowed for t in layer + whole)  # every tensor is one llama.cpp's arch has
    names = {f"{gguf.TENSOR_NAMES[t]}.weight" for t in whole}
    names |= {f"{gguf.TENSOR_NAMES[t].format(bid=i)}.weight" for t in layer for i in range(config.n_layer)}
    if arch == "qwen2":
        qkv = (T.ATTN_Q, T.ATTN_K, T.ATTN_V)
        names |= {f"{gguf.TENSOR_NAMES[t].format(bid=i)}.bias" for t in qkv for i in range(config.n_layer)}
    return keys, names


def _within_rounding(got: np.ndarray, want: np.ndarray, qtype) -> bool:
    """got is want stored in qtype and read back: within that type's rounding, and no closer than needed to tell."""
    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        return np.array_equal(got, want)
    if qtype in (Q.F16, Q.BF16):  # round to nearest: half a unit in the last place of 11 or 8 significant bits
        bits = 11 if qtype == Q.F16 else 8
        return bool(np.all(np.abs(got - want) <= np.abs(want) * 2.0**-bits + 1e-7))
    blocks = want.reshape(-1, 32)  # Q8_0: blocks of 32 along a row, each int8 times its float16 scale amax / 127
    step = np.abs(blocks).max(1, keepdims=True) / 127
    return bool(np.all(np.abs(got.reshape(-1, 32) - blocks) <= 0.57 * step))  # half a step, plus the scale's f16


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "q8_0"])
@pytest.mark.parametrize("kind", sorted(BASES))
def test_gguf_of_a_base_has_the_converters_names_and_reads_back_in_its_type(kind, dtype, tmp_path) -> None:
    from safetensors.torch import load_file

    from llm.interop.gguf import write_gguf
    from llm.interop.hf import Pretrained
    from llm.interop.tokenizer import tokenizer_from_hf

    theirs = _random_hf(kind, tmp_path / "in")
    _save_base_tokenizer(kind, tmp_path / "in")
    model = load_pretrained(str(tmp_path / "in"))
    template = Pretrained.open(str(tmp_path / "in"), None).chat_template
    path = write_gguf(
        model, tokenizer_from_hf(tmp_path / "in"), tmp_path / "m.gguf", dtype=dtype, chat_template=template
    )
    arch = "llama" if kind == "smollm2" else kind.removesuffix("-tied")
    c = model.config
    keys, names = _gguf_expected(arch, c, c.tie_embeddings, chat=True)
    reader = gguf.GGUFReader(path)
    fields, _ = _read_gguf(path)
    assert set(fields) == keys
    assert fields[gguf.Keys.General.ARCHITECTURE] == arch and fields["tokenizer.ggml.pre"] == BASES[kind]
    assert (
        fields[gguf.Keys.General.FILE_TYPE]
        == gguf.LlamaFileType[{"f32": "ALL_F32"}.get(dtype, f"MOSTLY_{dtype.upper()}")]
    )
    assert fields[f"{arch}.attention.key_length"] == c.head_size == fields[f"{arch}.attention.value_length"]
    assert fields[f"{arch}.attention.head_count_kv"] == c.n_kv_head and fields[f"{arch}.block_count"] == c.n_layer
    assert fields[f"{arch}.rope.freq_base"] == pytest.approx(c.rope_base)
    assert fields[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(c.norm_eps)
    assert fields["tokenizer.chat_template"] == CHAT
    assert {t.name for t in reader.tensors} == names

    state = load_file(tmp_path / "in" / "model.safetensors")
    if c.tie_embeddings:
        state.pop("lm_head.weight", None)
    names_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], c.n_layer)
    matrix_type = gguf.GGMLQuantizationType[dtype.upper()]
    for t in reader.tensors:
        hf_name = next(n for n in state if names_map.get_name(n, try_suffixes=(".weight", ".bias")) == t.name)
        want = state[hf_name].float()
        if arch == "llama" and ".q_proj." in hf_name:  # llama.cpp's own pair order for `llama`, not for qwen
            want = permute_rotary(want, c.n_head)
        elif arch == "llama" and ".k_proj." in hf_name:
            want = permute_rotary(want, c.n_kv_head)
        vector = want.dim() == 1 or t.name.endswith("_norm.weight")
        assert t.tensor_type == (gguf.GGMLQuantizationType.F32 if vector else matrix_type), t.name
        got = gguf.quants.dequantize(np.array(t.data), t.tensor_type).reshape(want.shape)
        assert _within_rounding(got, want.numpy(), t.tensor_type), t.name
    assert {hf for hf in theirs.state_dict() if not hf.endswith("rotary_emb.inv_freq")} >= set(state)


def test_export_dtype_is_checked_before_anything_is_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^dtype='q4_0' is not one of \['f32', 'f16', 'bf16', 'q8_0'\]$"):
        export(tmp_path / "missing.ckpt", "gguf", dtype="q4_0")
    with pytest.raises(ConfigError, match=r"^dtype=q8_0 is for format=gguf; format=hf writes float32"):
        export(tmp_path / "missing.ckpt", "hf", dtype="q8_0")


def test_our_own_models_export_in_the_layout_that_computes_them() -> None:
    """QK-norm is Qwen3's, q/k/v biases alone Qwen2's; what none has is refused with the fix."""
    assert export_layout(model_preset("tiny", **ROTARY, mlp="swiglu")) == "qwen3"
    assert export_layout(model_preset("tiny", **ROTARY, mlp="swiglu", qk_norm=False, qkv_bias=True)) == "qwen2"
    assert export_layout(model_preset("tiny", **ROTARY, mlp="swiglu", qk_norm=False, head_dim=64)) == "llama"
    with pytest.raises(ConfigError, match=r"model.config.qkv_bias=true \(Qwen3's attention biases, attention_bias"):
        export_layout(model_preset("tiny", **ROTARY, mlp="swiglu", qkv_bias=True))
    with pytest.raises(ConfigError, match=r"model.config.head_dim=32 \(GPT-2's heads are n_embd / n_head wide\)"):
        export_layout(model_preset("gpt2-124m", head_dim=32))


def test_finetune_a_qwen3_base_with_its_tokenizer_and_export_it_again(tmp_path: Path) -> None:
    """init_from a Qwen3 folder (its Qwen2 tokenizer, its chat template): a short run keeps the base's shape and
    tokenizer, and exports as Qwen3ForCausalLM (transformers' logits equal ours) and as a q8_0 GGUF."""
    folder = tmp_path / "qwen3"
    _random_hf("qwen3", folder)
    _save_base_tokenizer("qwen3", folder)
    overrides = [f"init_from={folder}", "experiment=finetune", "trainer.max_steps=4", "trainer.val_check_interval=2"]
    cfg = compose_train(tmp_path / "ft", [*overrides, "data.batch_size=4", "data.block_size=32"], ROOT / "llm")
    train(cfg)
    c = cfg.model.config
    assert (c.head_dim, c.qk_norm, c.qkv_bias, c.n_kv_head, c.tie_embeddings) == (32, True, False, 2, False)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    model, tok, _ = load_checkpoint(ckpt)
    assert tok.encode(TEXT).ids == transformers.AutoTokenizer.from_pretrained(folder)(TEXT)["input_ids"]

    out = export(ckpt, "hf", tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(theirs).__name__ == "Qwen3ForCausalLM"
    x = torch.tensor([tok.encode(TEXT).ids[:24]])
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, model(x)[..., :300], atol=1e-4, rtol=0)
    fields, tensors = _read_gguf(export(ckpt, "gguf", tmp_path / "m.gguf", dtype="q8_0"))
    assert fields["general.architecture"] == "qwen3" and fields["tokenizer.ggml.pre"] == "qwen2"
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0 and "blk.1.attn_k_norm.weight" in tensors


@pytest.mark.parametrize(("extra", "layout"), [([], "qwen3"), (["model.config.qk_norm=false"], "llama")])
def test_experiment_exportable_is_the_default_recipe_in_a_layout_export_writes(tmp_path, extra, layout) -> None:
    """experiment=exportable changes only what no layout computes: the rest is the default recipe."""
    default = compose_train(tmp_path, [], tiny=False).model.config
    exportable = compose_train(tmp_path, ["experiment=exportable", *extra], tiny=False).model.config
    config = GPTConfig(**{k: v for k, v in exportable.items() if k != "_target_"})
    assert export_layout(config) == layout
    changed = {k for k in default if default[k] != exportable[k]}
    assert changed == {"mlp", "norm", "value_embeds"} | ({"qk_norm"} if extra else set())
