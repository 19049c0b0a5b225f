"""Hugging Face model folders in and out: config.json <-> GPTConfig, and weight names both ways.

Four layouts are spoken: GPT-2 (`GPT2LMHeadModel`: learned positions, LayerNorm, GELU, biases), Llama
(`LlamaForCausalLM`: rotary positions, RMSNorm, SwiGLU, grouped-query attention, no biases; SmolLM2 is one),
Qwen2 (`Qwen2ForCausalLM`: Llama with biases on q, k and v; Qwen2.5 too) and Qwen3 (`Qwen3ForCausalLM`: Llama
with QK-norm and a head_dim of its own). All use the rotate-half rotary convention, as llm/model.py does, so
weights map without permutation. Whatever either side cannot express is refused by name, with the config key:
a folder that loads would compute something else.

Nothing here needs `transformers`: folders are read and written as JSON and safetensors.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from llm.errors import ConfigError
from llm.model import GPT, GPTConfig

log = logging.getLogger(__name__)

ARCHITECTURES = {  # model_type in config.json -> the class transformers builds
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
LAYOUTS = tuple(ARCHITECTURES)
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # tanh-approximated GELU, as our MLP computes it
# A GPT-2 block's weights: (our name, GPT-2's name, transposed). GPT-2's Conv1D stores (in, out), our Linear (out, in)
GPT2_BLOCK = (
    ("norm1", "ln_1", False),
    ("norm2", "ln_2", False),
    ("attn.qkv", "attn.c_attn", True),
    ("attn.proj", "attn.c_proj", True),
    ("mlp.fc", "mlp.c_fc", True),
    ("mlp.proj", "mlp.c_proj", True),
)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size")


# ---- config.json -> GPTConfig ------------------------------------------------------------------------------


def _refuse(source: str, reasons: list[str]) -> None:
    if reasons:
        raise ConfigError(f"init_from={source}: {'; '.join(reasons)}")


def _rope_theta(hf: dict, reasons: list[str]) -> float:
    """rope_theta from config.json: top-level (transformers < 5) or in rope_parameters; only plain RoPE."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        key = "rope_parameters" if params.get("rope_type") else "rope_scaling"
        reasons.append(f"rope scaling ({key} rope_type={kind!r}) is not supported (only plain RoPE: 'default')")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def unsupported(hf: dict) -> list[str]:
    """What in a config.json our model cannot compute, each as 'feature (key=value) is not supported'."""
    kind = hf.get("model_type")
    if kind not in LAYOUTS:
        if isinstance(kind, str) and ("moe" in kind or kind == "mixtral"):
            return [f"mixture-of-experts (model_type={kind!r}) is not supported; model_type is one of {list(LAYOUTS)}"]
        return [f"model_type={kind!r} is not one of {list(LAYOUTS)}"]
    reasons = []
    moe = [k for k in MOE_KEYS if hf.get(k)]
    if moe:
        reasons.append(f"mixture-of-experts ({moe[0]}={hf[moe[0]]}) is not supported")
    if hf.get("sliding_window") is not None and hf.get("use_sliding_window", True):
        reasons.append(f"sliding-window attention (sliding_window={hf['sliding_window']}) is not supported")
    elif "sliding_attention" in (hf.get("layer_types") or []):
        reasons.append("sliding-window attention (layer_types has 'sliding_attention') is not supported")
    if kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in GPT2_ACTIVATIONS:
            reasons.append(f"activation_function={act!r} is not supported (only {list(GPT2_ACTIVATIONS)})")
        for key, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False)):
            if hf.get(key, ok) != ok:
                reasons.append(f"{key}={hf[key]} is not supported (our attention scales by 1/sqrt(head size))")
        if hf.get("add_cross_attention"):
            reasons.append("cross-attention (add_cross_attention) is not supported")
        return reasons
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        reasons.append(f"hidden_act={act!r} is not supported (the MLP is SwiGLU: 'silu')")
    if hf.get("attention_bias"):  # Llama's and Qwen3's cover o_proj too; Qwen2's q, k, v biases need no key
        reasons.append("a bias on the attention output (attention_bias=true) is not supported")
    if hf.get("mlp_bias"):
        reasons.append("biases in the MLP (mlp_bias=true) are not supported")
    if hf.get("attn_logit_softcapping") or hf.get("final_logit_softcapping"):
        reasons.append("logit soft-capping (attn_logit_softcapping) is not supported")
    _rope_theta(hf, reasons)
    return reasons


