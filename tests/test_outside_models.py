"""compile / explain / apply for models shardspec did not write: NNX, Linen, pytrees."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import shardspec
from shardspec import ShardspecError, apply, compile, explain, load

from conftest import ROOT
from helpers import example

gpt2 = example("gpt2_nnx")
linen_mlp = example("linen_mlp")

GPT2_YAML = ROOT / "examples" / "gpt2.yaml"
LINEN_YAML = ROOT / "examples" / "linen_mlp.yaml"


def gpt2_strategy(**overrides):
    return load(GPT2_YAML, overrides=overrides)


def abstract_gpt2():
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: gpt2.GPT2(gpt2.GPT2Config(), nnx.Rngs(0)))


def mlp_tree():
    """A plain pytree: two layers of a dict, one leaf an array, one a ShapeDtypeStruct."""
    params = {
        "up": {"w": jax.ShapeDtypeStruct((64, 256), jnp.float32), "b": np.zeros(256, np.float32)},
        "down": {"w": jax.ShapeDtypeStruct((256, 64), jnp.float32)},
    }
    axes = {"up": {"w": ("hidden", "ffn"), "b": ("ffn",)}, "down": {"w": ("ffn", "hidden")}}
    return params, axes


PYTREE_RULES = {
    "rules": {"hidden": None, "ffn": ["attn_dp", "model"]},
    "parallelism": {"tensor": 8, "attention_data": 1},
}


def pytree_strategy(**extra):
    return load({**PYTREE_RULES, **extra})


# -- NNX ------------------------------------------------------------------------------------


def test_a_concrete_and_an_abstract_nnx_module_compile_to_the_same_plan():
    concrete = compile(gpt2_strategy(), gpt2.build(), abstract_mesh=True)
    abstract = compile(gpt2_strategy(), abstract_gpt2(), abstract_mesh=True)
    assert [(p.path, p.spec, p.bytes_per_device) for p in concrete.params] == [
        (p.path, p.spec, p.bytes_per_device) for p in abstract.params
    ]
    fc = concrete.param("h.0.mlp.fc")
    assert fc.axes == ("hidden", "ffn") and fc.spec == P(None, ("attn_dp", "model"))
    assert concrete.param("h.1.attn.query").spec == P(None, "model", None)
    assert concrete.model.name == "GPT2" and concrete.kv_cache.kv_heads == 4
    assert repr(concrete) == "ShardingPlan('gpt2-attention-dp', model='GPT2', mesh=1×2×1×4, 36 params)"


def test_param_specs_and_shardings_are_an_nnx_state_shaped_like_the_model():
    model = gpt2.build()
    plan = compile(gpt2_strategy(), model)
    specs = plan.param_specs()
    assert isinstance(specs, nnx.State)
    assert jax.tree.structure(specs) == jax.tree.structure(nnx.state(model))
    assert specs["h"][0]["mlp"]["fc"].get_value() == P(None, ("attn_dp", "model"))
    shardings = plan.param_shardings()
    assert shardings["wte"].get_value() == plan.sharding(P(("attn_dp", "model"), None))


def test_an_nnx_state_compiles_with_kv_heads_given_for_attention_data_auto():
    state = nnx.state(gpt2.build())
    auto = {"parallelism.attention_data": "auto"}
    four = {**auto, "parallelism.tensor": "4"}  # its 4 heads split 4 ways without attention DP
    unknown = compile(gpt2_strategy(**four), state, abstract_mesh=True)  # no KV heads declared: no attention DP
    assert unknown.attention_data == 1 and "declares no KV heads" in unknown.attention_data_why
    assert "declares no KV heads" in explain(unknown)
    plan = compile(gpt2_strategy(**auto), state, kv_heads=4, abstract_mesh=True)
    assert plan.attention_data == 2 and plan.model.name == "nnx.State"
    assert plan.kv_cache is None  # a State has no decoder_geometry(): nothing to page
    text = explain(plan)
    assert "no KV cache: the model declares no decoder geometry" in text
    assert json.loads(explain(plan, format="json"))["kv_cache"] is None


# -- Linen ----------------------------------------------------------------------------------


def test_linen_variables_compile_with_linen_paths_and_unboxed_specs():
    model = linen_mlp.ResidualMLP()
    plan = compile(load(LINEN_YAML), linen_mlp.abstract(model), abstract_mesh=True)
    assert plan.param("params/Dense_0/kernel").spec == P(None, "model")
    assert plan.param("params/head").spec == P(None, "model")  # a plain nn.Partitioned box
    ln = plan.param("params/LayerNorm_0/scale")
    assert ln.spec == P(None) and "the model gives no logical axes: replicated" in ln.notes
    specs = plan.param_specs()
    assert specs["params"]["Dense_0"]["kernel"] == P(None, "model")
    assert jax.tree.structure(specs) == jax.tree.structure(nn.unbox(linen_mlp.abstract(model)))
    assert "params/Embed_0/embedding" in explain(plan)


def test_flax_rules_round_trip_linen_and_nnx():
    """Flax's own logical_to_mesh_sharding with plan.logical_axis_rules() gives the plan's shardings."""
    model = linen_mlp.ResidualMLP()
    variables = linen_mlp.abstract(model)
    plan = compile(load(LINEN_YAML), variables)
    theirs = nn.logical_to_mesh_sharding(nn.get_partition_spec(variables), plan.mesh, plan.logical_axis_rules())
    _assert_same_shardings(theirs, plan.param_shardings())

    module = gpt2.build()
    plan = compile(gpt2_strategy(), module)
    with nnx.logical_axis_rules(plan.logical_axis_rules()):
        theirs = nnx.get_named_sharding(nnx.state(module), plan.mesh)
    _assert_same_shardings(theirs, plan.param_shardings())


def _assert_same_shardings(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b) and len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        assert x.is_equivalent_to(y, 2), (x, y)


# -- pytrees --------------------------------------------------------------------------------


def test_a_pytree_with_axes_compiles_applies_and_returns_its_own_structure():
    params, axes = mlp_tree()
    plan = compile(pytree_strategy(), params, axes=axes)
    assert plan.param("up.w").spec == P(None, "model")  # attn_dp is 1: left out of specs
    specs = plan.param_specs()
    assert specs == {"up": {"w": P(None, "model"), "b": P("model")}, "down": {"w": P("model", None)}}
    host = {
        "up": {"w": np.ones((64, 256), np.float32), "b": np.arange(256, dtype=np.float32)},
        "down": {"w": np.ones((256, 64), np.float32)},
    }
    placed = apply(plan, host)
    assert set(placed) == {"up", "down"} and isinstance(placed["up"]["b"], jax.Array)
    assert placed["up"]["b"].addressable_shards[0].data.shape == (32,)  # 256 over 8 devices
    np.testing.assert_array_equal(np.asarray(placed["up"]["b"]), host["up"]["b"])


def test_pytree_errors_say_what_was_given_and_what_is_accepted():
    params, axes = mlp_tree()
    with pytest.raises(ShardspecError, match=r"carries no logical axes, so no parameter can be split \(pass axes="):
        compile(pytree_strategy(), params, abstract_mesh=True)
    with pytest.raises(ShardspecError, match="axes= does not have the structure of the parameters"):
        compile(pytree_strategy(), params, axes={"up": axes["up"]}, abstract_mesh=True)
    bad = {**axes, "down": {"w": ("ffn",)}}
    with pytest.raises(ShardspecError, match=r"parameter 'down.w': 1 axes \('ffn',\) for 2 dimensions"):
        compile(pytree_strategy(), params, axes=bad, abstract_mesh=True)
    with pytest.raises(ShardspecError, match=r"parameter 'x' is a string \('no'\), not an array"):
        compile(pytree_strategy(), {"x": "no"}, axes={"x": None}, abstract_mesh=True)


@pytest.mark.parametrize(
    "model, what",
    [
        (3, "a number (3)"),
        (lambda: 0, "a function"),
        ([], "a list"),
        (b"llama", "a bytes"),
        (linen_mlp.ResidualMLP(), "a Linen module"),
    ],
)
def test_anything_else_is_a_clear_error(model, what):
    with pytest.raises(ShardspecError) as err:
        compile(pytree_strategy(), model, abstract_mesh=True)
    assert what in str(err.value)
    assert "nnx.Module" in str(err.value) or "variables" in str(err.value)


def test_axes_and_kv_heads_are_for_outside_models_only():
    with pytest.raises(ShardspecError, match="axes= describe outside models"):
        compile(load(ROOT / "strategies" / "tp.yaml"), axes={"w": ("a",)}, abstract_mesh=True)
    with pytest.raises(ShardspecError, match="axes= is for plain pytrees"):
        compile(gpt2_strategy(), gpt2.build(), axes={}, abstract_mesh=True)
    with pytest.raises(ShardspecError, match="kv_heads=2 but the model's geometry has 4"):
        compile(gpt2_strategy(), gpt2.build(), kv_heads=2, abstract_mesh=True)


# -- an open vocabulary -------------------------------------------------------------------


def test_rules_may_name_only_what_the_model_uses():
    st = load({**PYTREE_RULES, "rules": {**PYTREE_RULES["rules"], "fnn": "model"}})
    params, axes = mlp_tree()
    with pytest.raises(ShardspecError) as err:
        compile(st, params, axes=axes, abstract_mesh=True)
    assert str(err.value) == (
        "error: <dict>: rules.fnn: logical axis 'fnn' is not used by model pytree (did you mean 'ffn'?)"
    )


def test_a_rule_for_a_name_the_model_does_not_use_is_a_warning_unless_asked_otherwise():
    """One strategy may serve several models (a dense and an MoE one, scanned and unscanned):
    a name far from every used one is ignored and explain warns; policy.unused_rules: error refuses it."""
    params, axes = mlp_tree()
    st = load({**PYTREE_RULES, "rules": {**PYTREE_RULES["rules"], "layers": "expert"}})
    plan = compile(st, params, axes=axes, abstract_mesh=True)
    assert plan.unused_rules == ("layers",)
    assert "rules.layers: pytree does not use this logical axis (ignored)" in explain(plan)
    strict = load(
        {**PYTREE_RULES, "rules": {**PYTREE_RULES["rules"], "layers": "expert"}, "policy": {"unused_rules": "error"}}
    )
    with pytest.raises(ShardspecError, match=r"rules.layers: logical axis 'layers' is not used by model pytree"):
        compile(strict, params, axes=axes, abstract_mesh=True)


def test_a_shardspec_model_gets_the_same_check():
    st = load({"model": "llama3-tiny", "rules": {"mpl": "model"}})
    with pytest.raises(
        ShardspecError,
        match=r"rules.mpl: logical axis 'mpl' is not used by model llama3-tiny "
        r"\(did you mean 'mlp'\?\)",
    ):
        compile(st, abstract_mesh=True)


def test_params_overrides_name_outside_axes_and_one_that_matches_nothing_is_an_error():
    params, axes = mlp_tree()
    no_axes_for_down = {**axes, "down": {"w": None}}
    st = pytree_strategy(params=[{"match": r"^down\.w$", "axes": ["ffn", "hidden"]}])
    plan = compile(st, params, axes=no_axes_for_down, abstract_mesh=True)
    assert plan.param("down.w").spec == P("model", None)
    assert plan.param("down.w").axes_from == "params[0]"

    st = pytree_strategy(
        params=[
            {"match": r"^down\.w$", "axes": ["ffn", "hidden"]},
            {"match": "mlp", "axes": [None]},
            {"match": "down", "axes": [None, None]},
        ]
    )
    with pytest.raises(ShardspecError) as err:
        compile(st, params, axes=axes, abstract_mesh=True)
    lines = str(err.value).splitlines()
    assert lines == [
        "error: <dict>: params[1].match: 'mlp' matches no parameter (it is a regex searched in each path; "
        "paths look like 'down.w', 'up.b' or 'up.w')",
        "error: <dict>: params[2].match: 'down': every parameter it matches is set by an earlier params: entry "
        "(the first match wins; move this entry up or narrow the earlier one)",
    ]


# -- policies on an outside model ---------------------------------------------------------


def test_unmatched_policy_on_an_outside_model():
    params, axes = mlp_tree()
    st = load({"parallelism": {"tensor": 8, "attention_data": 1}, "rules": {"hidden": None}})
    with pytest.raises(ShardspecError, match=r"rules: down.w: logical axis 'ffn' has no rule"):
        compile(st, params, axes=axes, abstract_mesh=True)
    st = load(
        {
            "parallelism": {"tensor": 8, "attention_data": 1},
            "rules": {"hidden": None},
            "policy": {"unmatched": "replicate"},
        }
    )
    plan = compile(st, params, axes=axes, abstract_mesh=True)
    assert plan.param("up.w").spec == P(None, None)
    assert "'ffn' has no rule: replicated (policy.unmatched)" in plan.param("up.w").notes


# 4 heads do not split 3 ways: attention runs unsharded (the model's n_heads and the runtime's heads).
THREE = {
    "devices": 3,
    "parallelism": {"tensor": 3, "attention_data": 1},
    "rules": {
        "hidden": None,
        "ffn": "model",
        "n_heads": None,
        "head_size": None,
        "n_vocab": "model",
        "n_pos": None,
        "heads": None,
        "kv_heads": None,
    },
}


def test_indivisible_policies_on_an_outside_model():
    model = gpt2.build()  # ffn 256 does not split 3 ways
    with pytest.raises(ShardspecError, match=r"h.0.mlp.fc: dim 1 \(ffn = 256\) is not divisible by 3 shards"):
        compile(load(THREE), model, abstract_mesh=True)
    plan = compile(load({**THREE, "policy": {"indivisible": "replicate"}}), model, abstract_mesh=True)
    assert plan.param("h.0.mlp.fc").spec == P(None, None)
    # pad only where the model says zero-padding is exact; else replicated, and said so
    plan = compile(load({**THREE, "policy": {"indivisible": "pad"}}), model, abstract_mesh=True)
    assert "pad is not known to be exact for ffn" in plan.param("h.0.mlp.fc").notes[0]
    plan = compile(load({**THREE, "policy": {"indivisible": "pad"}}), model, paddable=["ffn"], abstract_mesh=True)
    assert plan.param("h.0.mlp.fc").stored_shape == (64, 258) and plan.param("h.0.mlp.fc").shape == (64, 256)
    assert any(line.split()[:2] == ["h.0.mlp.fc", "64×258"] for line in explain(plan).splitlines())


def test_padded_outside_parameters_keep_the_forward_exact():
    model = gpt2.build(seed=2)
    plan = compile(load({**THREE, "policy": {"indivisible": "pad"}}), model, paddable=["ffn"])
    placed = apply(plan, model)
    assert nnx.state(placed)["h"][0]["mlp"]["fc"].get_value().shape == (64, 258)
    tokens = jnp.arange(48, dtype=jnp.int32).reshape(3, 16)
    got = jax.jit(lambda m, t: m(t, layout=plan.layout))(placed, tokens)
    np.testing.assert_allclose(np.asarray(got), np.asarray(model(tokens)), rtol=1e-5, atol=1e-5)


# -- constrain and apply ------------------------------------------------------------------


def test_constrain_pins_by_logical_axes_and_rejects_unknown_names():
    plan = compile(gpt2_strategy(), gpt2.build())
    x = jnp.ones((4, 3, 256))
    pinned = jax.jit(lambda x: plan.constrain(x * 2, axes=("mlp_batch", None, "ffn")))(x)
    assert pinned.sharding.is_equivalent_to(plan.sharding(P(None, None, ("attn_dp", "model"))), 3)
    assert plan.activation_spec(("batch", None, "hidden")) == P("attn_dp", None, None)
    with pytest.raises(ShardspecError, match=r"logical axis 'fnn' has no rule \(did you mean 'ffn'\?\)"):
        plan.activation_spec(("batch", None, "fnn"))
    with pytest.raises(ShardspecError, match="mesh axis 'attn_dp' shards both 'batch' and 'ffn'"):
        plan.activation_spec(("batch", None, "ffn"))
    with pytest.raises(ShardspecError, match="2 axes"):
        plan.constrain(x, axes=("batch", None))


def test_apply_names_the_first_parameter_that_does_not_match():
    plan = compile(gpt2_strategy(), gpt2.build())
    other = gpt2.build(gpt2.GPT2Config(ffn=128))
    with pytest.raises(
        ShardspecError,
        match=r"apply\(\): parameter 'h.0.mlp.fc' has shape \(64, 128\); "
        r"the plan has \(64, 256\)",
    ):
        apply(plan, other)
    state = dict(nnx.to_pure_dict(nnx.state(gpt2.build())))
    del state["wpe"]
    with pytest.raises(ShardspecError, match="parameter 'wpe' is in the plan but not in the given parameters"):
        apply(plan, state)
    with pytest.raises(ShardspecError, match="apply\\(\\) needs the parameters of GPT2"):
        apply(plan)


def test_public_api_reaches_the_protocol():
    from shardspec.protocol import DecoderGeometry, Layout, ServableModel

    assert isinstance(gpt2.build(), ServableModel)
    assert gpt2.build().decoder_geometry() == DecoderGeometry(2, 4, 4, 16, 384, 256)
    assert Layout().constrain(1, axes=("a",)) == 1
    assert shardspec.ShardingPlan.logical_axis_rules.__doc__


# -- no annotations at all: params: names every axis -----------------------------------------


class PlainMLP(nnx.Module):
    """An MLP whose parameters carry no logical axes (as most published code writes them)."""

    def __init__(self, rngs: nnx.Rngs):
        self.up = nnx.Linear(64, 256, rngs=rngs)
        self.down = nnx.Linear(256, 64, rngs=rngs)

    def __call__(self, x):
        return self.down(jax.nn.relu(self.up(x)))


PLAIN_PARAMS = {
    "params": [
        {"match": r"up\.kernel$", "axes": ["hidden", "ffn"]},
        {"match": r"up\.bias$", "axes": ["ffn"]},
        {"match": r"down\.kernel$", "axes": ["ffn", "hidden"]},
        {"match": r"down\.bias$", "axes": ["hidden"]},
    ]
}


def test_params_alone_names_an_unannotated_models_axes_in_every_form():
    """Modules, states, Linen variables and pytrees with no annotations: the strategy's params:
    give every axis, and the plan keeps the caller's structure (a module stays servable)."""
    module = PlainMLP(nnx.Rngs(0))
    strategy = pytree_strategy(**PLAIN_PARAMS)
    for model in (module, nnx.state(module), nnx.to_pure_dict(nnx.state(module))):
        plan = compile(strategy, model, abstract_mesh=True)
        assert [p.spec for p in plan.params if p.path.endswith("up.kernel")] == [P(None, "model")]
    plan = compile(strategy, module)
    placed = apply(plan, module)
    assert isinstance(placed, PlainMLP)
    x = jnp.ones((2, 64))
    np.testing.assert_allclose(np.asarray(placed(x)), np.asarray(module(x)), atol=1e-5)
    assert placed.up.kernel.get_value().addressable_shards[0].data.shape == (64, 32)
    linen = nn.Dense(32).init(jax.random.key(0), jnp.ones((1, 16)))  # no boxes at all
    rules = {"params": [{"match": "kernel", "axes": ["hidden", "ffn"]}, {"match": "bias", "axes": ["ffn"]}]}
    assert compile(pytree_strategy(**rules), linen, abstract_mesh=True).param("params.kernel").spec == P(None, "model")


