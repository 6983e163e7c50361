"""Multi-head latent attention (DeepSeek-V2/V3) and the DeepSeek decoder, in Flax NNX.

MLA caches one vector a token and layer: the latent c = norm(x · W_DKV) of
`kv_lora_rank` channels and one rope key shared by every head, k_r of
`qk_rope_head_dim` (576 values for DeepSeek-V3, where grouped-query attention
caches heads × 2 × head_dim). Each head's key and value are projections of c:
k_h = [c · W_UK_h, k_r] and v_h = c · W_UV_h, with W_UK and W_UV the two halves
of `kv_b_proj`.

Two ways to compute it, the same result:

- absorbed (served): W_UK folds into the query, q'_h = [q_nope_h · W_UK_hᵀ, q_rope_h],
  so q'_h · [c, k_r] = q_h · k_h, and W_UV is applied after attention, to the
  softmax-weighted latents. Attention is then multi-query over the cached
  vectors themselves: one KV "head" of kv_lora_rank + rope channels whose first
  kv_lora_rank channels are also the values (`DecoderGeometry.latent_dim`). No
  per-head key or value is ever built from the cache.
- expanded (the exact reference, `attend=None`): k_h and v_h built for every
  token, per-head causal attention, as transformers computes it.

The serving step packs prefill chunks and decode tokens into one program, so it
runs one form for both: absorbed. For decode that is the whole point (a token
reads its context's latents, 576 values each, instead of heads × (192 + 128)
for V3's shapes). For a long prefill chunk the expanded form would cost fewer
attention FLOPs (per query-key pair and head, 192 + 128 multiply-adds against
576 + 512) but would first build every head's keys and values from the cached
pages, for every chunk; at a serving step's chunk sizes (≤
max_num_batched_tokens) reading latents wins (`benchmarks/mla.py`: prefill
faster absorbed at 128 to 2,048 tokens of context), and one program serves both.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from shardspec.protocol import UNSHARDED, DecoderGeometry, Layout, causal_attention

from .axes import EMBED, HEAD_DIM, HEADS
from .config import DeepSeekConfig
from .llama import RMSNorm, _param, rope, rope_attention_factor, rope_frequencies, yarn_mscale
from .moe import MoE

LORA_NORM_EPS = 1e-6  # transformers' q_a_layernorm and kv_a_layernorm take the default, not rms_norm_eps


def softmax_scale(cfg: DeepSeekConfig) -> float:
    """1/√(qk head dim), times YaRN's mscale(mscale_all_dim)² when the rope is scaled (DeepSeek's rule)."""
    scale = (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) ** -0.5
    s = cfg.rope_scaling
    if s is not None and s.kind == "yarn" and s.mscale_all_dim:
        scale *= yarn_mscale(s.factor, s.mscale_all_dim) ** 2
    return scale


class LatentAttention(nnx.Module):
    def __init__(self, cfg: DeepSeekConfig, dtype, rngs: nnx.Rngs | None):
        E, H, L, R = cfg.hidden_size, cfg.num_heads, cfg.kv_lora_rank, cfg.qk_rope_head_dim
        N, V = cfg.qk_nope_head_dim, cfg.v_head_dim
        abstract = rngs is None
        self.q_lora = bool(cfg.q_lora_rank)
        if self.q_lora:  # a low-rank query: x -> q_lora_rank -> norm -> heads
            self.q_a_proj = _param(rngs, (E, cfg.q_lora_rank), (EMBED, None), dtype, fan_in=E)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, LORA_NORM_EPS, dtype, abstract, axis=None)
            self.q_b_proj = _param(rngs, (cfg.q_lora_rank, H, N + R), (None, HEADS, HEAD_DIM), dtype, cfg.q_lora_rank)
        else:
            self.q_proj = _param(rngs, (E, H, N + R), (EMBED, HEADS, HEAD_DIM), dtype, fan_in=E)
        # The latent and the shared rope key, in one projection; replicated: every head reads it.
        self.kv_a_proj_with_mqa = _param(rngs, (E, L + R), (EMBED, None), dtype, fan_in=E)
        self.kv_a_layernorm = RMSNorm(L, LORA_NORM_EPS, dtype, abstract, axis=None)
        # Per head, W_UK (the first qk_nope_head_dim channels) and W_UV (the rest).
        self.kv_b_proj = _param(rngs, (L, H, N + V), (None, HEADS, HEAD_DIM), dtype, fan_in=L)
        self.o_proj = _param(rngs, (H, V, E), (HEADS, HEAD_DIM, EMBED), dtype, fan_in=H * V)
        self.rope_freqs, self.rope_factor = rope_frequencies(cfg, R), rope_attention_factor(cfg)
        self.interleaved, self.scale = cfg.rope_interleave, softmax_scale(cfg)
        self.nope, self.lora_rank = N, L

    def _query(self, x, positions):
        """x [B, T, E] -> (q_nope [B, T, H, N], q_rope [B, T, H, R], roped)."""
        if self.q_lora:
            q = jnp.einsum("btr,rhd->bthd", self.q_a_layernorm(x @ self.q_a_proj[...]), self.q_b_proj[...])
        else:
            q = jnp.einsum("bte,ehd->bthd", x, self.q_proj[...])
        return q[..., : self.nope], self._rope(q[..., self.nope :], positions)

    def _latent(self, x, positions):
        """x [B, T, E] -> (latent [B, T, L] normed, rope key [B, T, 1, R] roped)."""
        kv = x @ self.kv_a_proj_with_mqa[...]
        latent = self.kv_a_layernorm(kv[..., : self.lora_rank])
        return latent, self._rope(kv[..., None, self.lora_rank :], positions)

    def _rope(self, x, positions):
        return rope(x, positions, self.rope_freqs, self.rope_factor, self.interleaved)

    def __call__(self, x, positions, layout: Layout, attend, cache):
        """x: [B, T, E] -> ([B, T, E], the layer's cache as `attend` left it). `attend`
        None: the exact expanded form over whole sequences (the reference; no cache)."""
        q_nope, q_rope = self._query(x, positions)
        latent, k_rope = self._latent(x, positions)
        if attend is None:
            out = self._expanded(q_nope, q_rope, latent, k_rope, positions, layout)
        else:
            w_uk, w_uv = self._w_uk_uv()
            q = jnp.concatenate([jnp.einsum("bthn,lhn->bthl", q_nope, w_uk), q_rope], axis=-1)  # absorbed
            k = jnp.concatenate([latent[:, :, None, :], k_rope], axis=-1)  # [B, T, 1, L + R]: what is cached
            q, k, _ = layout.attention_inputs(q, k, None)
            weighted, cache = attend(q, k, None, positions, cache)  # [B, T, H, L]
            out = jnp.einsum("bthl,lhv->bthv", weighted, w_uv)
        return layout.constrain(jnp.einsum("bthv,hve->bte", out, self.o_proj[...]), "attn_out"), cache

    def _w_uk_uv(self):
        """kv_b_proj's halves: W_UK [L, H, N] and W_UV [L, H, V]."""
        kv_b = self.kv_b_proj[...]
        return kv_b[..., : self.nope], kv_b[..., self.nope :]

    def expand_heads(self, latent, k_rope):
        """latent [B, T, L], rope key [B, T, 1, R] -> every head's key [B, T, H, N + R] and value [B, T, H, V]."""
        w_uk, w_uv = self._w_uk_uv()
        k_nope = jnp.einsum("btl,lhn->bthn", latent, w_uk)
        k_rope = jnp.broadcast_to(k_rope, (*k_nope.shape[:3], k_rope.shape[-1]))
        return jnp.concatenate([k_nope, k_rope], axis=-1), jnp.einsum("btl,lhv->bthv", latent, w_uv)

    def _expanded(self, q_nope, q_rope, latent, k_rope, positions, layout: Layout):
        """Every head's key and value built from the latent, then per-head causal attention."""
        k, v = self.expand_heads(latent, k_rope)
        q = layout.constrain(jnp.concatenate([q_nope, q_rope], axis=-1), "attn_q")
        k, v = layout.constrain(k, "attn_q"), layout.constrain(v, "attn_q")  # every head: laid out like the queries
        out, _ = causal_attention(q, k, v, positions, scale=self.scale)
        return out


class DeepSeek(MoE):
    """DeepSeek-V2/V3: latent attention in every layer, dense FFNs in the first layers, MoE
    FFNs (routed and shared experts) after. Same API as `Llama`; `__call__` is the exact
    expanded form, the serving protocol's `hidden_states` the absorbed one."""

    def attention_for(self, layer: int):
        return LatentAttention

    def decoder_geometry(self) -> DecoderGeometry:
        c = self.config
        return DecoderGeometry(
            num_layers=c.num_layers,
            num_heads=c.num_heads,
            num_kv_heads=1,  # absorbed MLA is multi-query over the cached latents
            head_dim=c.kv_lora_rank + c.qk_rope_head_dim,
            vocab_size=c.vocab_size,
            max_seq_len=c.max_seq_len,
            softmax_scale=softmax_scale(c),
            latent_dim=c.kv_lora_rank,
        )

    def __call__(self, tokens, positions=None, layout: Layout = UNSHARDED):
        """Dense causal forward, attention expanded per head (the exact reference): tokens [B, T] -> logits."""
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        hidden, _ = self.hidden_states(tokens, positions, layout, attend=None)
        return self.logits(hidden, layout)