def config_from_hf(hf: dict, source: str = "DIR") -> dict:
    """The GPTConfig keys that fix a model's shape and weights, from a config.json of a supported layout.

    Keys that do not change the weights (attn, dropout, zero_init_proj) are left to the preset.
    """
    _refuse(source, unsupported(hf))
    kind = hf["model_type"]
    if kind == "gpt2":
        n_embd = hf["n_embd"]
        return dict(
            vocab_size=hf["vocab_size"],
            block_size=hf["n_positions"],
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_kv_head=hf["n_head"],
            n_embd=n_embd,
            pos="learned",
            norm="layernorm",
            mlp="gelu",
            bias=True,
            qkv_bias=False,  # bias=true has them
            qk_norm=False,
            logit_softcap=None,
            tie_embeddings=hf.get("tie_word_embeddings", True),
            value_embeds=0,
            unet_skips=False,
            mlp_hidden=hf.get("n_inner") or 4 * n_embd,
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        )
    n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or (128 if kind == "qwen3" else n_embd // n_head)  # Qwen3Config's default: 128
    return dict(
        vocab_size=hf["vocab_size"],
        block_size=hf["max_position_embeddings"],
        n_layer=hf["num_hidden_layers"],
        n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head,
        n_embd=n_embd,
        head_dim=head_dim,
        pos="rope",
        norm="rmsnorm",
        mlp="swiglu",
        bias=False,
        qkv_bias=kind == "qwen2",  # Qwen2 always has them, with no config key
        qk_norm=kind == "qwen3",  # Qwen3's q_norm, k_norm: one gain of head_dim per layer, before rope, as ours
        logit_softcap=None,
        tie_embeddings=hf.get("tie_word_embeddings", False),
        value_embeds=0,
        unet_skips=False,
        mlp_hidden=hf["intermediate_size"],
        rope_base=_rope_theta(hf, []),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
    )


# ---- GPTConfig -> config.json ------------------------------------------------------------------------------

# What each layout fixes: (key, required value, why). Checked in order; every mismatch is reported together.
ROTARY = [
    ("pos", "rope", "{name} rotates q and k"),
    ("norm", "rmsnorm", "{name} uses RMSNorm"),
    ("mlp", "swiglu", "{name}'s MLP is SwiGLU"),
    ("bias", False, "{name}'s output projections and MLP have no biases"),
]
REQUIRES = {
    "gpt2": [
        ("pos", "learned", "GPT-2 adds a learned position table"),
        ("norm", "layernorm", "GPT-2 uses LayerNorm"),
        ("mlp", "gelu", "GPT-2's MLP is GELU"),
        ("qk_norm", False, "GPT-2 does not normalise q and k"),
    ],
    "llama": ROTARY,
    "qwen2": ROTARY,
    "qwen3": [*ROTARY, ("qkv_bias", False, "Qwen3's attention biases, attention_bias, are on o_proj too")],
    "all": [
        ("logit_softcap", None, "no layout caps logits"),
        ("value_embeds", 0, "no layout has value embeddings"),
        ("unet_skips", False, "no layout adds one layer's output to another's input"),
    ],
}
NAMES = {"gpt2": "GPT-2", "llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}


def export_layout(config: GPTConfig) -> str:
    """The layout that computes exactly what this model computes: learned positions are GPT-2's, QK-norm is
    Qwen3's, biases on q, k, v only are Qwen2's, the rest Llama's. Otherwise a ConfigError naming every key that
    stands in the way. zero_init_proj, attn and dropout only shape training: never a reason."""
    if config.pos == "learned":
        layout = "gpt2"
    else:
        layout = "qwen3" if config.qk_norm else "qwen2" if config.qkv_bias else "llama"
    wrong = [(k, v, why) for k, v, why in REQUIRES[layout] + REQUIRES["all"] if getattr(config, k) != v]
    if layout == "gpt2" and config.head_size * config.n_head != config.n_embd:
        wrong.append(("head_dim", None, "GPT-2's heads are n_embd / n_head wide"))
    if wrong:
        reasons = "; ".join(
            f"model.config.{k}={_yaml(getattr(config, k))} ({why.format(name=NAMES[layout])})" for k, _, why in wrong
        )
        fix = " ".join(f"model.config.{k}={_yaml(v)}" for k, v, _ in wrong)
        raise ConfigError(
            f"cannot export to the {layout} layout ({ARCHITECTURES[layout]}): {reasons}. Train with {fix}"
        )
    return layout


def _yaml(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def hf_config(config: GPTConfig, bos_id: int | None, eos_id: int | None) -> dict:
    """config.json for the layout of export_layout(config)."""
    layout = export_layout(config)
    common = {"architectures": [ARCHITECTURES[layout]], "model_type": layout, "vocab_size": config.vocab_size}
    common |= {"bos_token_id": bos_id, "eos_token_id": eos_id, "tie_word_embeddings": config.tie_embeddings}
    common |= {"torch_dtype": "float32", "use_cache": True}
    if layout == "gpt2":
        return common | {
            "n_positions": config.block_size,
            "n_embd": config.n_embd,
            "n_layer": config.n_layer,
            "n_head": config.n_head,
            "n_inner": config.mlp_hidden,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": config.norm_eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "scale_attn_weights": True,
        }
    rotary = common | {
        "hidden_size": config.n_embd,
        "intermediate_size": config.mlp_hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_base,  # transformers < 5 reads this key
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "rope_scaling": None,
        "attention_dropout": 0.0,
    }
    if layout == "llama":
        return rotary | {"attention_bias": False, "mlp_bias": False}
    full = {"use_sliding_window": False, "sliding_window": None, "max_window_layers": config.n_layer}
    full |= {"layer_types": ["full_attention"] * config.n_layer}
    return rotary | full | ({"attention_bias": False} if layout == "qwen3" else {})


# ---- weights both ways -------------------------------------------------------------------------------------


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """The embedding padded with zero rows up to padded_vocab_size (those ids never occur)."""
    return torch.cat([t, t.new_zeros(rows - t.size(0), *t.shape[1:])]) if t.size(0) < rows else t


def state_from_hf(hf: dict[str, torch.Tensor], config: GPTConfig, layout: str) -> dict[str, torch.Tensor]:
    """A Hugging Face state dict of `layout` -> GPT's state dict (float32, embeddings padded)."""
    hf = {k.removeprefix("transformer.").removeprefix("model."): v.float() for k, v in hf.items()}
    V = config.padded_vocab_size
    out = {}
    if layout == "gpt2":
        out["wte.weight"] = _pad_rows(hf["wte.weight"], V)
        out["wpe.weight"] = hf["wpe.weight"]
        out["norm.weight"], out["norm.bias"] = hf["ln_f.weight"], hf["ln_f.bias"]
        for i in range(config.n_layer):
            h, b = f"h.{i}.", f"blocks.{i}."
            for ours, theirs, transpose in GPT2_BLOCK:
                w = hf[f"{h}{theirs}.weight"]
                out[f"{b}{ours}.weight"] = w.t().contiguous() if transpose else w
                out[f"{b}{ours}.bias"] = hf[f"{h}{theirs}.bias"]
    else:  # llama, qwen2, qwen3
        out["wte.weight"] = _pad_rows(hf["embed_tokens.weight"], V)
        out["norm.weight"] = hf["norm.weight"]
        for i in range(config.n_layer):
            h, b = f"layers.{i}.", f"blocks.{i}."
            out[f"{b}norm1.weight"] = hf[f"{h}input_layernorm.weight"]
            out[f"{b}norm2.weight"] = hf[f"{h}post_attention_layernorm.weight"]
            a = f"{h}self_attn."
            out[f"{b}attn.qkv.weight"] = torch.cat([hf[f"{a}{p}_proj.weight"] for p in "qkv"])
            if config.qkv_bias:
                out[f"{b}attn.qkv.bias"] = torch.cat([hf[f"{a}{p}_proj.bias"] for p in "qkv"])
            if config.qk_norm:
                out[f"{b}attn.q_norm.weight"] = hf[f"{a}q_norm.weight"]
                out[f"{b}attn.k_norm.weight"] = hf[f"{a}k_norm.weight"]
            out[f"{b}attn.proj.weight"] = hf[f"{a}o_proj.weight"]
            m = f"{h}mlp."
            out[f"{b}mlp.fc.weight"] = torch.cat([hf[f"{m}gate_proj.weight"], hf[f"{m}up_proj.weight"]])
            out[f"{b}mlp.proj.weight"] = hf[f"{m}down_proj.weight"]
    if config.tie_embeddings:
        out["lm_head.weight"] = out["wte.weight"]
    else:
        out["lm_head.weight"] = _pad_rows(hf["lm_head.weight"].float(), V)
    return out


def state_to_hf(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """GPT's state dict -> the Hugging Face state dict of export_layout(config): contiguous float32 tensors,
    the embedding cut back to vocab_size, a tied output matrix left out (transformers ties it on load)."""
    layout = export_layout(config)
    s = {k: v.detach().float().cpu() for k, v in state.items()}
    V, C = config.vocab_size, config.n_embd
    out = {}
    if layout == "gpt2":
        out["transformer.wte.weight"] = s["wte.weight"][:V]
        out["transformer.wpe.weight"] = s["wpe.weight"]
        out["transformer.ln_f.weight"] = s["norm.weight"]
        out["transformer.ln_f.bias"] = s.get("norm.bias", torch.zeros(C))
        for i in range(config.n_layer):
            h, b = f"transformer.h.{i}.", f"blocks.{i}."
            for ours, theirs, transpose in GPT2_BLOCK:
                w = s[f"{b}{ours}.weight"]
                if ours == "attn.qkv" and config.n_kv_head != config.n_head:  # GPT-2 has one K/V head per query head
                    w = _expand_kv(w, config)
                out[f"{h}{theirs}.weight"] = w.t() if transpose else w
                bias = s.get(f"{b}{ours}.bias")  # bias=false: GPT-2's biases are there, at zero
                if bias is not None and ours == "attn.qkv" and config.n_kv_head != config.n_head:
                    bias = _expand_kv(bias[:, None], config)[:, 0]
                out[f"{h}{theirs}.bias"] = bias if bias is not None else torch.zeros(w.size(0))
    else:  # llama, qwen2 (+ q, k, v biases), qwen3 (+ q_norm, k_norm)
        out["model.embed_tokens.weight"] = s["wte.weight"][:V]
        out["model.norm.weight"] = s["norm.weight"]
        sizes = [config.n_head * config.head_size] + [config.n_kv_head * config.head_size] * 2
        for i in range(config.n_layer):
            h, b = f"model.layers.{i}.", f"blocks.{i}."
            out[f"{h}input_layernorm.weight"] = s[f"{b}norm1.weight"]
            out[f"{h}post_attention_layernorm.weight"] = s[f"{b}norm2.weight"]
            for p, w in zip("qkv", s[f"{b}attn.qkv.weight"].split(sizes), strict=True):
                out[f"{h}self_attn.{p}_proj.weight"] = w
            if config.qkv_bias:
                for p, bias in zip("qkv", s[f"{b}attn.qkv.bias"].split(sizes), strict=True):
                    out[f"{h}self_attn.{p}_proj.bias"] = bias
            if config.qk_norm:
                out[f"{h}self_attn.q_norm.weight"] = s[f"{b}attn.q_norm.weight"]
                out[f"{h}self_attn.k_norm.weight"] = s[f"{b}attn.k_norm.weight"]
            out[f"{h}self_attn.o_proj.weight"] = s[f"{b}attn.proj.weight"]
            gate, up = s[f"{b}mlp.fc.weight"].chunk(2)
            out[f"{h}mlp.gate_proj.weight"], out[f"{h}mlp.up_proj.weight"] = gate, up
            out[f"{h}mlp.down_proj.weight"] = s[f"{b}mlp.proj.weight"]
    if not config.tie_embeddings:
        out["lm_head.weight"] = s["lm_head.weight"][:V]
    return {k: v.contiguous() for k, v in out.items()}


def _expand_kv(w: torch.Tensor, config: GPTConfig) -> torch.Tensor:
    """qkv rows (C + 2 kv, ...) -> (3 C, ...): each K/V head repeated for the query heads it serves."""
    C, kv, hs = config.n_embd, config.n_kv_head * config.head_size, config.head_size
    q, k, v = w.split([C, kv, kv])
    rep = config.n_head // config.n_kv_head

    def expand(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(config.n_kv_head, 1, hs, -1).expand(-1, rep, -1, -1).reshape(C, -1)

    return torch.cat([q, expand(k), expand(v)])


# ---- folders -----------------------------------------------------------------------------------------------


def resolve_source(source: str, download_dir: str | Path | None) -> Path:
    """A local folder as it is; a hub id (e.g. gpt2, owner/name) downloaded into download_dir/<id> with
    huggingface_hub when the network is allowed (download_dir None: folders only); otherwise a ConfigError
    that says what to fetch and where."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"init_from={source}: the folder has no config.json (a Hugging Face model folder)")
        return path
    if download_dir is None:
        raise ConfigError(f"init_from={source}: no such folder (a Hugging Face model folder with config.json)")
    target = Path(download_dir) / source.replace("/", "--")
    fix = (
        f"on a machine with network access run `hf download {source} --local-dir {target}` "
        f"(or huggingface-cli download) and copy that folder here, then pass init_from={target}"
    )
    if (target / "config.json").is_file():
        return target
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise ConfigError(f"init_from={source}: no such folder, and the hub is off (HF_HUB_OFFLINE): {fix}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ConfigError(f"init_from={source}: no such folder, and huggingface_hub is not installed: {fix}") from e
    patterns = [
        "*.safetensors",
        "model.safetensors.index.json",
        "tokenizer*",
        "chat_template.jinja",
        "vocab.json",
        "merges.txt",
    ]
    try:  # config.json alone first: a model ours cannot compute is refused before its weights are fetched
        snapshot_download(source, local_dir=target, allow_patterns=["config.json"])
        _refuse(source, unsupported(json.loads((target / "config.json").read_text())))
        snapshot_download(source, local_dir=target, allow_patterns=patterns)
    except ConfigError:
        (target / "config.json").unlink(missing_ok=True)  # a later run must not take the folder for a download
        raise
    except Exception as e:  # offline, unknown id, gated model
        raise ConfigError(f"init_from={source}: no such folder, and the hub download failed ({e}): {fix}") from e
    return target


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors (one file or shards with an index) or pytorch_model.bin (loaded weights_only)."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file() or index.is_file():
        from safetensors.torch import load_file

        if single.is_file():
            return load_file(single)
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(folder / shard).items()}
    bin_file = folder / "pytorch_model.bin"
    if bin_file.is_file():
        return torch.load(bin_file, map_location="cpu", weights_only=True, mmap=True)
    raise ConfigError(f"init_from={folder}: no weights: expected one of {list(WEIGHT_FILES)}")


@dataclass
class Pretrained:
    """A Hugging Face folder, read: the GPTConfig keys it fixes, its layout, where it is, and its chat template's
    Jinja source (chat_template.jinja, else tokenizer_config.json's chat_template; None for a base without one)."""

    folder: Path
    layout: str
    model_config: dict
    chat_template: str | None = None

    @classmethod
    def open(cls, source: str, download_dir: str | Path | None) -> Pretrained:
        """source: a folder, or a hub id fetched into download_dir (train.yaml's paths.hub_dir)."""
        from llm.interop.tokenizer import chat_template_from_hf

        folder = resolve_source(source, download_dir)
        hf = json.loads((folder / "config.json").read_text())
        return cls(folder, hf.get("model_type"), config_from_hf(hf, source), chat_template_from_hf(folder))

    def state_dict(self, config: GPTConfig) -> dict[str, torch.Tensor]:
        return state_from_hf(read_weights(self.folder), config, self.layout)

    def load_into(self, model: GPT) -> None:
        """Copy the weights into model, whose config must hold model_config's keys."""
        missing, unexpected = model.load_state_dict(self.state_dict(model.config), strict=False)
        missing = [k for k in missing if not k.endswith(("q_norm.weight", "k_norm.weight"))]
        if missing or unexpected:
            raise ConfigError(f"init_from={self.folder}: weights missing {missing[:4]}, unexpected {unexpected[:4]}")
        log.info("init_from: loaded %s weights from %s", self.layout, self.folder)


def load_pretrained(source: str, hub_dir: str | Path | None = None, **preset) -> GPT:
    """A GPT (eval mode) with a Hugging Face folder's weights (a hub id too, given hub_dir to download into);
    preset gives the keys that do not fix weights (attn, dropout, zero_init_proj), defaults suited to inference."""
    pretrained = Pretrained.open(source, hub_dir)
    keys = {"attn": "sdpa", "dropout": 0.0, "zero_init_proj": False} | preset
    model = GPT(GPTConfig(**keys, **pretrained.model_config))
    pretrained.load_into(model)
    return model.eval()


def save_pretrained(
    model: GPT, out: str | Path, bos_id: int | None, eos_id: int | None, stop_ids: list[int] | None = None
) -> Path:
    """config.json, generation_config.json and model.safetensors of model in out. stop_ids: the tokens
    generate() stops at (default eos_id): a chat model's end of turn besides the end of document."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = hf_config(model.config, bos_id, eos_id)
    save_file(state_to_hf(model.state_dict(), model.config), out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    stops = stop_ids if stop_ids and stop_ids != [eos_id] else eos_id
    generation = {"bos_token_id": bos_id, "eos_token_id": stops, "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out