def test_an_unannotated_model_needs_no_names_under_pure_data_parallelism():
    plan = compile(load({"parallelism": {"data": 8}}), PlainMLP(nnx.Rngs(0)), abstract_mesh=True)
    assert all(all(e is None for e in p.spec) for p in plan.params)
    with pytest.raises(ShardspecError, match="PlainMLP carries no logical axes.*params:"):
        compile(pytree_strategy(), PlainMLP(nnx.Rngs(0)), abstract_mesh=True)


# -- a model's own activation constraints ------------------------------------------------------


class ConstrainedMLP(nnx.Module):
    """Like MaxText's layers: parameters annotated with its own names, and its forward pinning
    activations by names that only the forward uses (`nn.with_logical_constraint`)."""

    def __init__(self, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.up = nnx.Param(init(rngs.params(), (64, 256)), out_sharding=("embed_dim", "mlp_dim"))
        self.down = nnx.Param(init(rngs.params(), (256, 64)), out_sharding=("mlp_dim", "embed_dim"))

    def __call__(self, x, constrain: bool = True):
        pin = nn.with_logical_constraint if constrain else (lambda y, _: y)
        x = pin(x, ("activation_batch", "activation_embed"))
        h = pin(jax.nn.relu(x @ self.up.get_value()), ("activation_batch", "activation_mlp"))
        return pin(h @ self.down.get_value(), ("activation_batch", "activation_embed"))


CONSTRAINED = {
    "parallelism": {"data": 2, "tensor": 4},
    "rules": {
        "embed_dim": None,
        "mlp_dim": "model",
        "activation_batch": "data",
        "activation_embed": None,
        "activation_mlp": "model",
    },
    "activations": ["activation_batch", "activation_embed", "activation_mlp"],
}


def _forward_collectives(plan, model, constrain: bool):
    """The collectives of the model's forward under the plan (its parameters in the plan's shardings)."""
    graphdef, state = nnx.split(model)
    params = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state, plan.param_shardings()
    )
    x = jax.ShapeDtypeStruct((16, 64), jnp.float32, sharding=plan.sharding(P("data")))

    def forward(params, x):
        return nnx.merge(graphdef, params)(x, constrain=constrain)

    with plan.context():
        return shardspec.hlo_report(plan, forward, params, x)["collectives"]


