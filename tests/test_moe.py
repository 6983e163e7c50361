"""The MoE model: routing per family, both dispatches against a per-token loop,
expert parallelism with attention DP and model DP, and explain's expert map."""

import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from shardspec import ShardspecError, apply, compile, explain, load
from shardspec.check import check
from shardspec.explanation import experts
from shardspec.models.config import Routing
from shardspec.models.llama import Layout
from shardspec.models.moe import ExpertFFN, route
from shardspec.models.presets import PRESETS
from shardspec.runtime.engine import Engine
from shardspec.runtime.request import Request

from conftest import ROOT
from helpers import ONE_DEVICE, SERVING, strategy

MOE_EP = ROOT / "strategies" / "moe_ep.yaml"


def test_route_keeps_the_top_k_and_normalises_per_family():
    logits = jnp.asarray([[[2.0, 0.5, 1.0, -1.0]]])
    probs = np.asarray(jax.nn.softmax(logits[0, 0]))
    mixtral = np.asarray(route(logits, 2, Routing(norm_topk_prob=True)))[0, 0]
    qwen = np.asarray(route(logits, 2, Routing(norm_topk_prob=False)))[0, 0]
    np.testing.assert_allclose(mixtral, [probs[0], 0, probs[2], 0] / (probs[0] + probs[2]), rtol=1e-6)
    np.testing.assert_allclose(qwen, [probs[0], 0, probs[2], 0], rtol=1e-6)


@pytest.mark.parametrize("dispatch", ["sparse", "dense"])
@pytest.mark.parametrize("preset", ["mixtral-tiny", "qwen3-moe-tiny"])
def test_each_dispatch_equals_a_loop_over_each_tokens_chosen_experts(preset, dispatch):
    cfg = PRESETS[preset]
    with nnx.use_eager_sharding(False):
        moe = ExpertFFN(cfg, jnp.float32, nnx.Rngs(3))
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 5, cfg.hidden_size)))
    got = np.asarray(moe(jnp.asarray(x), layout=Layout(moe_dispatch=dispatch)))
    router, gate, up, down = (
        np.asarray(p[...], np.float64) for p in (moe.router, moe.gate_proj, moe.up_proj, moe.down_proj)
    )
    want = np.zeros_like(got, np.float64)
    for b, t in np.ndindex(2, 5):
        logits = x[b, t] @ router
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        top = np.argsort(-probs)[: cfg.experts_per_token]
        weights = probs[top] / (probs[top].sum() if cfg.routing.norm_topk_prob else 1.0)
        for e, w in zip(top, weights):
            g, u = x[b, t] @ gate[e], x[b, t] @ up[e]
            want[b, t] += w * ((g / (1 + np.exp(-g)) * u) @ down[e])
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(
    "preset,parallelism",
    [
        ("mixtral-tiny", {"tensor": 2, "attention_data": 1, "expert": 4}),  # EP × TP
        ("mixtral-tiny", {"data": 2, "tensor": 2, "expert": 2}),  # model DP × EP × TP
        ("qwen3-moe-tiny", {"tensor": 4, "expert": 2}),  # attention DP (auto 2) × model 2 × EP 2
        ("qwen3-moe-tiny", {"expert": 8}),  # EP only: one expert a device
    ],
    ids=["ep-tp", "dp-ep-tp", "attn_dp-ep", "ep8"],
)
def test_expert_parallel_model_matches_the_unsharded_one(preset, parallelism):
    result = check(compile(strategy(parallelism=parallelism, model=preset)))
    assert result.passed and result.max_abs_diff < 1e-4, result.summary()


def test_each_device_holds_the_experts_explain_says():
    plan = compile(load(MOE_EP))
    info = experts(plan)
    assert info["per_device"] == 2 and info["mesh_axes"] == ["expert"]
    gate = nnx.state(apply(plan))["layers"][0]["mlp"]["gate_proj"].get_value()
    for group in info["placement"]:
        for shard in gate.addressable_shards:
            if shard.device.id in group["devices"]:
                assert range(gate.shape[0])[shard.index[0]] == range(group["experts"][0], group["experts"][-1] + 1)


def test_explain_lists_which_experts_live_on_which_devices():
    text = explain(compile(load(MOE_EP), abstract_mesh=True))
    assert (
        "experts: 8 a MoE layer (top 2 a token), split over expert 4: 2 a device\n"
        "  dispatch: sparse, each token through its chosen experts only (sorted by expert, tiled grouped "
        "matmul) (runtime.moe_dispatch)\n"
        "  experts 0-1   devices 0 1\n"
        "  experts 2-3   devices 2 3\n"
        "  experts 4-5   devices 4 5\n"
        "  experts 6-7   devices 6 7\n"
    ) in text
    assert "experts:" not in explain(compile(load(ROOT / "strategies" / "tp.yaml"), abstract_mesh=True))


def test_shape_only_moe_presets_explain_without_memory():
    gc.collect()  # arrays of earlier tests must not vanish mid-count
    before = len(jax.live_arrays())
    for preset, per_device in [("mixtral-8x7b", 2), ("qwen3-30b-a3b", 32)]:
        plan = compile(load(MOE_EP), preset, abstract_mesh=True)
        assert f": {per_device} a device" in explain(plan)
    assert len(jax.live_arrays()) == before


def test_experts_not_divisible_by_the_expert_axis_is_an_error():
    with pytest.raises(ShardspecError, match=r"parallelism.expert: .*expert = 8\) is not divisible by 3 shards"):
        compile(strategy(parallelism={"expert": 3}, devices=3, model="mixtral-tiny"), abstract_mesh=True)


def test_serving_with_attention_dp_and_ep_gives_the_single_device_tokens():
    rng = np.random.default_rng(0)
    requests = [
        Request(str(i), tuple(rng.integers(0, 512, n).tolist()), max_tokens=6, ignore_eos=True)
        for i, n in enumerate([3, 17, 40, 9])
    ]
    path = ROOT / "strategies" / "moe_attention_dp_ep.yaml"
    one = Engine(compile(load(path, overrides={**SERVING, **ONE_DEVICE})))
    sharded = Engine(compile(load(path, overrides=SERVING)))
    assert [o.output_token_ids for o in sharded.generate(requests)] == [
        o.output_token_ids for o in one.generate(requests)
    ]
