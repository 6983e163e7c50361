"""MoE routing variants and shared experts against plain per-token loops.

Every routing of `config.Routing` (Mixtral / Qwen softmax top-k with and
without renormalising, DeepSeek-V2 greedy and group_limited_greedy, DeepSeek-V3
sigmoid + bias + groups + scaling) is checked against `_route_one`, a numpy
loop over one token written from transformers' code; shared experts (gated and
not) against a direct computation; both dispatches, sharded, against the
unsharded model; and the FLOPs a token touches count the shared expert.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from shardspec import compile
from shardspec.check import check
from shardspec.flops import touched_per_token
from shardspec.models.config import Routing
from shardspec.models.llama import Layout
from shardspec.models.moe import ExpertFFN, route
from shardspec.models.presets import PRESETS, V3_ROUTING

from helpers import strategy

QWEN = Routing(norm_topk_prob=False)
MIXTRAL = Routing(norm_topk_prob=True)
V2_GREEDY = Routing(norm_topk_prob=False, routed_scaling_factor=16.0, float32_router=True)
V2_GROUPS = dataclasses.replace(V2_GREEDY, topk_method="group_limited_greedy", n_group=4, topk_group=2)
V3 = V3_ROUTING  # sigmoid, noaux_tc in 4 groups (2 kept), renormalised, × 2.5
ROUTINGS = {
    "mixtral": MIXTRAL,
    "qwen": QWEN,
    "v2-greedy": V2_GREEDY,
    "v2-groups": V2_GROUPS,
    "v3": V3,
    "v3-unnormalised": dataclasses.replace(V3, norm_topk_prob=False),
}


def _route_one(logits, k: int, routing: Routing, bias=None) -> np.ndarray:
    """One token's routing weights [X], in float64, step by step as transformers routes."""
    X = len(logits)
    if routing.scoring == "softmax":
        scores = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    else:
        scores = 1 / (1 + np.exp(-logits))
    choice = scores + (0.0 if bias is None else bias)
    allowed = list(range(X))
    if routing.topk_method != "greedy":
        size = X // routing.n_group
        group_scores = []
        for g in range(routing.n_group):
            members = sorted(choice[g * size : (g + 1) * size], reverse=True)
            group_scores.append(members[0] + members[1] if routing.topk_method == "noaux_tc" else members[0])
        best = sorted(range(routing.n_group), key=lambda g: -group_scores[g])[: routing.topk_group]
        allowed = [x for g in best for x in range(g * size, (g + 1) * size)]
    chosen = sorted(allowed, key=lambda x: -choice[x])[:k]
    total = sum(scores[x] for x in chosen)
    weights = np.zeros(X)
    for x in chosen:
        weight = scores[x] / (total + routing.norm_epsilon) if routing.norm_topk_prob else scores[x]
        weights[x] = weight * routing.routed_scaling_factor
    return weights


def _expected(logits, k, routing, bias=None) -> np.ndarray:
    return np.stack([_route_one(row, k, routing, bias) for row in logits.reshape(-1, logits.shape[-1])]).reshape(
        logits.shape
    )


def _logits(X: int, seed: int = 0) -> np.ndarray:
    """[3, 7, X] random logits: no two of a token's experts tie (nor do their groups)."""
    logits = np.asarray(jax.random.normal(jax.random.key(seed), (3, 7, X)), np.float64)
    assert all(len(set(row)) == X for row in logits.reshape(-1, X))
    return logits


@pytest.mark.parametrize("name", ROUTINGS)
def test_route_equals_a_loop_over_each_token(name):
    routing, X, k = ROUTINGS[name], 16, 4
    logits = _logits(X)
    bias = 0.1 * np.asarray(jax.random.normal(jax.random.key(1), (X,)), np.float64) if routing.score_bias else None
    got = np.asarray(route(jnp.asarray(logits, jnp.float32), k, routing, None if bias is None else jnp.asarray(bias)))
    want = _expected(logits, k, routing, bias)
    assert got.dtype == np.float32 and ((got != 0).sum(-1) == k).all()
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)


def test_groups_and_the_bias_change_which_experts_are_chosen():
    # Otherwise the loop comparison above could pass with groups or the bias ignored.
    logits, X, k = _logits(16), 16, 4
    bias = 0.1 * np.asarray(jax.random.normal(jax.random.key(1), (X,)), np.float64)
    chosen = lambda weights: weights != 0  # noqa: E731
    assert (chosen(_expected(logits, k, V2_GROUPS)) != chosen(_expected(logits, k, V2_GREEDY))).any()
    assert (chosen(_expected(logits, k, V3, bias)) != chosen(_expected(logits, k, V3))).any()
    grouped = np.asarray(route(jnp.asarray(logits, jnp.float32), k, V2_GROUPS))
    assert (chosen(grouped) != chosen(_expected(logits, k, V2_GREEDY))).any()