def test_a_models_own_activation_constraints_follow_the_plan():
    """Declared (activations:) and mapped (rules:), the model's own constraints resolve to the
    plan's layout under plan.context(): the forward's collectives with them equal those without."""
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: ConstrainedMLP(nnx.Rngs(0)))
    plan = compile(load(CONSTRAINED), model)
    assert plan.unused_rules == ()
    with_constraints = _forward_collectives(plan, model, constrain=True)
    assert with_constraints == _forward_collectives(plan, model, constrain=False)
    assert with_constraints["all-reduce"] == 1 and with_constraints["all-gather"] == 0
    # The constraints are live under the context: mapped against the layout, they cost collectives.
    against = compile(load({**CONSTRAINED, "rules": {**CONSTRAINED["rules"], "activation_mlp": None}}), model)
    assert sum(_forward_collectives(against, model, constrain=True).values()) > 1
    # Undeclared names have no rule: Flax replicates what they pin, and the plan says why.
    unmapped = {**CONSTRAINED, "rules": {"embed_dim": None, "mlp_dim": "model"}}
    with pytest.raises(ShardspecError, match="the activation name 'activation_batch' has no rule"):
        compile(load(unmapped), model)
    replicated = compile(load({**unmapped, "activations": []}), model)
    assert sum(_forward_collectives(replicated, model, constrain=True).values()) > 1


