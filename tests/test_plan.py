"""compile(): derived sizes, overrides and the checks that need the model's shapes."""

import dataclasses

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from shardspec import ShardspecError, compile, load
from shardspec.check import check
from shardspec.models.presets import PRESETS

from conftest import ROOT
from helpers import strategy


def plan_of(name, **kw):
    return compile(load(ROOT / "strategies" / name), abstract_mesh=True, **kw)


def test_attention_dp_auto_derives_4_by_2_and_stores_each_kv_head_once():
    plan = plan_of("attention_dp.yaml")
    assert plan.mesh_shape == {"data": 1, "attn_dp": 4, "expert": 1, "model": 2}
    assert plan.attention_data_why == "attention_data = 4: tensor 8 / gcd(8, kv_heads 2)"
    assert (plan.dp_ranks, plan.attn_tp, plan.kv_cache.replication, plan.kv_repeat) == (4, 2, 1, 1)
    assert plan.kv_cache.spec == P("attn_dp", None, "model", None)


def test_plain_tp_reports_kv_head_replication_instead_of_failing():
    plan = plan_of("tp.yaml")
    assert (plan.dp_ranks, plan.attn_tp) == (1, 8)
    assert (plan.kv_cache.replication, plan.kv_cache.slots, plan.kv_repeat) == (4, 8, 4)
    k_proj = plan.param("layers.0.self_attn.k_proj")
    assert k_proj.spec == P(None, None, None) and "KV heads replicated over model" in k_proj.notes


def test_model_dp_has_one_rank_per_device_and_replicated_weights():
    plan = plan_of("dp.yaml")
    assert plan.dp_ranks == 8 and all(all(e is None for e in p.spec) for p in plan.params)
    assert plan.activations["attn_in"] == P("data", None, None)


def test_activation_specs_follow_the_two_layouts():
    plan = plan_of("attention_dp.yaml")
    assert plan.activations["attn_q"] == P("attn_dp", None, "model", None)
    assert plan.activations["mlp_hidden"] == P(None, None, ("attn_dp", "model"))


def test_heads_not_divisible_by_tensor_is_reported_at_the_tensor_key():
    st = strategy("parallelism: {tensor: 16, attention_data: 1}")
    with pytest.raises(ShardspecError) as err:
        compile(st, abstract_mesh=True)
    text = str(err.value)
    assert (
        "error: <dict>: parallelism.tensor: layers.0.self_attn.o_proj: dim 0 (heads = 8) is not divisible "
        "by 16 shards (model 16)" in text
    )
    assert "layers.1" not in text  # one problem per cause, not one per layer


def test_all_model_dependent_problems_are_reported_at_once():
    st = strategy("parallelism: {tensor: 16, attention_data: 1}")
    with pytest.raises(ShardspecError) as err:
        compile(st, abstract_mesh=True)
    paths = {p.message.split(":")[0] for p in err.value.problems}
    assert {"layers.0.self_attn.o_proj", "layers.0.self_attn.q_proj"} <= paths


def test_params_override_sets_logical_axes_by_regex():
    st = strategy(params=[{"match": r"lm_head$", "axes": [None, None]}])
    plan = compile(st, abstract_mesh=True)
    assert plan.param("lm_head").spec == P(None, None) and plan.param("lm_head").axes_from == "params[0]"


def test_params_override_with_the_wrong_rank_is_an_error():
    st = strategy(params=[{"match": "q_proj", "axes": ["embed"]}])
    with pytest.raises(ShardspecError, match=r"params\[0\]\.axes: layers.0.self_attn.q_proj has 3 dims but 1 axes"):
        compile(st, abstract_mesh=True)


def test_padding_policy_keeps_outputs_exact():
    odd = dataclasses.replace(PRESETS["llama3-tiny"], mlp_size=250, vocab_size=509)
    st = strategy("parallelism: {tensor: 8, attention_data: 1}", policy={"indivisible": "pad"})
    plan = compile(st, odd)
    assert plan.param("layers.0.mlp.gate_proj").stored_shape == (128, 256)
    assert plan.param("lm_head").stored_shape == (128, 512)
    result = check(plan)
    assert result.passed, result.summary()


def test_replicate_policy_keeps_outputs_exact():
    odd = dataclasses.replace(PRESETS["llama3-tiny"], mlp_size=250)
    st = strategy("parallelism: {tensor: 8, attention_data: 1}", policy={"indivisible": "replicate"})
    plan = compile(st, odd)
    assert plan.param("layers.0.mlp.gate_proj").spec == P(None, None)
    assert check(plan).passed


def test_no_model_anywhere_is_a_clear_error():
    st = load({"parallelism": {"tensor": 8}})
    with pytest.raises(ShardspecError, match="no model given"):
        compile(st, abstract_mesh=True)


def test_model_argument_overrides_the_strategy():
    plan = compile(load(ROOT / "strategies" / "tp.yaml"), "llama3-70b", abstract_mesh=True)
    assert plan.model.geometry.num_layers == 80 and plan.is_abstract


def test_param_specs_tree_matches_the_parameter_state():
    plan = plan_of("dp_tp.yaml")
    from flax import nnx

    flat = dict((".".join(map(str, k)), v.get_value()) for k, v in nnx.to_flat_state(plan.param_specs()))
    assert flat["layers.1.mlp.down_proj"] == P("model", None)
    assert len(flat) == len(plan.params)


def test_kv_bytes_per_page_counts_k_and_v_of_every_layer():
    plan = compile(
        load(ROOT / "strategies" / "attention_dp.yaml", overrides={"kv_cache.dtype": "bfloat16"}), abstract_mesh=True
    )
    # 2 (K, V) × 2 layers × 16 tokens × 1 KV head per device × 16 head_dim × 2 bytes (bf16)
    assert plan.kv_cache.bytes_per_page_per_device == 2 * 2 * 16 * 1 * 16 * 2
    assert np.isclose(plan.kv_cache.bytes_per_device(1000), 2048 * 1000)


def test_kv_dtype_auto_is_the_runtime_dtype_and_max_model_len_sizes_the_runtime():
    plan = plan_of("attention_dp.yaml")
    assert (plan.kv_cache.dtype, plan.runtime.max_model_len, plan.runtime.max_pages_per_seq) == ("float32", 512, 32)
    short = compile(
        load(
            ROOT / "strategies" / "attention_dp.yaml",
            overrides={"runtime.max_model_len": "100", "runtime.dtype": "bfloat16"},
        ),
        abstract_mesh=True,
    )
    assert (short.kv_cache.dtype, short.runtime.max_model_len, short.runtime.max_pages_per_seq) == ("bfloat16", 100, 7)
    st = load(ROOT / "strategies" / "attention_dp.yaml", overrides={"runtime.max_model_len": "513"})
    with pytest.raises(ShardspecError, match="runtime.max_model_len: 513 exceeds the model's maximum length 512"):
        compile(st, abstract_mesh=True)
