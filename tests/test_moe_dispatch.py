"""Sparse MoE dispatch against dense, the reference: the kernel alone, the model's
logits and the served greedy tokens under every MoE strategy, and padding tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from shardspec import ShardspecError, apply, compile, load
from shardspec.models.config import Routing
from shardspec.models.moe import ExpertFFN, route
from shardspec.models.moe_dispatch import dense_experts, sparse_experts, tile_rows, tiles_used
from shardspec.models.presets import PRESETS
from shardspec.protocol import Layout, dense_logits
from shardspec.runtime.engine import Engine
from shardspec.runtime.request import Request

from conftest import ROOT
from helpers import strategy

# float32; the dispatches add the same products in another order.
ATOL = 1e-4

MOE_STRATEGIES = {
    "ep-tp": ("mixtral-tiny", {"tensor": 2, "attention_data": 1, "expert": 4}),
    "ep8": ("qwen3-moe-tiny", {"expert": 8}),
}


def _experts(rng, tokens=37, hidden=16, experts=8, ffn=24, k=2):
    x = jnp.asarray(rng.normal(size=(tokens, hidden)), jnp.float32)
    w = route(jnp.asarray(rng.normal(size=(tokens, experts))), k, Routing(norm_topk_prob=True))
    gate, up = (jnp.asarray(rng.normal(size=(experts, hidden, ffn)), jnp.float32) for _ in range(2))
    down = jnp.asarray(rng.normal(size=(experts, ffn, hidden)), jnp.float32)
    return x, w, gate, up, down


@pytest.mark.parametrize("tile", [1, 3, 16, 128])
def test_sparse_experts_equal_dense_for_any_tile(tile):
    x, w, gate, up, down = _experts(np.random.default_rng(0))
    w = w.at[5].set(0.0)  # a token routed nowhere (padding)
    want = dense_experts(x, w, gate, up, down)
    got = jax.jit(lambda *a: sparse_experts(*a, experts_per_token=2, tile=tile))(x, w, gate, up, down)
    np.testing.assert_allclose(got, want, atol=ATOL * float(jnp.abs(want).max()))
    assert not np.asarray(got[5]).any()


def test_a_device_with_fewer_experts_than_top_k_and_a_step_routed_nowhere():
    x, w, gate, up, down = _experts(np.random.default_rng(1), k=4)
    local = (x, w[:, :2], gate[:2], up[:2], down[:2])  # two of the eight experts on this device
    got = sparse_experts(*local, experts_per_token=4, tile=4)
    np.testing.assert_allclose(got, dense_experts(*local), atol=1e-3)
    nowhere = sparse_experts(x, jnp.zeros_like(w), gate, up, down, experts_per_token=4, tile=4)
    assert not np.asarray(nowhere).any()  # no tile runs


def test_tiles_cover_the_routed_rows_and_at_most_one_partial_tile_an_expert():
    _, w, *_ = _experts(np.random.default_rng(2), tokens=512)
    tile = tile_rows(512, 2, 8)
    used = int(tiles_used(w, experts_per_token=2, tile=tile))
    assert tile == 64 and 512 * 2 <= used * tile < 512 * 2 + 8 * tile
    assert [tile_rows(16, 2, 8), tile_rows(512, 8, 128), tile_rows(1 << 20, 2, 8)] == [2, 16, 128]


@pytest.mark.parametrize("dispatch", ["sparse", "dense"])
def test_padding_tokens_route_nowhere(dispatch):
    cfg = PRESETS["mixtral-tiny"]
    with nnx.use_eager_sharding(False):
        moe = ExpertFFN(cfg, jnp.float32, nnx.Rngs(3))
    x = jax.random.normal(jax.random.key(0), (2, 5, cfg.hidden_size))
    real = jnp.arange(5)[None, :] < jnp.asarray([[3], [5]])
    layout = Layout(moe_dispatch=dispatch)
    out = np.asarray(moe(x, layout, real))
    assert not out[0, 3:].any() and out[0, :3].all()
    np.testing.assert_allclose(out[:, :3], np.asarray(moe(x, layout))[:, :3], atol=1e-5)


@pytest.mark.parametrize("name", ["ep-tp", "ep8"])  # the served tests below cover attention DP and model DP
def test_sharded_sparse_logits_equal_dense(name):
    preset, parallelism = MOE_STRATEGIES[name]
    tokens = jax.random.randint(jax.random.key(1), (4, 24), 0, PRESETS[preset].vocab_size)
    logits = {}
    for dispatch in ("sparse", "dense"):
        plan = compile(strategy(parallelism=parallelism, model=preset, runtime={"moe_dispatch": dispatch}))
        model = apply(plan)
        logits[dispatch] = np.asarray(jax.jit(lambda m, t, p=plan: dense_logits(m, t, p.layout))(model, tokens))
    np.testing.assert_allclose(logits["sparse"], logits["dense"], atol=ATOL * np.abs(logits["dense"]).max())


def _requests(vocab: int) -> list[Request]:
    rng = np.random.default_rng(0)
    return [
        Request(str(i), tuple(rng.integers(0, vocab, n).tolist()), max_tokens=8, ignore_eos=True)
        for i, n in enumerate([3, 17, 40, 9, 26, 5])
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "path,overrides",
    [
        ("moe_ep.yaml", {}),
        ("moe_attention_dp_ep.yaml", {}),
        ("moe_ep.yaml", {"parallelism.data": "2", "parallelism.expert": "2"}),  # model DP × EP
    ],
    ids=["ep", "attention_dp-ep", "model_dp-ep"],
)
def test_served_sparse_tokens_equal_dense_with_chunked_prefill(path, overrides):
    # 16 tokens a step: the 40-token prompt runs in three chunks beside decodes.
    small = {"runtime.max_num_batched_tokens": "16", "runtime.max_num_seqs": "4", **overrides}
    outputs = {}
    for dispatch in ("sparse", "dense"):
        plan = compile(load(ROOT / "strategies" / path, overrides={**small, "runtime.moe_dispatch": dispatch}))
        engine = Engine(plan)
        if dispatch == "sparse":
            engine.warmup()
        compiled = engine.metrics.compiles
        outputs[dispatch] = [o.output_token_ids for o in engine.generate(_requests(plan.model.geometry.vocab_size))]
        if dispatch == "sparse":
            assert engine.metrics.compiles == compiled  # any routing, any tile count: no recompile
    assert outputs["sparse"] == outputs["dense"]


def test_moe_dispatch_takes_sparse_or_dense_only():
    with pytest.raises(ShardspecError, match="runtime.moe_dispatch"):
        strategy(runtime={"moe_dispatch": "ragged"})


def test_sparse_dispatch_reduce_scatters_where_tokens_split_next_and_costs_less():
    # moe_attention_dp_ep: attn_dp 2 × model 2 × expert 2. Dense: GSPMD all-reduces the
    # MoE output over all three, then slices it for attention; sparse reduce-scatters over
    # attn_dp (each rank keeps its tokens) and all-reduces over expert and model.
    from shardspec.hlo import hlo_report

    path = ROOT / "strategies" / "moe_attention_dp_ep.yaml"
    reports = {d: hlo_report(compile(load(path, overrides={"runtime.moe_dispatch": d}))) for d in ("sparse", "dense")}
    sparse, dense = reports["sparse"]["prefill"], reports["dense"]["prefill"]
    assert sparse["per_layer"]["reduce-scatter"] == 1 and dense["per_layer"]["reduce-scatter"] == 0
    assert sparse["per_layer"]["all-reduce"] < dense["per_layer"]["all-reduce"]
    assert sparse["flops"] < dense["flops"] / 2  # one tile counted, against every expert on every token
    # The ideal counts the sparse loop as XLA does (one tile a device), so the ratio stays meaningful.
    assert 1.0 <= sparse["flops_over_ideal"] < dense["flops_over_ideal"]


def test_experts_replicated_where_the_expert_axis_does_not_divide_them():
    # 8 experts over expert 3 with policy.indivisible: replicate: every device holds every
    # expert, so the sparse layer must not sum the same result three times.
    from shardspec.check import check

    plan = compile(
        strategy(parallelism={"expert": 3}, devices=3, model="mixtral-tiny", policy={"indivisible": "replicate"})
    )
    result = check(plan)
    assert result.passed and result.max_abs_diff < 1e-4, result.summary()