class WithState(nnx.Module):
    """Parameters beside other variables: dropout's RNG key and count, batch norm's statistics."""

    def __init__(self, rngs: nnx.Rngs):
        self.up = nnx.Linear(
            64, 256, rngs=rngs, kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("hidden", "ffn"))
        )
        self.norm = nnx.BatchNorm(256, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=nnx.Rngs(dropout=1))


def test_rng_and_batch_statistics_are_listed_apart_not_as_parameters():
    with nnx.use_eager_sharding(False):
        model = WithState(nnx.Rngs(0))
    plan = compile(pytree_strategy(policy={"unmatched": "replicate"}), model)
    state = [p.path for p in plan.params if not p.is_param]
    assert any("drop.rngs" in p for p in state) and "norm.mean" in state and "norm.var" in state
    assert "norm.scale" not in state and plan.param("up.kernel").spec == P(None, "model")
    text = explain(plan)
    assert "other variables (not parameters: replicated, never split):" in text
    assert not [w for w in json.loads(explain(plan, format="json"))["warnings"] if "rngs" in w or "norm.mean" in w]
    variables = json.loads(explain(plan, format="json"))["variables"]
    assert {v["path"] for v in variables} == set(state)
    placed = apply(plan, model)  # every variable placed: the others replicated
    assert placed.norm.mean.get_value().sharding.is_fully_replicated


