"""The collectives a serving step of shardspec's own models runs, from the plan's mesh alone.

What GSPMD compiles for each layer (checked against `explain --hlo` for every strategy
file: tests/test_hlo.py). S is a DP rank's tokens in the step, A = attn_dp, M =
model, X = expert, G = A × M the tensor group, T = S × A the tokens of one replica
(what the FFN sees), E the hidden size, b the activation's bytes:

- attention: M > 1: o_proj's partial sums all-reduced over model, [S, E];
  A > 1: the replica's tokens all-gathered over attn_dp into the FFN layout, [T, E].
- a dense FFN (and a MoE layer's shared expert): G > 1: down_proj's partial sums
  all-reduced over the tensor group, [T, E].
- a MoE layer's routed experts, each device holding E/X experts and 1/G of each:
  A = 1: partial sums all-reduced over expert × model, [T, E];
  A > 1: the routing mask all-gathered over attn_dp ([T, experts a device], bytes),
  then the partial sums reduce-scattered back to the ranks' tokens and all-reduced
  over the tensor group, [S, E] each.

Outside the layers, the vocab-split embedding lookup all-reduces [S, E] over the
tensor group and the sampler gathers each sampled row's vocab, [rows, V] float32;
the layouts' own moves (a permute of a few rows) are left out. Bytes are a result
array's on one device, as the HLO report counts them.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from ..flops import moe_layers
from ..plan import ShardingPlan

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str  # one of KINDS
    axes: tuple[str, ...]  # the mesh axes its groups span
    nbytes: int  # its result on one device
    what: str  # the array it moves, in a few words


def layer_collectives(plan: ShardingPlan, tokens_per_rank: int, moe: bool) -> list[Collective]:
    """One decoder layer's collectives (a MoE layer when `moe`) in a step of `tokens_per_rank`."""
    shape, cfg = plan.mesh_shape, plan.model.config
    A, M, X = shape["attn_dp"], shape["model"], shape["expert"]
    b, E = jnp.dtype(plan.dtype).itemsize, cfg.hidden_size
    S = tokens_per_rank
    T = S * A
    out = []
    if M > 1:
        out.append(Collective("all-reduce", ("model",), S * E * b, "o_proj partial sums"))
    if A > 1:
        out.append(Collective("all-gather", ("attn_dp",), T * E * b, "tokens into the FFN layout"))
    dense_ffn = not moe or cfg.shared_mlp_size
    if dense_ffn and A * M > 1:
        what = "shared expert partial sums" if moe else "down_proj partial sums"
        out.append(Collective("all-reduce", ("attn_dp", "model"), T * E * b, what))
    if moe:
        out += _routed(T, S, E, b, cfg.num_experts // X, A)
    return [c for c in out if group_size(plan, c) > 1]  # a group of one moves nothing


def _routed(T: int, S: int, E: int, b: int, local_experts: int, A: int) -> list[Collective]:
    if A == 1:
        return [Collective("all-reduce", ("expert", "model"), T * E * b, "routed experts' partial sums")]
    return [
        Collective("all-gather", ("attn_dp",), T * local_experts, "routing mask"),
        Collective("reduce-scatter", ("expert",), S * E * b, "routed experts' sums to the ranks' tokens"),
        Collective("all-reduce", ("attn_dp", "model"), S * E * b, "routed experts' partial sums"),
    ]


def outside_collectives(plan: ShardingPlan, tokens_per_rank: int, sampled_rows: int) -> list[Collective]:
    """The step's collectives outside the layers: the embedding lookup and the sampler's vocab."""
    shape, cfg = plan.mesh_shape, plan.model.config
    if shape["attn_dp"] * shape["model"] == 1:
        return []
    b = jnp.dtype(plan.dtype).itemsize
    return [
        Collective("all-reduce", ("attn_dp", "model"), tokens_per_rank * cfg.hidden_size * b, "embedding lookup"),
        Collective("all-gather", ("attn_dp", "model"), sampled_rows * cfg.vocab_size * 4, "logits' vocab"),
    ]


def step_collectives(plan: ShardingPlan, tokens_per_rank: int, sampled_rows: int) -> list[tuple[Collective, int]]:
    """Every collective of a step, with how many times it runs (once a layer of its kind)."""
    cfg = plan.model.config
    n_moe = len(moe_layers(cfg))
    runs = [(c, cfg.num_layers - n_moe) for c in layer_collectives(plan, tokens_per_rank, moe=False)]
    runs += [(c, n_moe) for c in layer_collectives(plan, tokens_per_rank, moe=True)] if n_moe else []
    runs += [(c, 1) for c in outside_collectives(plan, tokens_per_rank, sampled_rows)]
    return [(c, n) for c, n in runs if n]


def per_layer(plan: ShardingPlan, tokens_per_rank: int) -> tuple[dict[str, float], dict[str, float]]:
    """(count, bytes) of each kind a layer, averaged over the model's layers: the HLO
    report's `per_layer` and `per_layer_bytes`."""
    cfg = plan.model.config
    counts, nbytes = dict.fromkeys(KINDS, 0.0), dict.fromkeys(KINDS, 0.0)
    moe = set(moe_layers(cfg))
    for layer in range(cfg.num_layers):
        for c in layer_collectives(plan, tokens_per_rank, moe=layer in moe):
            counts[c.kind] += 1
            nbytes[c.kind] += c.nbytes
    layers = cfg.num_layers
    return {k: _round(v / layers) for k, v in counts.items()}, {k: _round(v / layers) for k, v in nbytes.items()}


def group_size(plan: ShardingPlan, c: Collective) -> int:
    return math.prod(plan.mesh_shape[a] for a in c.axes)


def _round(x: float) -> float | int:
    return int(x) if x == int(x) else round(x, 2)
