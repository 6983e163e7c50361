"""A Llama-3 decoder in Flax NNX, annotated with logical axes only.

Reads top to bottom: RMSNorm, RoPE, grouped-query attention, SwiGLU MLP,
decoder layer, model. Parameter paths follow Hugging Face names
(`layers.0.self_attn.q_proj`) so checkpoints map one to one (`hf.py`). The
Hugging Face families it also covers add small switches: q/k norms (Qwen3),
q/k/v biases (Qwen2), RoPE scaling (Llama 3.1), tied embeddings. The MoE model
(`moe.py`) is this model with another FFN.

Attention itself is a function passed in (`attend`): dense causal attention
here, paged attention over each DP rank's KV pages in the runtime; the rest of
the model is the same code in both.

Sharding enters through one explicit argument, a `Layout` (`shardspec.protocol`):
`constrain(x, name)` pins activations at the named points of
`axes.ACTIVATIONS`, and `attention_inputs` repeats each KV head as the plan
stores it, so every device of the `model` axis holds the KV heads its query
heads read. The model implements the serving protocol of `shardspec.protocol`
(`decoder_geometry`, `hidden_states`, `logits`); that is all the runtime knows
of it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from shardspec.protocol import UNSHARDED, Attend, DecoderGeometry, Layout, causal_attention

from .axes import EMBED, HEAD_DIM, HEADS, KV_HEADS, MLP, VOCAB
from .config import LlamaConfig


def _param(rngs: nnx.Rngs | None, shape, axes, dtype, fan_in: int | None = None) -> nnx.Param:
    """A parameter with its logical axes; `rngs=None` builds an abstract one (no memory).

    Scaled normal init: logits of a random model stay O(1), so greedy tokens are
    well separated and sharded-vs-unsharded checks are meaningful.
    """
    if rngs is None:
        return nnx.Param(jax.ShapeDtypeStruct(shape, dtype), out_sharding=axes)
    std = 1.0 if fan_in is None else fan_in**-0.5
    return nnx.Param(nnx.initializers.normal(std)(rngs.params(), shape, dtype), out_sharding=axes)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, dtype, abstract: bool = False, axis: str = EMBED):
        ones = jax.ShapeDtypeStruct((dim,), dtype) if abstract else jnp.ones((dim,), dtype)
        self.scale = nnx.Param(ones, out_sharding=(axis,))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def rope_frequencies(cfg: LlamaConfig, dim: int | None = None) -> tuple[float, ...]:
    """RoPE's dim/2 inverse frequencies (dim: the rotated channels, default head_dim), with
    the config's scaling, as Hugging Face computes them."""
    dim = dim or cfg.head_dim
    half, s = dim // 2, cfg.rope_scaling
    freqs = [cfg.rope_theta ** (-i / half) for i in range(half)]
    if s is None:
        return tuple(freqs)
    if s.kind == "linear":
        return tuple(f / s.factor for f in freqs)
    if s.kind == "yarn":
        return _yarn_frequencies(freqs, dim, cfg.rope_theta, s)
    # llama3: long wavelengths slowed by `factor`, short ones kept, a smooth blend between.
    low_wavelen = s.original_max_position / s.low_freq_factor
    high_wavelen = s.original_max_position / s.high_freq_factor
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(f)
        elif wavelen > low_wavelen:
            out.append(f / s.factor)
        else:
            smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
            out.append((1 - smooth) * f / s.factor + smooth * f)
    return tuple(out)