def test_built_in_rules_reach_an_outside_models_parameters_only_by_name():
    """A built-in rule (heads -> model, ...) never splits an outside model's parameter because
    its name happens to match; `rules: {heads: default}` asks for it, and explain says so."""
    params = {"q": jax.ShapeDtypeStruct((64, 8, 16), jnp.float32)}
    axes = {"q": ("hidden", "heads", None)}
    strategy = {"parallelism": {"tensor": 8}, "rules": {"hidden": None}}
    with pytest.raises(ShardspecError, match=r"logical axis 'heads' has no rule .*or default \(the built-in rule\)"):
        compile(load(strategy), params, axes=axes, abstract_mesh=True)
    asked = load({**strategy, "rules": {"hidden": None, "heads": "default"}})
    plan = compile(asked, params, axes=axes, abstract_mesh=True)
    assert plan.param("q").spec == P(None, "model", None)
    assert "rules.heads: default (Megatron attention)" in explain(plan)
    with pytest.raises(ShardspecError, match=r"rules.colour: there is no built-in rule for 'colour'"):
        compile(
            load({**strategy, "rules": {"hidden": None, "heads": "default", "colour": "default"}}), params, axes=axes
        )


class MergedHeads(nnx.Module):
    """Projections stored with heads and head_dim merged, [hidden, heads × head_dim], as one of the
    published libraries stores them; a decoder geometry says 8 query heads and 2 KV heads of 32."""

    def __init__(self):
        init = nnx.initializers.lecun_normal()
        self.q = nnx.Param(init(jax.random.key(0), (256, 8 * 32)), out_sharding=("hidden", "heads"))
        self.k = nnx.Param(init(jax.random.key(1), (256, 2 * 32)), out_sharding=("hidden", "kv_heads"))

    def decoder_geometry(self):
        return shardspec.DecoderGeometry(
            num_layers=1, num_heads=8, num_kv_heads=2, head_dim=32, vocab_size=64, max_seq_len=64
        )

    def hidden_states(self, *args):  # the protocol's shape; never run here
        raise NotImplementedError

    def logits(self, *args):
        raise NotImplementedError


