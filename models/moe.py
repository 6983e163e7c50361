"""A sparse mixture-of-experts decoder (Mixtral, Qwen3-MoE) in Flax NNX.

The Llama decoder of `llama.py` with its FFN replaced: a router picks the top-k
of X SwiGLU experts for every token and mixes their outputs by the routing
weights. Experts are stacked weights with logical axes (expert, embed,
expert_mlp), so expert parallelism is one rule: `expert -> [expert]`.

Two dispatches (`runtime.moe_dispatch`, `moe_dispatch.py`), the same result:

- sparse (the default): on each device, each token it holds meets only the
  experts it was routed to among those the device stores (sorted by expert, a
  tiled grouped matmul); one reduction over the devices of (expert, attn_dp,
  model) combines the partial outputs, a reduce-scatter where the next layer
  splits tokens over attn_dp. Routed FLOPs plus at most a tile of padding rows
  an expert.
- dense (the reference): every expert processes every token of its
  `mlp_batch` shard and a routing-weight mask zeroes what was not chosen, as
  einsums GSPMD lays out (one all-reduce over (expert, attn_dp, model)). Exact,
  but X/k times the routed FLOPs (4x for Mixtral's 2 of 8, 16x for
  Qwen3-30B-A3B's 8 of 128) and a [tokens, X, F / shards] hidden per device.

Padding tokens (position -1) route to no expert in both.

Token shapes are the runtime's: [B, T, E], with the paged step's [N, 1, E].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from shardspec.protocol import Layout

from .axes import ACTIVATIONS, EMBED, EXPERT, EXPERT_MLP, MLP_BATCH
from .config import MoEConfig
from .llama import Llama, SwiGLU, _param
from .moe_dispatch import sparse_experts, tile_rows

GATE_UP_AXES = (EXPERT, EMBED, EXPERT_MLP)  # [X, E, F]
DOWN_AXES = (EXPERT, EXPERT_MLP, EMBED)  # [X, F, E]


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


class ExpertFFN(nnx.Module):
    """A MoE FFN: a router and X stacked SwiGLU experts."""

    def __init__(self, cfg: MoEConfig, dtype, rngs: nnx.Rngs | None):
        E, X, F = cfg.hidden_size, cfg.num_experts, cfg.expert_mlp_size
        # The router is E × X (tiny): replicated, so each device routes its own tokens.
        self.router = _param(rngs, (E, X), (EMBED, None), dtype, fan_in=E)
        self.gate_proj = _param(rngs, (X, E, F), GATE_UP_AXES, dtype, fan_in=E)
        self.up_proj = _param(rngs, (X, E, F), GATE_UP_AXES, dtype, fan_in=E)
        self.down_proj = _param(rngs, (X, F, E), DOWN_AXES, dtype, fan_in=F)
        self.experts_per_token = cfg.experts_per_token
        self.norm_topk_prob = cfg.norm_topk_prob

    def __call__(self, x, layout: Layout, real=None):
        """x: [B, T, E] -> [B, T, E]; `real` [B, T] bool: False for padding tokens."""
        x = layout.constrain(x, "mlp_in")
        weights = route(x @ self.router[...], self.experts_per_token, self.norm_topk_prob)  # [B, T, X]
        if real is not None:
            weights = jnp.where(real[..., None], weights, 0.0)
        experts = (self.gate_proj[...], self.up_proj[...], self.down_proj[...])
        if layout.moe_dispatch == "dense":
            return self._dense(x, weights.astype(x.dtype), *experts, layout)
        return self._sparse(x, weights, *experts, layout)

    def _dense(self, x, weights, gate, up, down, layout: Layout):
        g = jnp.einsum("bte,xef->btxf", x, gate)
        u = jnp.einsum("bte,xef->btxf", x, up)
        h = jax.nn.silu(g) * u * weights[..., None]  # [B, T, X, F], 0 where unrouted
        h = layout.constrain(h, "moe_hidden")
        return layout.constrain(jnp.einsum("btxf,xfe->bte", h, down), "mlp_out")

    def _sparse(self, x, weights, gate, up, down, layout: Layout):
        X, k = gate.shape[0], self.experts_per_token

        def local(x, weights, gate, up, down):  # one device: its tokens, its experts
            b, t, e = x.shape
            out = sparse_experts(
                x.reshape(b * t, e),
                weights.reshape(b * t, -1),
                gate,
                up,
                down,
                experts_per_token=k,
                tile=tile_rows(b * t, k, X),  # from the tokens this device holds
            )
            return out.reshape(b, t, e)

        tokens = ACTIVATIONS["mlp_in"]
        run = layout.per_shard(
            local,
            in_axes=(tokens, (MLP_BATCH, None, EXPERT), GATE_UP_AXES, GATE_UP_AXES, DOWN_AXES),
            out_axes=ACTIVATIONS["attn_in"],  # where the residual stream is next: tokens over every DP rank
            sum_over=(EXPERT, EXPERT_MLP),
        )
        return run(x, weights, gate, up, down)


class MoE(Llama):
    """Same API as `Llama` (hidden_states, logits, __call__, a `Layout`); MoE FFNs."""

    def mlp_for(self, layer: int):
        return SwiGLU if layer in self.config.dense_layers else ExpertFFN