def _yarn_frequencies(freqs: list[float], dim: int, theta: float, s) -> tuple[float, ...]:
    """YaRN: frequencies that turn fewer than beta_slow times over the pre-training context
    are interpolated (÷ factor), those turning more than beta_fast times kept, a linear
    ramp between (over the channel index)."""

    def channel(rotations: float) -> float:  # the channel whose frequency turns `rotations` times
        return dim * math.log(s.original_max_position / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = channel(s.beta_fast), channel(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    high = high + 0.001 if low == high else high  # no zero-width ramp
    out = []
    for i, f in enumerate(freqs):
        kept = 1 - min(max((i - low) / (high - low), 0.0), 1.0)
        out.append(f / s.factor * (1 - kept) + f * kept)
    return tuple(out)


def rope_attention_factor(cfg: LlamaConfig) -> float:
    """What YaRN multiplies the rotated channels by (cos and sin), as Hugging Face does; 1 otherwise."""
    s = cfg.rope_scaling
    if s is None or s.kind != "yarn":
        return 1.0
    if s.attention_factor is not None:
        return s.attention_factor
    if s.mscale and s.mscale_all_dim:
        return yarn_mscale(s.factor, s.mscale) / yarn_mscale(s.factor, s.mscale_all_dim)
    return yarn_mscale(s.factor)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope(x, positions, freqs: tuple[float, ...], factor: float = 1.0, interleaved: bool = False):
    """Rotary embedding. x: [B, T, H, D]; positions: [B, T]. Channel pairs are (i, i + D/2)
    (Hugging Face's half split) or, `interleaved`, (2i, 2i + 1), returned half-split (as
    DeepSeek's): every query and key alike, so their dot products are the same."""
    half = x.shape[-1] // 2
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(freqs, jnp.float32)  # [B, T, D/2]
    cos, sin = jnp.cos(angles)[:, :, None, :] * factor, jnp.sin(angles)[:, :, None, :] * factor  # [B, T, 1, D/2]
    x32 = x.astype(jnp.float32)
    x1, x2 = (x32[..., 0::2], x32[..., 1::2]) if interleaved else (x32[..., :half], x32[..., half:])
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, dtype, rngs: nnx.Rngs | None):
        E, H, K, D = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = _param(rngs, (E, H, D), (EMBED, HEADS, HEAD_DIM), dtype, fan_in=E)
        self.k_proj = _param(rngs, (E, K, D), (EMBED, KV_HEADS, HEAD_DIM), dtype, fan_in=E)
        self.v_proj = _param(rngs, (E, K, D), (EMBED, KV_HEADS, HEAD_DIM), dtype, fan_in=E)
        self.o_proj = _param(rngs, (H, D, E), (HEADS, HEAD_DIM, EMBED), dtype, fan_in=H * D)
        if cfg.qkv_bias:
            self.q_bias = _param(rngs, (H, D), (HEADS, HEAD_DIM), dtype)
            self.k_bias = _param(rngs, (K, D), (KV_HEADS, HEAD_DIM), dtype)
            self.v_bias = _param(rngs, (K, D), (KV_HEADS, HEAD_DIM), dtype)
        if cfg.qk_norm:  # one scale over head_dim, shared by every head
            self.q_norm = RMSNorm(D, cfg.rms_eps, dtype, abstract=rngs is None, axis=HEAD_DIM)
            self.k_norm = RMSNorm(D, cfg.rms_eps, dtype, abstract=rngs is None, axis=HEAD_DIM)
        self.rope_freqs, self.rope_factor = rope_frequencies(cfg), rope_attention_factor(cfg)
        self.qkv_bias, self.qk_norm = cfg.qkv_bias, cfg.qk_norm

    def project_qkv(self, x, positions, layout: Layout):
        """x: [B, T, E] -> q [B, T, H, D], k and v [B, T, K*r, D] (r = KV-head replication)."""
        q = jnp.einsum("bte,ehd->bthd", x, self.q_proj[...])
        k = jnp.einsum("bte,ekd->btkd", x, self.k_proj[...])
        v = jnp.einsum("bte,ekd->btkd", x, self.v_proj[...])
        if self.qkv_bias:
            q, k, v = q + self.q_bias[...], k + self.k_bias[...], v + self.v_bias[...]
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = (rope(x, positions, self.rope_freqs, self.rope_factor) for x in (q, k))
        return layout.attention_inputs(q, k, v)  # query head h reads KV slot h * K*r / H

    def output(self, attn, layout: Layout):
        """attn: [B, T, H, D] -> [B, T, E]."""
        return layout.constrain(jnp.einsum("bthd,hde->bte", attn, self.o_proj[...]), "attn_out")

    def __call__(self, x, positions, layout: Layout, attend: Attend, cache):
        """x: [B, T, E] -> ([B, T, E], the layer's KV cache as `attend` left it)."""
        q, k, v = self.project_qkv(x, positions, layout)
        attn, cache = attend(q, k, v, positions, cache)
        return self.output(attn, layout), cache


class SwiGLU(nnx.Module):
    def __init__(self, cfg: LlamaConfig, dtype, rngs: nnx.Rngs | None):
        E, F = cfg.hidden_size, cfg.mlp_size
        self.gate_proj = _param(rngs, (E, F), (EMBED, MLP), dtype, fan_in=E)
        self.up_proj = _param(rngs, (E, F), (EMBED, MLP), dtype, fan_in=E)
        self.down_proj = _param(rngs, (F, E), (MLP, EMBED), dtype, fan_in=F)

    def __call__(self, x, layout: Layout, real=None):
        """SwiGLU. x: [B, T, E] -> [B, T, E] (padding tokens, `real` False, cost the same)."""
        x = layout.constrain(x, "mlp_in")
        h = jax.nn.silu(x @ self.gate_proj[...]) * (x @ self.up_proj[...])  # [B, T, F]
        h = layout.constrain(h, "mlp_hidden")
        return layout.constrain(h @ self.down_proj[...], "mlp_out")


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: LlamaConfig, dtype, rngs: nnx.Rngs | None, make_mlp=SwiGLU, make_attention=Attention):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_eps, dtype, abstract=rngs is None)
        self.self_attn = make_attention(cfg, dtype, rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_eps, dtype, abstract=rngs is None)
        self.mlp = make_mlp(cfg, dtype, rngs)

    def __call__(self, x, positions, layout: Layout, attend: Attend, cache):
        h, cache = self.self_attn(self.input_layernorm(x), positions, layout, attend, cache)
        x = x + h
        real = positions >= 0  # the runtime's padding tokens have position -1
        return x + self.mlp(self.post_attention_layernorm(x), layout, real), cache


