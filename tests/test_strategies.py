"""Every file in strategies/ loads, compiles, applies and matches the unsharded model."""

import pytest

from shardspec import apply, compile, load
from shardspec.check import check

from conftest import STRATEGY_FILES, strategy_ids


@pytest.mark.parametrize("path", STRATEGY_FILES, ids=strategy_ids())
def test_strategy_matches_unsharded_model(path):
    plan = compile(load(path))
    result = check(plan)
    assert result.tokens_equal == result.tokens_total, result.summary()
    assert result.max_abs_diff <= result.tolerance, result.summary()
    assert result.max_abs_diff < 1e-4  # float32: only reduction order differs


@pytest.mark.parametrize("path", STRATEGY_FILES, ids=strategy_ids())
def test_every_parameter_is_placed_in_its_planned_sharding(path):
    plan = compile(load(path))
    model = apply(plan)
    from flax import nnx

    layouts = {p.path: p for p in plan.params}
    for key, var in nnx.to_flat_state(nnx.state(model)):
        layout = layouts[".".join(map(str, key))]
        value = var.get_value()
        assert value.sharding.is_equivalent_to(plan.sharding(layout.spec), value.ndim)
        # Each device holds only its shard: bytes on one device == the planned bytes.
        shard = value.addressable_shards[0].data
        assert shard.size * shard.dtype.itemsize == layout.bytes_per_device
        assert len({s.device for s in value.addressable_shards}) == 8


def test_each_strategy_has_a_comment_on_every_key():
    for path in STRATEGY_FILES:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped and not stripped.startswith("#") and not stripped.endswith(":"):
                assert "#" in line or stripped.startswith("name:"), f"{path.name}:{number} has no comment"