def test_the_bias_chooses_but_never_weighs():
    logits = np.array([[[0.0, 0.1, 0.2, 0.3]]])
    routing = Routing(scoring="sigmoid", topk_method="noaux_tc", n_group=2, topk_group=2, norm_topk_prob=False)
    got = np.asarray(route(jnp.asarray(logits), 1, routing, jnp.asarray([5.0, 0.0, 0.0, 0.0])))[0, 0]
    np.testing.assert_allclose(got, [0.5, 0, 0, 0], rtol=1e-6)  # expert 0 chosen, weighed sigmoid(0)


def _config(routing: Routing, shared: int, gated: bool):
    return dataclasses.replace(
        PRESETS["mixtral-tiny"], routing=routing, shared_mlp_size=shared, shared_expert_gate=gated, family="test"
    )


def _silu_mlp(x, gate, up, down):
    g = x @ gate
    return (g / (1 + np.exp(-g)) * (x @ up)) @ down


def _ffn_loop(moe: ExpertFFN, cfg, x) -> np.ndarray:
    """The MoE FFN token by token: routed experts plus the (gated) shared expert."""
    f64 = lambda p: np.asarray(p[...], np.float64)  # noqa: E731
    router, gate, up, down = (f64(p) for p in (moe.router, moe.gate_proj, moe.up_proj, moe.down_proj))
    bias = f64(moe.score_correction_bias) if cfg.routing.score_bias else None
    out = np.zeros(x.shape, np.float64)
    for b, t in np.ndindex(x.shape[:2]):
        weights = _route_one(x[b, t] @ router, cfg.experts_per_token, cfg.routing, bias)
        for e in np.flatnonzero(weights):
            out[b, t] += weights[e] * _silu_mlp(x[b, t], gate[e], up[e], down[e])
        if cfg.shared_mlp_size:
            s = moe.shared_expert
            shared = _silu_mlp(x[b, t], f64(s.gate_proj), f64(s.up_proj), f64(s.down_proj))
            if cfg.shared_expert_gate:
                shared = shared / (1 + np.exp(-(x[b, t] @ f64(moe.shared_expert_gate))))
            out[b, t] += shared
    return out


@pytest.mark.parametrize("dispatch", ["sparse", "dense"])
@pytest.mark.parametrize(
    "routing,shared,gated",
    [(QWEN, 48, True), (V3, 48, False), (V2_GROUPS, 0, False)],
    ids=["qwen2-gated-shared", "v3-shared", "v2-groups-no-shared"],
)
def test_expert_ffn_equals_a_loop_with_shared_experts(routing, shared, gated, dispatch):
    cfg = _config(routing, shared, gated)
    with nnx.use_eager_sharding(False):
        moe = ExpertFFN(cfg, jnp.float32, nnx.Rngs(3))
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 5, cfg.hidden_size)))
    got = np.asarray(moe(jnp.asarray(x), layout=Layout(moe_dispatch=dispatch)))
    np.testing.assert_allclose(got, _ffn_loop(moe, cfg, x), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("dispatch", ["sparse", "dense"])
def test_padding_tokens_leave_real_tokens_unchanged(dispatch):
    cfg = _config(V3, 48, True)
    with nnx.use_eager_sharding(False):
        moe = ExpertFFN(cfg, jnp.float32, nnx.Rngs(3))
    x = jax.random.normal(jax.random.key(0), (2, 5, cfg.hidden_size))
    real = jnp.asarray([[True, True, False, True, False], [False, True, True, True, True]])
    layout = Layout(moe_dispatch=dispatch)
    np.testing.assert_allclose(
        np.asarray(moe(x, layout, real))[np.asarray(real)], np.asarray(moe(x, layout))[np.asarray(real)], rtol=1e-6
    )


@pytest.mark.parametrize("dispatch", ["sparse", "dense"])
@pytest.mark.parametrize(
    "routing,gated,parallelism",
    [
        (QWEN, True, {"tensor": 2, "attention_data": 1, "expert": 4}),  # EP × TP
        (V3, False, {"tensor": 4, "expert": 2}),  # attention DP (auto 2) × model 2 × EP 2
    ],
    ids=["qwen2-ep-tp", "v3-attn_dp-ep"],
)
def test_sharded_shared_experts_match_the_unsharded_model(routing, gated, parallelism, dispatch):
    cfg = _config(routing, 64, gated)
    plan = compile(strategy(parallelism=parallelism, runtime={"moe_dispatch": dispatch}), cfg)
    result = check(plan)
    assert result.passed and result.max_abs_diff < 1e-4, result.summary()


def test_a_token_touches_the_shared_expert_and_its_gate():
    plain = _config(QWEN, 0, False)
    E, layers = plain.hidden_size, plain.num_layers
    assert touched_per_token(_config(QWEN, 48, False)) - touched_per_token(plain) == layers * 3 * E * 48
    assert touched_per_token(_config(QWEN, 48, True)) - touched_per_token(plain) == layers * (3 * E * 48 + E)
    assert touched_per_token(_config(QWEN, 48, True), experts=0) == touched_per_token(plain, experts=0) + layers * (
        3 * E * 48 + E
    )  # step_flops counts routed rows apart; the shared expert stays with every token