def test_merged_head_dimensions_split_between_heads_once_declared():
    """A [256, 2 × 32] key kernel split 8 ways would hold quarter heads: explain says so, and
    `units:` makes shards keep heads whole (KV heads replicated where they do not split)."""
    with nnx.use_eager_sharding(False):
        model = MergedHeads()
    strategy = {
        "parallelism": {"tensor": 8, "attention_data": 1},
        "rules": {"hidden": None, "heads": "default", "kv_heads": "default"},
    }
    cut = compile(load(strategy), model, abstract_mesh=True)
    assert cut.param("k").spec == P(None, "model")  # 64 columns, 8 a device: a quarter of a head each
    assert any("declare units: {kv_heads: 32}" in n for n in cut.param("k").notes)
    assert any("declare units: {kv_heads: 32}" in w for w in json.loads(explain(cut, format="json"))["warnings"])
    whole = compile(load({**strategy, "units": {"heads": 32, "kv_heads": 32}}), model, abstract_mesh=True)
    assert whole.param("q").spec == P(None, "model") and whole.param("q").notes == ()  # 8 heads, one a device
    assert whole.param("k").spec == P(None, None) and "KV heads replicated over model" in whole.param("k").notes
    with pytest.raises(ShardspecError, match=r"units.heads: q: dim 1 \(heads = 256\) is not a whole number of units"):
        compile(load({**strategy, "units": {"heads": 48}}), model, abstract_mesh=True)


# -- scanned layers ---------------------------------------------------------------------------


class ScannedLlama(nnx.Module):
    """A decoder whose layers are stacked as MaxText's scan_layers stores them: one parameter per
    weight with a leading `layers` axis (nnx.vmap). The adapter serves it a layer at a time."""

    def __init__(self, model, constrain: bool = True):
        from shardspec.models.llama import DecoderLayer

        self.model = model  # embedding, norm and head as they are; its layers replaced below
        self.constrain = constrain  # pin each layer's output by the library's own logical names
        cfg, layers = model.config, list(model.layers)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def stack(rngs):
            return DecoderLayer(cfg, jnp.float32, rngs, type(layers[0].mlp), type(layers[0].self_attn))

        self.layers = stack(nnx.Rngs(0))
        state = nnx.state(self.layers)  # the unscanned model's weights, stacked (metadata kept)
        nnx.replace_by_pure_dict(
            state, jax.tree.map(lambda *w: jnp.stack(w), *map(nnx.to_pure_dict, map(nnx.state, layers)))
        )
        nnx.update(self.layers, state)
        model.layers = nnx.List([])

    def decoder_geometry(self):
        return self.model.decoder_geometry()

    def hidden_states(self, tokens, positions, layout, attend, caches):
        x, (graphdef, state), caches = self.model.embed(tokens, layout), nnx.split(self.layers), list(caches)
        for i in range(len(caches)):  # one layer's slice of every stacked weight
            layer = nnx.merge(graphdef, jax.tree.map(lambda w, i=i: w[i], state))
            x, caches[i] = layer(x, positions, layout, attend, caches[i])
            if self.constrain:
                x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        return x, caches

    def logits(self, x, layout):
        return self.model.logits(x, layout)


BUILT_IN = dict.fromkeys(("vocab", "embed", "heads", "kv_heads", "head_dim", "mlp"), "default")


def _tokens(strategy, model):
    from helpers import SERVING

    requests = [
        {"prompt_token_ids": list(range(5 + 7 * i, 25 + 7 * i)), "max_tokens": 8, "ignore_eos": True} for i in range(4)
    ]
    outputs = shardspec.Engine(compile(load(strategy, overrides=SERVING), model), model).generate(requests)
    return [o.output_token_ids for o in outputs]


def test_a_softmax_scale_folded_into_the_query_kernel_is_declared_and_served():
    """A library that folds 1/sqrt(head_dim) into its query kernel declares softmax_scale=1.0:
    served, it gives the unfolded model's tokens."""
    from shardspec.models.llama import Llama
    from shardspec.models.presets import PRESETS

    class Folded(Llama):
        def decoder_geometry(self):
            return dataclasses.replace(super().decoder_geometry(), softmax_scale=1.0)

    cfg = PRESETS["llama3-tiny"]
    with nnx.use_eager_sharding(False):
        plain, folded = Llama(cfg, rngs=nnx.Rngs(3)), Folded(cfg, rngs=nnx.Rngs(3))
        undeclared = Llama(cfg, rngs=nnx.Rngs(3))  # the folded weights without the declaration
    for layer in [*folded.layers, *undeclared.layers]:
        layer.self_attn.q_proj.set_value(layer.self_attn.q_proj.get_value() * cfg.head_dim**-0.5)
    strategy = {"parallelism": {"tensor": 8}, "rules": BUILT_IN}
    want = _tokens(strategy, plain)
    assert _tokens(strategy, folded) == want
    assert _tokens(strategy, undeclared) != want  # scaled twice


SCANNED = {
    "parallelism": {"tensor": 8},  # attention_data auto: 4 (2 KV heads)
    "rules": {
        **BUILT_IN,
        "layers": None,
        "activation_batch": ["data", "attn_dp"],
        "activation_length": None,
        "activation_embed": None,
    },
    "activations": ["activation_batch", "activation_length", "activation_embed"],
}


