"""A sparse mixture-of-experts decoder (Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek's FFNs) in Flax NNX.

The Llama decoder of `llama.py` with its FFN replaced: a router picks the top-k
of X SwiGLU experts for every token and mixes their outputs by the routing
weights. Experts are stacked weights with logical axes (expert, embed,
expert_mlp), so expert parallelism is one rule: `expert -> [expert]`.

Routing is the config's `Routing` (plain data, `config.py`), one function here,
`route`: softmax or sigmoid scores in float32, the top k (DeepSeek: only among
the best groups of experts, V3 choosing by scores + a learnt bias), optionally
renormalised, then scaled. Its output is always dense weights [B, T, X], zero
off the chosen experts, which is all either dispatch reads.

A shared expert (`shared_mlp_size`: DeepSeek's shared experts, Qwen2-MoE's
shared_expert) is a SwiGLU beside the routed ones that every token runs
through, sharded as the dense FFN (embed, mlp); Qwen2-MoE scales its output
per token by sigmoid(x @ shared_expert_gate). Layers of `dense_layers` have a
plain SwiGLU instead (Qwen's mlp_only_layers / decoder_sparse_step, DeepSeek's
first_k_dense_replace).

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

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from shardspec.protocol import Layout

from .axes import ACTIVATIONS, EMBED, EXPERT, EXPERT_MLP, MLP_BATCH
from .config import MoEConfig, Routing
from .llama import Llama, SwiGLU, _param
from .moe_dispatch import sparse_experts, tile_rows

GATE_UP_AXES = (EXPERT, EMBED, EXPERT_MLP)  # [X, E, F]
DOWN_AXES = (EXPERT, EXPERT_MLP, EMBED)  # [X, F, E]


def route(logits, k: int, routing: Routing, bias=None):
    """Router logits [B, T, X] -> dense routing weights [B, T, X] float32 (zero off the k chosen).

    `bias` [X]: noaux_tc's selection bias (`e_score_correction_bias`); it moves
    which experts are chosen, never their weights. Mixtral's renormalised top k
    equals a softmax over the top-k logits.
    """
    logits = logits.astype(jnp.float32)
    scores = jax.nn.sigmoid(logits) if routing.scoring == "sigmoid" else jax.nn.softmax(logits, axis=-1)
    choice = scores if bias is None else scores + bias.astype(jnp.float32)
    if routing.grouped:
        choice = _best_groups_only(choice, routing)
    _, chosen = jax.lax.top_k(choice, k)  # [B, T, k]
    top = jnp.take_along_axis(scores, chosen, axis=-1)
    if routing.norm_topk_prob:
        top = top / (jnp.sum(top, axis=-1, keepdims=True) + routing.norm_epsilon)
    top = top * routing.routed_scaling_factor
    # Scatter the k weights back to their experts: [B, T, k, X] one-hot, summed over k.
    return jnp.sum(jax.nn.one_hot(chosen, logits.shape[-1], dtype=top.dtype) * top[..., None], axis=-2)


def _best_groups_only(choice, routing: Routing):
    """choice [B, T, X] -> the same with -inf outside each token's best `topk_group` groups.

    transformers fills DeepSeek-V2's dropped experts with 0 and V3's with -inf;
    the top k never reaches them either way (the config checks k <= the kept experts).
    """
    *lead, X = choice.shape
    grouped = choice.reshape(*lead, routing.n_group, X // routing.n_group)  # [B, T, G, X/G]
    if routing.topk_method == "noaux_tc":  # a group scores its best two experts
        group_scores = jnp.sum(jax.lax.top_k(grouped, 2)[0], axis=-1)  # [B, T, G]
    else:  # group_limited_greedy: its best one
        group_scores = jnp.max(grouped, axis=-1)
    _, best = jax.lax.top_k(group_scores, routing.topk_group)  # [B, T, topk_group]
    kept = jnp.sum(jax.nn.one_hot(best, routing.n_group), axis=-2) > 0  # [B, T, G]
    return jnp.where(kept[..., None], grouped, -jnp.inf).reshape(choice.shape)


class ExpertFFN(nnx.Module):
    """A MoE FFN: a router, X stacked SwiGLU experts and, optionally, a shared SwiGLU."""

    def __init__(self, cfg: MoEConfig, dtype, rngs: nnx.Rngs | None):
        E, X, F = cfg.hidden_size, cfg.num_experts, cfg.expert_mlp_size
        routing = cfg.routing
        # The router is E × X (tiny): replicated, so each device routes its own tokens.
        router_dtype = jnp.float32 if routing.float32_router else dtype
        self.router = _param(rngs, (E, X), (EMBED, None), router_dtype, fan_in=E)
        if routing.score_bias:  # float32 as checkpoints store it; random init at the scale of the scores
            self.score_correction_bias = _param(rngs, (X,), (None,), jnp.float32, fan_in=X)
        self.gate_proj = _param(rngs, (X, E, F), GATE_UP_AXES, dtype, fan_in=E)
        self.up_proj = _param(rngs, (X, E, F), GATE_UP_AXES, dtype, fan_in=E)
        self.down_proj = _param(rngs, (X, F, E), DOWN_AXES, dtype, fan_in=F)
        if cfg.shared_mlp_size:  # sharded as the dense FFN is (embed, mlp)
            self.shared_expert = SwiGLU(dataclasses.replace(cfg, mlp_size=cfg.shared_mlp_size), dtype, rngs)
        if cfg.shared_expert_gate:  # [E, 1]: one gate value a token
            self.shared_expert_gate = _param(rngs, (E, 1), (EMBED, None), dtype, fan_in=E)
        self.experts_per_token = cfg.experts_per_token
        self.routing = routing
        self.shared, self.gated = bool(cfg.shared_mlp_size), cfg.shared_expert_gate

    def __call__(self, x, layout: Layout, real=None):
        """x: [B, T, E] -> [B, T, E]; `real` [B, T] bool: False for padding tokens."""
        x = layout.constrain(x, "mlp_in")
        weights = route(self._router_logits(x), self.experts_per_token, self.routing, self._bias())  # [B, T, X]
        if real is not None:
            weights = jnp.where(real[..., None], weights, 0.0)
        experts = (self.gate_proj[...], self.up_proj[...], self.down_proj[...])
        if layout.moe_dispatch == "dense":
            out = self._dense(x, weights.astype(x.dtype), *experts, layout)
        else:
            out = self._sparse(x, weights, *experts, layout)
        return out + self._shared(x, layout) if self.shared else out

    def _router_logits(self, x):
        """x: [B, T, E] -> [B, T, X]; in float32 where the family keeps its router in float32."""
        if self.routing.float32_router:
            return x.astype(jnp.float32) @ self.router[...].astype(jnp.float32)
        return x @ self.router[...]

    def _bias(self):
        return self.score_correction_bias[...] if self.routing.score_bias else None

    def _shared(self, x, layout: Layout):
        """The shared expert every token runs through (padding tokens too: their rows are never read)."""
        out = self.shared_expert(x, layout)  # [B, T, E]
        if self.gated:
            out = out * jax.nn.sigmoid(x @ self.shared_expert_gate[...])  # [B, T, 1]
        return out

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
