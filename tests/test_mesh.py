"""The mesh: four named Auto axes over exactly the devices asked for."""

import jax
import pytest
from jax.sharding import AxisType

from shardspec import ShardspecError, compile
from shardspec.mesh import abstract_mesh, device_mesh

from helpers import strategy


def test_mesh_has_four_auto_axes_in_order():
    plan = compile(strategy("parallelism: {data: 2, tensor: 4}"))
    assert plan.mesh.axis_names == ("data", "attn_dp", "expert", "model")
    assert dict(plan.mesh.shape) == {"data": 2, "attn_dp": 2, "expert": 1, "model": 2}
    assert all(t == AxisType.Auto for t in plan.mesh.axis_types)


def test_device_count_mismatch_is_an_error_not_a_silent_subset():
    st = strategy("parallelism: {tensor: 4}")
    with pytest.raises(ShardspecError, match="the strategy uses 4 devices but 8 are present"):
        compile(st)


def test_devices_key_opts_into_a_subset():
    plan = compile(strategy("devices: 4\nparallelism: {tensor: 4}"))
    assert [d.id for d in plan.mesh.devices.flat] == [0, 1, 2, 3]


def test_explicit_devices_must_match_the_product():
    st = strategy("parallelism: {tensor: 4}")
    plan = compile(st, devices=jax.devices()[4:])
    assert [d.id for d in plan.mesh.devices.flat] == [4, 5, 6, 7]
    with pytest.raises(ShardspecError, match="uses 4 devices but 2 were given"):
        device_mesh({"data": 1, "attn_dp": 1, "expert": 1, "model": 4}, st, jax.devices()[:2])


def test_abstract_mesh_needs_no_devices():
    mesh = abstract_mesh({"data": 64, "attn_dp": 1, "expert": 1, "model": 8})
    assert dict(mesh.shape) == {"data": 64, "attn_dp": 1, "expert": 1, "model": 8}