def test_scanned_layers_are_served_with_the_unscanned_models_tokens():
    """Stacked layers and the library's own logical constraints between them, mapped to the
    plan's token layout: the served step's collectives equal the unscanned model's, and so
    do its greedy tokens."""
    from shardspec.models.llama import Llama
    from shardspec.models.presets import PRESETS

    from helpers import SERVING

    with nnx.use_eager_sharding(False):  # logical axes stay metadata for the plan
        plain = Llama(PRESETS["llama3-tiny"], rngs=nnx.Rngs(3))
        scanned = ScannedLlama(Llama(PRESETS["llama3-tiny"], rngs=nnx.Rngs(3)))
        unconstrained = ScannedLlama(Llama(PRESETS["llama3-tiny"], rngs=nnx.Rngs(3)), constrain=False)
    plan = compile(load(SCANNED, overrides=SERVING), scanned)
    assert plan.param("layers.mlp.gate_proj").spec == P(None, None, ("attn_dp", "model"))
    strategy = {"parallelism": SCANNED["parallelism"], "rules": BUILT_IN}
    want = shardspec.hlo_report(compile(load(strategy, overrides=SERVING), plain))["collectives"]
    assert shardspec.hlo_report(plan)["collectives"] == want
    assert shardspec.hlo_report(compile(plan.strategy, unconstrained))["collectives"] == want
    against = load({**SCANNED, "rules": {**SCANNED["rules"], "activation_batch": None}}, overrides=SERVING)
    assert sum(shardspec.hlo_report(compile(against, scanned))["collectives"].values()) > sum(want.values())
    requests = [
        {"prompt_token_ids": list(range(5 + 7 * i, 25 + 7 * i)), "max_tokens": 8, "ignore_eos": True} for i in range(4)
    ]
    got = shardspec.Engine(plan, scanned).generate(requests)
    reference = shardspec.Engine(compile(load(strategy, overrides=SERVING), plain), plain).generate(requests)
    assert [o.output_token_ids for o in got] == [o.output_token_ids for o in reference]


class OwnMeshNames(nnx.Module):
    """Like EasyDeL's layers: specs built from the library's own mesh axis names (dp, fsdp, tp, sp)."""

    def __init__(self, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.up = nnx.Param(init(rngs.params(), (64, 256)), out_sharding=("hidden", "ffn"))
        self.down = nnx.Param(init(rngs.params(), (256, 64)), out_sharding=("ffn", "hidden"))

    def __call__(self, x):
        pin = jax.lax.with_sharding_constraint
        x = pin(x, P(("dp", "fsdp"), None))
        h = pin(jax.nn.relu(x @ self.up.get_value()), P(("dp", "fsdp"), "tp"))
        return pin(h @ self.down.get_value(), P(("dp", "fsdp"), None))


def test_a_librarys_own_mesh_axis_names_resolve_through_aliases():
    """mesh_aliases: under plan.context() the mesh carries the library's names (tp = model,
    dp = data, fsdp and sp size 1): its specs place the plan's devices, adding no collective."""
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: OwnMeshNames(nnx.Rngs(0)))
    strategy = {
        "parallelism": {"data": 2, "tensor": 4, "attention_data": 1},
        "rules": {"hidden": None, "ffn": "model"},
        "mesh_aliases": {"dp": "data", "tp": "model", "fsdp": None, "sp": None},
    }
    plan = compile(load(strategy), model)
    mesh, names = plan.aliased_mesh()
    assert dict(mesh.shape) == {"dp": 2, "tp": 4, "fsdp": 1, "sp": 1, "attn_dp": 1, "expert": 1}
    assert names["model"] == "tp" and (mesh.devices.reshape(2, 4) == plan.mesh.devices.reshape(2, 4)).all()
    graphdef, state = nnx.split(model)
    params = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state, plan.param_shardings()
    )
    x = jax.ShapeDtypeStruct((16, 64), jnp.float32, sharding=plan.sharding(P("data")))
    with plan.context():
        report = shardspec.hlo_report(plan, lambda p, x: nnx.merge(graphdef, p)(x), params, x)
    assert report["collectives"] == {**dict.fromkeys(report["collectives"], 0), "all-reduce": 1}
    # An alias of several plan axes: a rule the strategy wrote over part of it cannot be said there.
    partial = {**strategy, "parallelism": {"data": 2, "tensor": 4, "attention_data": 2}}
    partial |= {"rules": {**strategy["rules"], "mlp_batch": "data"}, "mesh_aliases": {"dp": ["data", "attn_dp"]}}
    with pytest.raises(ShardspecError, match=r"rules.mlp_batch splits over data, but mesh_aliases.dp stands for"):
        with compile(load(partial), model).context():
            pass
    with pytest.raises(ShardspecError, match=r"plan.context\(\) needs a plan compiled on devices"):
        with compile(load(strategy), model, abstract_mesh=True).context():
            pass
    with pytest.raises(ShardspecError, match="mesh_aliases.tp: mesh axis 'model' is already 'mp'"):
        load({**strategy, "mesh_aliases": {"mp": "model", "tp": "model"}})


# -- all of one library's patterns at once, served --------------------------------------------


def _pin(x, spec):
    """The library's own constraint: a bare PartitionSpec in its mesh axis names."""
    return jax.lax.with_sharding_constraint(x, spec)


LIBRARY_BATCH = ("dp", "fsdp")


