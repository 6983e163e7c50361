"""A sparse mixture-of-experts decoder (Mixtral, Qwen3-MoE) in Flax NNX.

The Llama decoder of `llama.py` with its FFN replaced: a router picks the top-k
of X SwiGLU experts for every token and mixes their outputs by the routing
weights. Experts are stacked weights with logical axes (expert, embed,
expert_mlp), so expert parallelism is one rule: `expert -> [expert]`.

Dense dispatch: every expert processes every token of its `mlp_batch` shard and
a routing-weight mask (0 for experts a token was not routed to) zeroes what was
not chosen. The result is exact (0 × finite = 0) and needs no token shuffle: on
the mesh, the expert axis splits the experts, each device computes its experts
for the tokens it holds, and one all-reduce over (expert, attn_dp, model) sums
the partial outputs, the same collective a tensor-parallel FFN ends with. The
cost is X/k times the FLOPs of a sparse gather (4x for Mixtral's 2 of 8, 16x for
Qwen3-30B-A3B's 8 of 128) and a [tokens, X, F / shards] hidden per device:
right for correctness and for tiny models on CPU; a ragged all-to-all dispatch
is the faster path this leaves for later.

Token shapes are the runtime's: [B, T, E], with the paged step's [N, 1, E].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from shardspec.protocol import Layout

from .axes import EMBED, EXPERT, EXPERT_MLP
from .config import MoEConfig
from .llama import Llama, SwiGLU, _param


def route(logits, k: int, normalise: bool):
    """Router logits [B, T, X] -> dense routing weights [B, T, X] (zero off the top k).

    Both families take a softmax over all X experts, then the top k; Mixtral
    (and Qwen3-MoE with norm_topk_prob) rescale those k to sum to 1, which
    equals a softmax over the top-k logits.
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    top, chosen = jax.lax.top_k(probs, k)  # [B, T, k]
    if normalise:
        top = top / jnp.sum(top, axis=-1, keepdims=True)
    # Scatter the k weights back to their experts: [B, T, k, X] one-hot, summed over k.
    return jnp.sum(jax.nn.one_hot(chosen, logits.shape[-1], dtype=top.dtype) * top[..., None], axis=-2)


class SparseMoE(nnx.Module):
    def __init__(self, cfg: MoEConfig, dtype, rngs: nnx.Rngs | None):
        E, X, F = cfg.hidden_size, cfg.num_experts, cfg.expert_mlp_size
        # The router is E × X (tiny): replicated, so each device routes its own tokens.
        self.router = _param(rngs, (E, X), (EMBED, None), dtype, fan_in=E)
        self.gate_proj = _param(rngs, (X, E, F), (EXPERT, EMBED, EXPERT_MLP), dtype, fan_in=E)
        self.up_proj = _param(rngs, (X, E, F), (EXPERT, EMBED, EXPERT_MLP), dtype, fan_in=E)
        self.down_proj = _param(rngs, (X, F, E), (EXPERT, EXPERT_MLP, EMBED), dtype, fan_in=F)
        self.experts_per_token = cfg.experts_per_token
        self.norm_topk_prob = cfg.norm_topk_prob

    def __call__(self, x, layout: Layout):
        """x: [B, T, E] -> [B, T, E]."""
        x = layout.constrain(x, "mlp_in")
        weights = route(x @ self.router[...], self.experts_per_token, self.norm_topk_prob)  # [B, T, X]
        gate = jnp.einsum("bte,xef->btxf", x, self.gate_proj[...])
        up = jnp.einsum("bte,xef->btxf", x, self.up_proj[...])
        h = jax.nn.silu(gate) * up * weights.astype(x.dtype)[..., None]  # [B, T, X, F], 0 where unrouted
        h = layout.constrain(h, "moe_hidden")
        return layout.constrain(jnp.einsum("btxf,xfe->bte", h, self.down_proj[...]), "mlp_out")


class MoE(Llama):
    """Same API as `Llama` (hidden_states, logits, __call__, a `Layout`); MoE FFNs."""

    def mlp_for(self, layer: int):
        return SwiGLU if layer in self.config.dense_layers else SparseMoE
