"""apply(): parameters created or moved into their shardings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from shardspec import ShardspecError, apply, compile, load
from shardspec.models.registry import build

from conftest import ROOT


def test_given_host_parameters_are_moved_into_place_and_give_the_same_logits():
    plan = compile(load(ROOT / "strategies" / "dp_tp.yaml"))
    reference = build(plan.model.config, seed=3)
    host = jax.tree.map(np.asarray, nnx.state(reference))
    placed = apply(plan, host)  # a State in, a State out
    assert isinstance(placed, nnx.State)
    model = nnx.merge(nnx.graphdef(reference), placed)
    tokens = jnp.arange(64).reshape(4, 16) % plan.model.geometry.vocab_size
    want = reference(tokens)
    got = jax.jit(lambda m, t: m(t, layout=plan.layout))(model, tokens)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4)
    q = nnx.state(model)["layers"][0]["self_attn"]["q_proj"].get_value()
    assert q.addressable_shards[0].data.shape == (128, 2, 16)  # heads split over model 4


def test_a_given_module_comes_back_as_a_module_in_place():
    plan = compile(load(ROOT / "strategies" / "tp.yaml"))
    reference = build(plan.model.config, seed=1)
    model = apply(plan, reference)
    assert type(model) is type(reference) and model is not reference
    q = nnx.state(model)["layers"][0]["self_attn"]["q_proj"].get_value()
    assert q.sharding.spec == plan.param("layers.0.self_attn.q_proj").spec


def test_initialised_parameters_equal_an_unsharded_init_with_the_same_seed():
    plan = compile(load(ROOT / "strategies" / "attention_dp.yaml"))
    sharded = nnx.state(apply(plan, seed=5))
    plain = nnx.state(build(plan.model.config, seed=5))
    for (k, a), (_, b) in zip(nnx.to_flat_state(sharded), nnx.to_flat_state(plain)):
        # Same random bits; jit may fuse the scaling differently (1 ulp).
        np.testing.assert_allclose(
            np.asarray(a.get_value()), np.asarray(b.get_value()), rtol=1e-6, atol=1e-7, err_msg=str(k)
        )


def test_abstract_plans_and_shape_only_models_cannot_be_applied():
    with pytest.raises(ShardspecError, match="abstract mesh"):
        apply(compile(load(ROOT / "strategies" / "tp.yaml"), abstract_mesh=True))
    with pytest.raises(ShardspecError, match="shape-only"):
        apply(compile(load(ROOT / "strategies" / "tp.yaml"), "llama3-8b"))
