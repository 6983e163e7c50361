"""Resolution of logical axes into PartitionSpecs, policy by policy."""

from jax.sharding import PartitionSpec as P

from shardspec import rules
from shardspec.errors import ShardspecError
from shardspec.models.axes import ZERO_PADDABLE

from helpers import strategy

SHAPE = {"data": 2, "attn_dp": 2, "expert": 1, "model": 2}


def resolve(st, shape, axes, mesh=SHAPE, path="w"):
    return rules.resolve_array(
        path, shape, axes, table=rules.rule_table(st), mesh_shape=mesh, strategy=st, paddable=ZERO_PADDABLE
    )


def test_default_rules_drop_size_one_axes():
    st = strategy()
    res, problems = resolve(st, (128, 256), ("embed", "mlp"))
    assert problems == [] and res.spec == P(None, ("attn_dp", "model"))
    res, _ = resolve(st, (128, 256), ("embed", "mlp"), mesh={"data": 1, "attn_dp": 1, "expert": 1, "model": 8})
    assert res.spec == P(None, "model")


def test_tokens_shard_over_data_and_attn_dp_but_ffn_tokens_only_over_data():
    st = strategy()
    assert resolve(st, (8, 4), ("batch", None))[0].spec == P(("data", "attn_dp"), None)
    assert resolve(st, (8, 4), ("mlp_batch", None))[0].spec == P("data", None)


def test_indivisible_dimension_is_an_error_naming_the_parameter_and_key():
    st = strategy()
    _, problems = resolve(st, (128, 250), ("embed", "mlp"), path="layers.0.mlp.gate_proj")
    assert [p.format() for p in problems] == [
        "error: <dict>: parallelism.tensor: layers.0.mlp.gate_proj: dim 1 (mlp = 250) is not divisible by "
        "4 shards (attn_dp 2 × model 2) (choose sizes that divide 250, or set policy.indivisible: replicate or pad)"
    ]


def test_indivisible_replicate_and_pad_policies_report_what_they_did():
    st = strategy(policy={"indivisible": "replicate"})
    res, problems = resolve(st, (128, 250), ("embed", "mlp"))
    assert problems == [] and res.spec == P(None, None)
    assert res.notes == ("mlp 250 not divisible by 4 shards: replicated (policy.indivisible: replicate)",)

    st = strategy(policy={"indivisible": "pad"})
    res, _ = resolve(st, (128, 250), ("embed", "mlp"))
    assert res.spec == P(None, ("attn_dp", "model")) and res.padded_shape == (128, 252)
    # Heads cannot be padded exactly: they are replicated instead, and said so.
    res, _ = resolve(st, (128, 3, 16), ("embed", "heads", "head_dim"))
    assert res.spec == P(None, None, None) and "pad is not known to be exact for heads" in res.notes[0]


def test_fewer_kv_heads_than_model_shards_replicates_instead_of_failing():
    st = strategy()
    res, problems = resolve(
        st, (128, 2, 16), ("embed", "kv_heads", "head_dim"), mesh={"data": 1, "attn_dp": 1, "expert": 1, "model": 8}
    )
    assert problems == [] and res.kv_replicated and res.spec == P(None, None, None)


def test_one_mesh_axis_twice_in_a_spec_is_an_error_at_the_rule():
    st = strategy("rules: {embed: model}")
    _, problems = resolve(st, (128, 8, 16), ("embed", "heads", "head_dim"))
    assert len(problems) == 1
    assert problems[0].path == "rules.embed"
    assert "mesh axis 'model' shards both 'embed' and 'heads'" in problems[0].message


def test_unmatched_logical_axis_follows_the_policy():
    st = strategy()
    _, problems = resolve(st, (4,), ("rotary",))
    assert "logical axis 'rotary' has no rule" in problems[0].message
    st = strategy(policy={"unmatched": "replicate"})
    res, problems = resolve(st, (4,), ("rotary",))
    assert problems == [] and res.spec == P(None) and "no rule" in res.notes[0]


def test_rules_override_wins_and_is_named_as_the_reason():
    st = strategy("rules: {mlp: null, vocab: [model]}")
    table = rules.rule_table(st)
    assert table["mlp"].mesh_axes == () and table["mlp"].why == "rules.mlp"
    assert resolve(st, (128, 256), ("embed", "mlp"))[0].spec == P(None, None)
    assert resolve(st, (512, 128), ("vocab", "embed"))[0].spec == P("model", None)


def test_bytes_per_device():
    assert rules.bytes_per_device((128, 256), P(None, ("attn_dp", "model")), SHAPE, 4) == 128 * 64 * 4
    assert rules.bytes_per_device((128,), P(), SHAPE, 2) == 256


def test_shardspec_error_holds_every_problem():
    st = strategy()
    _, p1 = resolve(st, (128, 250), ("embed", "mlp"))
    _, p2 = resolve(st, (3, 16), ("heads", "head_dim"))
    err = ShardspecError(p1 + p2)
    assert len(str(err).splitlines()) == 2


from hypothesis import given  # noqa: E402
from hypothesis import strategies as hs  # noqa: E402

_sizes = hs.sampled_from([1, 2, 3, 4, 8])


@given(
    data=_sizes,
    attn=_sizes,
    model=_sizes,
    dim=hs.integers(1, 64),
    policy=hs.sampled_from(["replicate", "pad"]),
    axis=hs.sampled_from(["mlp", "heads", "vocab", "batch"]),
)
def test_every_resolved_spec_divides_the_stored_shape(data, attn, model, dim, policy, axis):
    mesh = {"data": data, "attn_dp": attn, "expert": 1, "model": model}
    st = strategy(policy={"indivisible": policy})
    res, problems = resolve(st, (dim, 16), (axis, "embed"), mesh=mesh)
    assert problems == []
    shards = rules.shards_per_dim(res.spec, mesh)
    assert all(s % k == 0 for s, k in zip(res.padded_shape, shards))
    assert res.padded_shape[0] >= dim and (res.padded_shape[0] == dim or axis in ZERO_PADDABLE)
    # Never fewer bytes than an even split of the real tensor.
    per_device = rules.bytes_per_device(res.padded_shape, res.spec, mesh, 4)
    assert per_device * shards[0] >= dim * 16 * 4