class Llama(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, dtype=jnp.float32, rngs: nnx.Rngs | None):
        """`rngs=None` builds the model abstractly: parameters are ShapeDtypeStructs."""
        self.config = cfg
        self.embed_tokens = _param(rngs, (cfg.vocab_size, cfg.hidden_size), (VOCAB, EMBED), dtype)
        self.layers = nnx.List(
            [DecoderLayer(cfg, dtype, rngs, self.mlp_for(i), self.attention_for(i)) for i in range(cfg.num_layers)]
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_eps, dtype, abstract=rngs is None)
        if not cfg.tie_embeddings:
            self.lm_head = _param(
                rngs, (cfg.hidden_size, cfg.vocab_size), (EMBED, VOCAB), dtype, fan_in=cfg.hidden_size
            )

    def decoder_geometry(self) -> DecoderGeometry:
        c = self.config
        return DecoderGeometry(
            num_layers=c.num_layers,
            num_heads=c.num_heads,
            num_kv_heads=c.num_kv_heads,
            head_dim=c.head_dim,
            vocab_size=c.vocab_size,
            max_seq_len=c.max_seq_len,
        )

    def mlp_for(self, layer: int):
        """The FFN class of layer `layer` (built as cls(cfg, dtype, rngs)); the MoE model overrides it."""
        return SwiGLU

    def attention_for(self, layer: int):
        """The attention class of layer `layer` (built as cls(cfg, dtype, rngs)); DeepSeek's is latent."""
        return Attention

    def embed(self, tokens, layout: Layout):
        """tokens: [B, T] int -> [B, T, E]."""
        return layout.constrain(jnp.take(self.embed_tokens[...], tokens, axis=0), "attn_in")

    def logits(self, x, layout: Layout):
        """x: [B, T, E] -> [B, T, V]; a vocab padded for sharding is cut back to the real one."""
        x = layout.constrain(self.norm(x), "mlp_in")
        if self.config.tie_embeddings:
            logits = x @ self.embed_tokens[...].T
        else:
            logits = x @ self.lm_head[...]
        logits = layout.constrain(logits, "logits")
        return logits[..., : self.config.vocab_size]

    def hidden_states(self, tokens, positions, layout: Layout, attend: Attend = causal_attention, caches=None):
        """tokens, positions: [B, T] -> (hidden [B, T, E], per-layer caches as `attend` left them)."""
        x = self.embed(tokens, layout)
        caches = [None] * len(self.layers) if caches is None else list(caches)
        for i, layer in enumerate(self.layers):
            x, caches[i] = layer(x, positions, layout, attend, caches[i])
            x = layout.constrain(x, "attn_in")
        return x, caches

    def __call__(self, tokens, positions=None, layout: Layout = UNSHARDED):
        """Dense causal forward over whole sequences: tokens [B, T] -> logits [B, T, V]."""
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        hidden, _ = self.hidden_states(tokens, positions, layout)
        return self.logits(hidden, layout)