class MergedAttention(nnx.Module):
    """Like the library without logical annotations: q/k/v/o kernels stored with heads and
    head_dim merged ([hidden, heads × head_dim]), parameters unannotated, and its forward
    pinning activations by its own mesh axis names (dp, fsdp, tp); RNG variables beside them."""

    def __init__(self, cfg, dtype, rngs):
        from shardspec.models.llama import Attention

        base = Attention(cfg, dtype, rngs)  # its weights, merged: the same function
        E, H, K, D = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nnx.Param(base.q_proj.get_value().reshape(E, H * D))
        self.k_proj = nnx.Param(base.k_proj.get_value().reshape(E, K * D))
        self.v_proj = nnx.Param(base.v_proj.get_value().reshape(E, K * D))
        self.o_proj = nnx.Param(base.o_proj.get_value().reshape(H * D, E))
        self.rope_freqs, self.head_dim, self.constrain = base.rope_freqs, D, cfg.constrain
        self.dropout = nnx.Dropout(0.1, rngs=nnx.Rngs(dropout=1))  # for training: its RNG key and count

    def __call__(self, x, positions, layout, attend, cache):
        from shardspec.models.llama import rope

        pin = _pin if self.constrain else (lambda y, _: y)
        B, T, _ = x.shape
        x = pin(x, P(LIBRARY_BATCH, None, None))
        q = pin(x @ self.q_proj[...], P(LIBRARY_BATCH, None, "tp")).reshape(B, T, -1, self.head_dim)
        k, v = ((x @ w[...]).reshape(B, T, -1, self.head_dim) for w in (self.k_proj, self.v_proj))
        q, k = (rope(y, positions, self.rope_freqs) for y in (q, k))
        attn, cache = attend(*layout.attention_inputs(q, k, v), positions, cache)
        out = pin(attn.reshape(B, T, -1) @ self.o_proj[...], P(LIBRARY_BATCH, None, None))
        return out, cache


def merged_llama(constrain: bool, seed: int = 3):
    """llama3-tiny with MergedAttention and every parameter's annotation dropped."""
    from shardspec.models.llama import Llama
    from shardspec.models.presets import PRESETS

    @dataclasses.dataclass(frozen=True)
    class Config(type(PRESETS["llama3-tiny"])):
        constrain: bool = True

    class MergedLlama(Llama):
        def attention_for(self, layer):
            return MergedAttention

    cfg = Config(**dataclasses.asdict(PRESETS["llama3-tiny"]), constrain=constrain)
    with nnx.use_eager_sharding(False):
        model = MergedLlama(cfg, rngs=nnx.Rngs(seed))
    for _, module in nnx.iter_modules(model):
        for name, value in list(vars(module).items()):
            if isinstance(value, nnx.Param):
                setattr(module, name, nnx.Param(value.get_value()))
    return model


MERGED = {
    "parallelism": {"tensor": 8, "attention_data": 1},
    "rules": BUILT_IN,
    "params": [
        {"match": r"embed_tokens$", "axes": ["vocab", "embed"]},
        {"match": r"lm_head$", "axes": ["embed", "vocab"]},
        {"match": r"norm\.scale$", "axes": ["embed"]},
        {"match": r"q_proj$", "axes": ["embed", "heads"]},
        {"match": r"[kv]_proj$", "axes": ["embed", "kv_heads"]},
        {"match": r"o_proj$", "axes": ["heads", "embed"]},
        {"match": r"(gate|up)_proj$", "axes": ["embed", "mlp"]},
        {"match": r"down_proj$", "axes": ["mlp", "embed"]},
    ],
    "units": {"heads": 16, "kv_heads": 16},
    "mesh_aliases": {"dp": "data", "fsdp": None, "tp": "model"},
}


def test_a_librarys_merged_unannotated_constrained_decoder_is_served_as_it_is_written():
    """No annotations (params: names them), merged heads (units: keeps them whole), its own
    mesh-name constraints (mesh_aliases:), RNG variables (listed apart): compile, explain, the
    served step's collectives,
    apply and Engine, each against the same weights in shardspec's own Llama."""
    from shardspec.models.llama import Llama
    from shardspec.models.presets import PRESETS

    from helpers import SERVING

    model = merged_llama(constrain=True)
    with pytest.raises(ShardspecError, match="carries no logical axes"):
        compile(load({k: v for k, v in MERGED.items() if k != "params"}), model, abstract_mesh=True)
    plan = compile(load(MERGED, overrides=SERVING), model)
    assert plan.param("layers.0.self_attn.q_proj").spec == P(None, "model")  # one whole head a device
    assert plan.param("layers.0.self_attn.k_proj").spec == P(None, None)  # 2 KV heads: replicated
    explained = json.loads(explain(plan, format="json"))
    assert not [w for w in explained["warnings"] if "units" in w]
    assert {v["path"] for v in explained["variables"]} >= {"layers.0.self_attn.dropout.rngs.key"}
    with nnx.use_eager_sharding(False):
        plain = Llama(PRESETS["llama3-tiny"], rngs=nnx.Rngs(3))  # the same weights, heads apart
    plain_plan = compile(load({"parallelism": MERGED["parallelism"], "rules": BUILT_IN}, overrides=SERVING), plain)
    want = shardspec.hlo_report(plain_plan)["collectives"]
    assert shardspec.hlo_report(plan)["collectives"] == want
    assert shardspec.hlo_report(compile(plan.strategy, merged_llama(constrain=False)))["collectives"] == want
    cut = compile(load({k: v for k, v in MERGED.items() if k != "units"}, overrides=SERVING), model)
    assert sum(shardspec.hlo_report(cut)["collectives"].values()) > sum(want.values())  # quarter heads

    tokens = jnp.arange(2 * 12).reshape(2, 12) % 500
    with plan.context():
        placed = apply(plan, model)(tokens)
    np.testing.assert_allclose(np.asarray(placed), np.asarray(plain(tokens)), atol=2e-5)
    requests = [
        {"prompt_token_ids": list(range(5 + 7 * i, 25 + 7 * i)), "max_tokens": 8, "ignore_eos": True} for i in range(4)
    ]
    got = shardspec.Engine(plan, model).generate(requests)
    reference = shardspec.Engine(plain_plan, plain).generate(requests)
    assert [o.output_token_ids for o in got] == [o.output_token_ids for o in reference]
