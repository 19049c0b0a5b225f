"""One .gguf file for llama.cpp (and Ollama, LM Studio): weights, architecture metadata and tokenizer.

Written from the Hugging Face state dict of llm/interop/hf.py, with llama.cpp's own names and conventions
(as its convert_hf_to_gguf.py writes them): `llama` for the Llama layout, `gpt2` for GPT-2's. Every tensor
is float32. llama.cpp's rotary embedding rotates adjacent pairs (x[2i], x[2i+1]) where ours and Hugging
Face's rotate halves (x[i], x[i + hs/2]): the rows of q and k are permuted within each head so the same
pairs turn by the same angles.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from llm.interop.hf import export_layout, state_to_hf
from llm.interop.tokenizer import gguf_vocab
from llm.model import GPT

log = logging.getLogger(__name__)

TOKEN_UNUSED = 5  # gguf.TokenType.UNUSED: ids the model has and the tokenizer never produces

# Hugging Face name (after the layer prefix) -> GGUF name, per layout
LAYER_NAMES = {
    "llama": {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    },
    "gpt2": {
        f"{theirs}.{p}": f"{ggml}.{p}"
        for theirs, ggml in (
            ("ln_1", "attn_norm"),
            ("attn.c_attn", "attn_qkv"),
            ("attn.c_proj", "attn_output"),
            ("ln_2", "ffn_norm"),
            ("mlp.c_fc", "ffn_up"),
            ("mlp.c_proj", "ffn_down"),
        )
        for p in ("weight", "bias")
    },
}
GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "transformer.wte.weight": "token_embd.weight",
    "transformer.wpe.weight": "position_embd.weight",
    "transformer.ln_f.weight": "output_norm.weight",
    "transformer.ln_f.bias": "output_norm.bias",
    "lm_head.weight": "output.weight",
}
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")  # stored (in, out)


def permute_rotary(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of q or k (n_head * hs, C), rotate-half order -> llama.cpp's interleaved pairs, head by head.

    Within a head, row i (i < hs/2) and row i + hs/2 form a rotated pair; they become rows 2i and 2i+1."""
    hs = w.size(0) // n_head
    return w.reshape(n_head, 2, hs // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model: GPT) -> dict[str, np.ndarray]:
    """GGUF name -> float32 array in llama.cpp's layout (numpy shape (out, in), as a Linear weight)."""
    config = model.config
    layout = export_layout(config)
    hf = state_to_hf(model.state_dict(), config)
    out = {}
    for name, t in hf.items():
        if name in GLOBAL_NAMES:
            out[GLOBAL_NAMES[name]] = t
            continue
        prefix = "model.layers." if layout == "llama" else "transformer.h."
        i, rest = name.removeprefix(prefix).split(".", 1)
        if layout == "gpt2" and rest in CONV1D:
            t = t.t()
        if rest == "self_attn.q_proj.weight":
            t = permute_rotary(t, config.n_head)
        elif rest == "self_attn.k_proj.weight":
            t = permute_rotary(t, config.n_kv_head)
        out[f"blk.{i}.{LAYER_NAMES[layout][rest]}"] = t
    if layout == "gpt2" and "output.weight" not in out:  # llama.cpp's converter writes GPT-2's tied head out
        out["output.weight"] = out["token_embd.weight"]
    return {k: np.ascontiguousarray(v.numpy(), dtype=np.float32) for k, v in out.items()}


def write_gguf(model: GPT, tok: Tokenizer, path: str | Path, name: str = "llm") -> Path:
    """The model and its tokenizer as one float32 .gguf file at path."""
    import gguf

    config = model.config
    layout = export_layout(config)
    vocab = gguf_vocab(tok)  # refuses a tokenizer llama.cpp would read differently before anything is written
    n = config.vocab_size
    tokens, types = vocab["tokens"], vocab["types"]
    if len(tokens) < n:  # the embedding has rows the tokenizer never produces: llama.cpp wants one token per row
        types = types + [TOKEN_UNUSED] * (n - len(tokens))
        tokens = tokens + [f"[PAD{i}]" for i in range(len(tokens), n)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), layout)
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(config.block_size)
    w.add_embedding_length(config.n_embd)
    w.add_block_count(config.n_layer)
    w.add_feed_forward_length(config.mlp_hidden)
    w.add_head_count(config.n_head)
    w.add_vocab_size(n)
    if layout == "llama":
        w.add_head_count_kv(config.n_kv_head)
        w.add_rope_freq_base(config.rope_base)
        w.add_rope_dimension_count(config.head_size)
        w.add_layer_norm_rms_eps(config.norm_eps)
    else:
        w.add_head_count_kv(config.n_head)  # the K/V heads were repeated into GPT-2's one per query head
        w.add_layer_norm_eps(config.norm_eps)
    w.add_tokenizer_model("gpt2")  # byte-level BPE
    w.add_tokenizer_pre("gpt-2")  # GPT-2's pre-tokenizer regex, as pre_tokenizers.ByteLevel
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(vocab["merges"])
    w.add_bos_token_id(vocab["eos_id"])
    w.add_eos_token_id(vocab["eos_id"])
    w.add_add_bos_token(False)
    tensors = gguf_tensors(model)
    for tensor_name, array in tensors.items():
        w.add_tensor(tensor_name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    log.info("wrote %s (%s layout, %d tensors)", path, layout, len(tensors))
    return path
