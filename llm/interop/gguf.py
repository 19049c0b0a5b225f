"""One .gguf file for llama.cpp (and Ollama, LM Studio): weights, architecture metadata and tokenizer.

Written from the Hugging Face state dict of llm/interop/hf.py as llama.cpp's own convert_hf_to_gguf.py writes
that layout: architecture `llama`, `qwen2`, `qwen3` or `gpt2`, tensor names from the `gguf` package's name map
(the one the converter uses), the same metadata keys, and the same types: `dtype=f32|f16|bf16|q8_0` stores the
matrices in that type and keeps every vector (norm gains, biases) and GPT-2's position table in float32, with
F16 for a matrix whose rows do not split into Q8_0's blocks of 32.

llama.cpp runs `llama` with its own rotary convention, adjacent pairs (x[2i], x[2i+1]), where ours and Hugging
Face's rotate halves (x[i], x[i + hs/2]): the rows of q and k are permuted within each head so the same pairs
turn by the same angles. `qwen2` and `qwen3` run rotate-half (llama.cpp's NEOX rope) and are written as they are.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from llm.errors import ConfigError
from llm.interop.hf import export_layout, state_to_hf
from llm.interop.tokenizer import gguf_vocab
from llm.model import GPT

log = logging.getLogger(__name__)

TOKEN_UNUSED = 5  # gguf.TokenType.UNUSED: ids the model has and the tokenizer never produces
# dtype= -> (general.file_type, the matrices' type), as llama.cpp's converter's --outtype
DTYPES = {"f32": ("ALL_F32", "F32"), "f16": ("MOSTLY_F16", "F16"), "bf16": ("MOSTLY_BF16", "BF16")}
DTYPES |= {"q8_0": ("MOSTLY_Q8_0", "Q8_0")}
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")  # stored (in, out)


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not one of {list(DTYPES)}")
    return dtype


def permute_rotary(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of q or k (n_head * hs, C), rotate-half order -> llama.cpp's interleaved pairs, head by head.

    Within a head, row i (i < hs/2) and row i + hs/2 form a rotated pair; they become rows 2i and 2i+1."""
    hs = w.size(0) // n_head
    return w.reshape(n_head, 2, hs // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model: GPT) -> dict[str, np.ndarray]:
    """GGUF name -> float32 array in llama.cpp's layout (numpy shape (out, in), as a Linear weight)."""
    import gguf

    config = model.config
    layout = export_layout(config)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[layout.upper()], config.n_layer)
    out = {}
    for name, t in state_to_hf(model.state_dict(), config).items():
        if layout == "gpt2" and name.endswith(CONV1D):
            t = t.t()
        if layout == "llama" and ".self_attn.q_proj." in name:
            t = permute_rotary(t, config.n_head)
        elif layout == "llama" and ".self_attn.k_proj." in name:
            t = permute_rotary(t, config.n_kv_head)
        ggml = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert ggml is not None, f"{name} has no {layout} name in gguf's tensor map"
        out[ggml] = t
    if layout == "gpt2" and "output.weight" not in out:  # llama.cpp's converter writes GPT-2's tied head out
        out["output.weight"] = out["token_embd.weight"]
    return {k: np.ascontiguousarray(v.numpy(), dtype=np.float32) for k, v in out.items()}


def tensor_type(name: str, array: np.ndarray, dtype: str):
    """The type llama.cpp's converter stores this tensor in for --outtype dtype: float32 for vectors (norm gains,
    biases) and position tables, dtype's type for the matrices."""
    import gguf

    if array.ndim <= 1 or not name.endswith(".weight") or name.endswith("_norm.weight") or name.startswith("position_"):
        return gguf.GGMLQuantizationType.F32
    return gguf.GGMLQuantizationType[DTYPES[dtype][1]]


def write_gguf(
    model: GPT,
    tok: Tokenizer,
    path: str | Path,
    name: str = "llm",
    dtype: str = "f32",
    chat_template: str | None = None,
) -> Path:
    """The model and its tokenizer as one .gguf file at path, its matrices in dtype (f32, f16, bf16, q8_0).

    chat_template: an imported base's (tokenizer.chat_template, which llama.cpp's chat mode reads)."""
    import gguf

    config = model.config
    check_dtype(dtype)
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
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_block_count(config.n_layer)
    w.add_context_length(config.block_size)
    w.add_embedding_length(config.n_embd)
    w.add_feed_forward_length(config.mlp_hidden)
    w.add_head_count(config.n_head)
    if layout == "gpt2":
        w.add_head_count_kv(config.n_head)  # the K/V heads were repeated into GPT-2's one per query head
        w.add_layer_norm_eps(config.norm_eps)
        w.add_vocab_size(n)
    else:  # the keys TextModel.set_gguf_parameters writes for the config.json of llm/interop/hf.py
        w.add_head_count_kv(config.n_kv_head)
        w.add_rope_freq_base(config.rope_base)
        w.add_layer_norm_rms_eps(config.norm_eps)
        w.add_key_length(config.head_size)  # config.json has head_dim: the converter writes both
        w.add_value_length(config.head_size)
    if layout == "llama":  # LlamaModel adds these two
        w.add_vocab_size(n)
        w.add_rope_dimension_count(config.head_size)
    w.add_file_type(gguf.LlamaFileType[DTYPES[dtype][0]])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")  # byte-level BPE
    w.add_tokenizer_pre(vocab["pre"])
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(vocab["merges"])
    w.add_bos_token_id(vocab["eos_id"])
    w.add_eos_token_id(vocab["eos_id"])
    w.add_add_bos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    tensors = gguf_tensors(model)
    for tensor_name, array in tensors.items():
        kind = tensor_type(tensor_name, array, dtype)
        try:
            data = gguf.quants.quantize(array, kind)
        except gguf.QuantError:  # a row length Q8_0's blocks of 32 do not divide: F16, as the converter does
            kind = gguf.GGMLQuantizationType.F16
            data = gguf.quants.quantize(array, kind)
        w.add_tensor(tensor_name, data, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    log.info("wrote %s (%s layout, %s, %d tensors)", path, layout, dtype, len(tensors))
    return path
