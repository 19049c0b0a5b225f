"""A decoder-only transformer, written out by hand.

Reads top to bottom like the papers it comes from:
GPTConfig -> RMSNorm -> rotary embedding -> attention -> MLP -> Block -> GPT.

The module is plain PyTorch: it never sees a Hydra config, a Lightning trainer or a tokenizer.
Shapes use B = batch, T = time (tokens), C = channels (n_embd), nh = heads, hs = head size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llm.errors import ConfigError

CHOICES = {
    "attn": ("explicit", "sdpa"),
    "pos": ("rope", "learned"),
    "norm": ("rmsnorm", "layernorm"),
    "mlp": ("swiglu", "gelu", "relu2"),
}


@dataclass(kw_only=True)
class GPTConfig:
    """The model's shape and variants. Every preset in conf/model/ names each key without a default here."""

    vocab_size: int  # tokenizer size; the embedding is padded up to a multiple of 64
    block_size: int  # longest context the model attends over
    n_layer: int
    n_head: int
    n_kv_head: int | None  # None: one K/V head per query head; fewer: grouped-query attention
    n_embd: int
    attn: str  # explicit: the math written out; sdpa: torch's fused kernel
    pos: str  # rope: rotary embedding of q and k; learned: absolute position table
    norm: str  # rmsnorm | layernorm
    mlp: str  # swiglu | gelu | relu2
    bias: bool  # biases in Linear layers and LayerNorm (GPT-2 has them)
    dropout: float
    qk_norm: bool  # RMSNorm of q and k per head before rope: attention logits cannot blow up
    zero_init_proj: bool  # attention and MLP output projections start at 0: each block starts as identity
    logit_softcap: float | None  # logits = cap * tanh(logits / cap); None: raw logits
    tie_embeddings: bool  # lm_head reuses the token embedding (GPT-2); false: a separate output matrix
    value_embeds: int  # tables of value embeddings: table i mixes into V of layers i and n_layer - 1 - i (0: none)
    unet_skips: bool  # layer n_layer - 1 - i adds the output of layer i (i < n_layer // 2), learned weight
    mlp_hidden: int | None = None  # None: 4*C for GELU and ReLU², ~8/3*C (multiple of 64) for SwiGLU
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    # Shape keys a pretrained base may fix (llm/interop/hf.py): defaults here, so checkpoints without them load
    qkv_bias: bool = False  # biases on q, k and v only, not on the output projection (Qwen2); bias=true has them all
    head_dim: int | None = None  # None: C / nh; set, the heads are wider or narrower than that (Qwen3: 128 at C=1024)

    def __post_init__(self) -> None:
        for key, allowed in CHOICES.items():
            value = getattr(self, key)
            if value not in allowed:
                raise ConfigError(f"model.config.{key}={value!r} is not one of {list(allowed)}")
        for key in ("qk_norm", "zero_init_proj", "tie_embeddings", "bias", "qkv_bias", "unet_skips"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"model.config.{key}={getattr(self, key)!r} is not one of [true, false]")
        cap = self.logit_softcap
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int | float) or cap <= 0):
            raise ConfigError(f"model.config.logit_softcap={cap!r} must be a number > 0, or null for no cap")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        for key in ("block_size", "n_layer", "n_head", "n_kv_head", "n_embd"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.config.{key}={getattr(self, key)} must be at least 1")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.config.dropout={self.dropout} must be in [0, 1)")
        if self.head_dim is None and self.n_embd % self.n_head:
            raise ConfigError(
                f"model.config.n_embd={self.n_embd} must be divisible by model.config.n_head={self.n_head}, "
                "or model.config.head_dim set"
            )
        hd = self.head_dim
        if hd is not None and (isinstance(hd, bool) or not isinstance(hd, int) or hd < 1):
            raise ConfigError(
                f"model.config.head_dim={self.head_dim!r} must be an integer >= 1, or null for n_embd / n_head"
            )
        if self.n_head % self.n_kv_head:
            raise ConfigError(
                f"model.config.n_head={self.n_head} must be divisible by model.config.n_kv_head={self.n_kv_head}"
            )
        if self.pos == "rope" and self.head_size % 2:
            raise ConfigError(f"rotary embedding needs an even head size, got {self.head_size}")
        ve = self.value_embeds
        most = (self.n_layer + 1) // 2  # one table per pair of layers from both ends (the middle layer: its own)
        if isinstance(ve, bool) or not isinstance(ve, int) or not 0 <= ve <= most:
            raise ConfigError(
                f"model.config.value_embeds={ve!r} must be a whole number from 0 to (n_layer + 1) // 2 = {most}"
            )
        if self.mlp_hidden is None:
            if self.mlp != "swiglu":
                self.mlp_hidden = 4 * self.n_embd
            else:  # keeps SwiGLU's three matrices at the parameter count of GELU's two
                self.mlp_hidden = 64 * math.ceil(8 * self.n_embd / 3 / 64)

    @property
    def head_size(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        return 64 * math.ceil(self.vocab_size / 64)  # matmuls run faster on multiples of 64

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: LayerNorm without the mean subtraction or bias."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()  # the mean of squares in float32 even under autocast
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


def rope_cache(length: int, head_size: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * frequency, each (length, head_size // 2)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (length, hs/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[i], x[i + hs/2]) of x (B, nh, T, hs) by its position's angle.

    cos and sin are (T, hs/2) or (B, 1, T, hs/2) when rows sit at different positions.
    """
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return rotated.type_as(x)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv, T, hs) -> (B, n_kv * n_rep, T, hs): each K/V head serves n_rep query heads."""
    if n_rep == 1:
        return x
    B, n_kv, T, hs = x.shape
    return x[:, :, None].expand(B, n_kv, n_rep, T, hs).reshape(B, n_kv * n_rep, T, hs)


def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(Q Kᵀ / sqrt(hs) + causal mask) in float32: (B, nh, T, S), each row sums to 1.

    q (B, nh, T, hs); k (B, nh, S, hs). mask: boolean, True where a query may attend; None: causal, query t
    seeing keys 0..t (the last T of S keys are the queries' own)."""
    T, S = q.size(-2), k.size(-2)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # (B, nh, T, S)
    if mask is None:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    scores = scores.masked_fill(~mask, float("-inf"))
    return F.softmax(scores.float(), dim=-1)


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float = 0.0
) -> torch.Tensor:
    """softmax(Q Kᵀ / sqrt(hs) + causal mask) V, step by step. q (B, nh, T, hs); k, v (B, nh, S, hs).

    dropout_p drops attention weights, as SDPA does."""
    weights = attention_probs(q, k, mask).type_as(q)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v  # (B, nh, T, hs)


def document_mask(pos: torch.Tensor) -> torch.Tensor:
    """(B, T) positions that restart at 0 where each document starts -> (B, 1, T, T) boolean mask, True where query t
    may attend to key s: s <= t and both in the same document. With it, several documents packed into one window
    are each attended to as if alone (their positions restart too: pass pos as input_pos)."""
    doc = (pos == 0).cumsum(-1)  # (B, T): which document of the window each token belongs to
    T = pos.size(-1)
    causal = torch.ones(T, T, dtype=torch.bool, device=pos.device).tril()
    return (causal & (doc[:, :, None] == doc[:, None, :]))[:, None]  # (B, 1, T, T)


class KVCache(nn.Module):
    """K and V of one attention layer for every position decoded so far: (B, n_kv, S, hs) each.

    Allocated at full length and written in place at input_pos, so every decode step has the same shapes
    and a compiled step never respecialises. GPT.setup_caches makes them; training never has one."""

    def __init__(
        self, batch: int, n_kv_head: int, length: int, head_size: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        shape = (batch, n_kv_head, length, head_size)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, n_kv, T, hs) at input_pos, (T,) shared or (B, T) per row; return the whole cache.

        rows: which cache rows (B,) the batch is, when it is not all of them (a server prefilling new
        requests into free rows while the others wait); the cache of those rows alone is returned."""
        if rows is None and input_pos.dim() == 1:  # every row at the same positions (prefill)
            self.k_cache.index_copy_(2, input_pos, k)
            self.v_cache.index_copy_(2, input_pos, v)
            return self.k_cache, self.v_cache
        # Each row at its own positions (a decode step), or given rows at the same positions (a prefill into
        # free slots): one indexed write, which the compiler does in place. A scatter_ here made the compiled
        # step copy both whole caches of every layer on every step (docs/benchmarks.md).
        index = torch.arange(k.size(0), device=k.device) if rows is None else rows
        self.k_cache[index[:, None], :, input_pos] = k.transpose(1, 2)  # (B, T, n_kv, hs) by advanced indexing
        self.v_cache[index[:, None], :, input_pos] = v.transpose(1, 2)
        if rows is None:
            return self.k_cache, self.v_cache
        return self.k_cache[rows], self.v_cache[rows]  # (B, n_kv, S, hs)


def filled_length(n: int, cache_len: int, bucket: int = 64) -> int:
    """How many cache positions a step reads when n are filled: n rounded up to a multiple of bucket, at most
    cache_len. Rounding keeps the lengths few, so a compiled step replayed as a CUDA graph records one graph per
    bucket, not one per token; the extra positions are masked."""
    return min(cache_len, bucket * math.ceil(n / bucket))


class Attention(nn.Module):
    """Multi-head causal self-attention, with grouped-query K/V heads when n_kv_head < n_head.

    The heads together are nh * hs wide: C unless head_dim says otherwise (qkv maps C to it, proj back to C)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.n_head, self.n_kv_head, self.head_size = config.n_head, config.n_kv_head, config.head_size
        self.q_size, self.kv_size = config.n_head * config.head_size, config.n_kv_head * config.head_size
        self.qkv = nn.Linear(config.n_embd, self.q_size + 2 * self.kv_size, bias=config.bias or config.qkv_bias)
        self.proj = nn.Linear(self.q_size, config.n_embd, bias=config.bias)
        # QK-norm: one gain vector of head size, shared by the heads (and by q's and k's own heads)
        self.q_norm = RMSNorm(config.head_size, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_size, config.norm_eps) if config.qk_norm else None
        self.dropout = config.dropout
        self.kv_cache: KVCache | None = None  # set by GPT.setup_caches for decoding, never in training
        self.ve_lambdas: nn.Parameter | None = None  # GPT gives a layer with a value embedding its two mixing weights

    def mix_values(self) -> None:
        """Give this layer a value embedding: v = λ0 v + λ1 ve, λ learned from (0.5, 0.5) (modded-nanogpt)."""
        self.ve_lambdas = nn.Parameter(torch.full((2,), 0.5))

    def project(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, ve: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> q (B, nh, T, hs), k and v (B, n_kv, T, hs); q and k rotated when rope is given.

        ve (B, T, n_kv * hs): the value embedding of x's tokens, mixed into v when this layer has one."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if ve is not None and self.ve_lambdas is not None:  # a token's own vector, straight into what it passes on
            v = self.ve_lambdas[0] * v + self.ve_lambdas[1] * ve
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.head_size).transpose(1, 2)  # (B, n_kv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.head_size).transpose(1, 2)  # (B, n_kv, T, hs)
        if self.q_norm is not None:  # over each head's hs channels
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        input_pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        attn_impl: str | None = None,
        cache_rows: torch.Tensor | None = None,
        ve: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.project(x, rope, ve)
        if input_pos is not None and self.kv_cache is not None:
            k, v = self.kv_cache.update(input_pos, k, v, cache_rows)  # (B, n_kv, S, hs): every position so far
            if mask is not None:  # only the first S' <= S positions the mask covers: those filled so far
                k, v = k[:, :, : mask.size(-1)], v[:, :, : mask.size(-1)]  # (B, n_kv, S', hs), views
        rep = self.n_head // self.n_kv_head
        k, v = repeat_kv(k, rep), repeat_kv(v, rep)  # (B, nh, S, hs)
        dropout = self.dropout if self.training else 0.0
        if (attn_impl or self.config.attn) == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None)
        else:
            y = explicit_attention(q, k, v, mask, dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, self.q_size)  # heads side by side again: (B, T, nh * hs)
        return F.dropout(self.proj(y), dropout, self.training)  # GPT-2's residual dropout, as after the MLP

    def weights(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """The causal attention weights of x (B, T, C), without dropout: (B, nh, T, T) float32, rows sum to 1."""
        q, k, _ = self.project(x, rope)
        return attention_probs(q, repeat_kv(k, self.n_head // self.n_kv_head), None)


class MLP(nn.Module):
    """Position-wise feed-forward: GELU (GPT-2), SwiGLU (LLaMA) or ReLU² (Primer, modded-nanogpt)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.kind = config.mlp
        self.gated = config.mlp == "swiglu"
        n_in = 2 * config.mlp_hidden if self.gated else config.mlp_hidden  # SwiGLU: gate and value in one matmul
        self.fc = nn.Linear(config.n_embd, n_in, bias=config.bias)
        self.proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.gated:
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        elif self.kind == "relu2":
            h = F.relu(h).square()  # sparse like ReLU, smooth at 0 like GELU
        else:
            h = F.gelu(h, approximate="tanh")
        return self.dropout(self.proj(h))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(config)
        self.attn = Attention(config)
        self.norm2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope, input_pos=None, mask=None, attn_impl=None, cache_rows=None, ve=None):
        x = x + self.attn(self.norm1(x), rope, input_pos, mask, attn_impl, cache_rows, ve)
        return x + self.mlp(self.norm2(x))

    def attention_weights(self, x, rope):
        """The weights this block's attention gives its input x (B, T, C): (B, nh, T, T)."""
        return self.attn.weights(self.norm1(x), rope)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        # Value embeddings: a table per pair of layers (i, n_layer - 1 - i), vectors as wide as the K/V heads
        kv_size = config.n_kv_head * config.head_size
        self.value_embeds = nn.ModuleList(
            nn.Embedding(config.padded_vocab_size, kv_size) for _ in range(config.value_embeds)
        )
        for i in range(config.value_embeds):
            self.blocks[i].attn.mix_values()
            self.blocks[config.n_layer - 1 - i].attn.mix_values()
        # U-net skips: the second half's layer n_layer - 1 - i reads the first half's layer i, weighted from 1
        self.skip_weights = nn.Parameter(torch.ones(config.n_layer // 2)) if config.unet_skips else None
        self.norm = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # tied: one matrix reads tokens in and writes them out
        if config.pos == "rope":
            cos, sin = rope_cache(config.block_size, config.head_size, config.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("causal_mask", None, persistent=False)  # (S, S) with the caches: setup_caches
        self.apply(self._init_weights)
        # Residual projections add into the stream 2 * n_layer times: scale them so it does not grow.
        # Zero-initialised instead, each block starts as the identity and learns what to add.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") and config.zero_init_proj:
                nn.init.zeros_(p)
            elif name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self,
        idx: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        attn_impl: str | None = None,
        cache_rows: torch.Tensor | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, padded_vocab_size), or (B, 1, padded_vocab_size) with logits_at.

        input_pos: positions of idx, (T,) shared by the batch or (B, T) per row; default 0..T-1. Given while
        caches are set up (setup_caches), K and V are written there and attention reads the cache.
        mask: boolean (B or 1, 1, T, S'), True where a query may attend; default causal. With the caches, the
        keys are the first S' cache positions (S' at most the cache's length S): a step passes a mask over the
        positions filled so far (cache_mask), so attention reads none of the empty rest.
        attn_impl: "explicit" or "sdpa" for this call; default config.attn.
        cache_rows: (B,) the rows of the caches idx goes to, when it is not all of them: a server prefills a new
        request (input_pos (T,)) into a free row while the other rows keep theirs.
        logits_at: (B,) one position per row whose logits are wanted (a prefill needs each prompt's last only):
        the output layer, the largest product of a small model, runs on B vectors instead of B * T.
        """
        x, rope = self._embed(idx, input_pos)
        x = self._run_blocks(x, idx, rope, input_pos, mask, attn_impl, cache_rows)
        if logits_at is not None:
            x = x[torch.arange(x.size(0), device=x.device), logits_at][:, None]  # (B, 1, C)
        logits = self.lm_head(self.norm(x))
        cap = self.config.logit_softcap
        if cap is not None:  # smoothly into (-cap, cap), in float32: tanh saturates coarsely in bfloat16
            logits = (cap * torch.tanh(logits.float() / cap)).type_as(logits)
        return logits

    def _run_blocks(self, x, idx, rope, input_pos=None, mask=None, attn_impl=None, cache_rows=None, before=None):
        """The residual stream x (B, T, C) through every block, with the value embeddings of idx (B, T) and the
        U-net skips where the config has them. before(i, x): called with each block's input (attention maps)."""
        L, n_ve = self.config.n_layer, len(self.value_embeds)
        ves = [table(idx) for table in self.value_embeds]  # (B, T, n_kv * hs) each
        skips = []
        for i, block in enumerate(self.blocks):
            if self.skip_weights is not None and i >= L - len(self.skip_weights):
                x = x + self.skip_weights[L - 1 - i] * skips.pop()  # the output of layer L - 1 - i
            if before is not None:
                before(i, x)
            ve = ves[i] if i < n_ve else ves[L - 1 - i] if i >= L - n_ve else None
            x = block(x, rope, input_pos, mask, attn_impl, cache_rows, ve)
            if self.skip_weights is not None and i < len(self.skip_weights):
                skips.append(x)
        return x

    def _embed(
        self, idx: torch.Tensor, input_pos: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Token ids (B, T) -> the residual stream (B, T, C) and the rotary cos, sin of their positions."""
        T = idx.size(1)
        if input_pos is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens is longer than block_size={self.config.block_size}")
            input_pos = torch.arange(T, device=idx.device)
        x = self.wte(idx)  # (B, T, C)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(input_pos)
        else:
            cos, sin = self.rope_cos[input_pos], self.rope_sin[input_pos]  # (T, hs/2) or (B, T, hs/2)
            if input_pos.dim() == 2:
                cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hs/2) broadcasts over heads
            rope = (cos, sin)
        return self.drop(x), rope

    @torch.no_grad()
    def attention_weights(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's attention weights for token ids idx (B, T): one (B, n_head, T, T) float32 per layer.

        Row t holds how much query t draws from each key 0..t: it sums to 1 and the upper triangle is 0.
        The layers' own projection, rotary embedding and softmax compute them (Attention.weights); in eval
        mode they are the weights of model(idx).
        """
        x, rope = self._embed(idx)
        maps = []
        self._run_blocks(x, idx, rope, before=lambda i, h: maps.append(self.blocks[i].attention_weights(h, rope)))
        return maps

    def setup_caches(self, batch: int, length: int, dtype: torch.dtype | None = None) -> bool:
        """Give every attention layer a KVCache of `length` positions for `batch` rows, and the model the causal
        mask `causal_mask` (length, length), True where a query may attend, on the weights' device.

        dtype: the caches' (default the weights'). A no-op when the caches already have this shape, dtype and
        device (and returns True), so a compiled decode step finds its buffers where it was compiled for them (torch
        guards their identity; a CUDA graph, their addresses). Entries left by an earlier call are harmless: a
        position is written before any query may attend to it. Only calls given input_pos use the caches;
        clear_caches() frees them.
        """
        if length > self.config.block_size:
            raise ValueError(f"cache of {length} positions is longer than block_size={self.config.block_size}")
        weight = self.lm_head.weight
        dtype = dtype or weight.dtype
        c = self.config
        shape = (batch, c.n_kv_head, length, c.head_size)
        cache = self.blocks[0].attn.kv_cache
        if cache is not None:
            k = cache.k_cache
            if k.shape == shape and k.dtype == dtype and k.device == weight.device:
                return True
        self.clear_caches()  # the old buffers go before the new ones are allocated
        for block in self.blocks:
            block.attn.kv_cache = KVCache(batch, c.n_kv_head, length, c.head_size, dtype, weight.device)
        self.causal_mask = torch.ones(length, length, dtype=torch.bool, device=weight.device).tril()
        return False

    def cache_mask(self, input_pos: torch.Tensor, length: int) -> torch.Tensor:
        """The mask of a decode step: (B, 1, 1, length), row b True at the cache positions <= input_pos[b].

        input_pos (B, 1); length: how many cache positions attention reads, at least max(input_pos) + 1. Reading
        only the filled prefix rather than the whole cache (filled_length) makes attention's cost grow with the
        tokens so far, not with the context: at 8 rows it was a sixth of an eager step over the whole cache."""
        return self.causal_mask[input_pos, :length][:, None]

    def clear_caches(self) -> None:
        """Free the caches and the causal mask of setup_caches."""
        for block in self.blocks:
            block.attn.kv_cache = None
        self.causal_mask = None

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; a tied embedding counts once, position tables are left out by default."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.wpe is not None:
            n -= self.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6 N plus attention's 12 L (nh hs) T (PaLM, appendix B).

        N counts the matrices a token is multiplied by: an untied input embedding and value embeddings are lookups."""
        T = seq_len or self.config.block_size
        c = self.config
        n = self.num_params() - (0 if c.tie_embeddings else self.wte.weight.numel())
        n -= sum(table.weight.numel() for table in self.value_embeds)  # lookups too
        return 6 * n + 12 * c.n_layer * c.n_head * c.head_size * T

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Decay matrices (embeddings, linear weights); never biases or norm gains (QK-norm's too).

        Chosen by name, not by shape: under FSDP every parameter is a flat 1-D shard by the time the
        optimizer is built."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            owner = name.rsplit(".", 2)[-2] if "." in name else ""  # norm1, norm2, norm, q_norm, k_norm: gains
            scalar = name.endswith(("bias", "ve_lambdas", "skip_weights"))  # mixing weights decay no more than gains
            (no_decay if scalar or "norm" in owner else decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
