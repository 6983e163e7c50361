"""The examples are tests: an outside NNX model served through the protocol, a Linen model applied."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from shardspec import Engine, ShardspecError, apply, compile, explain, load

from conftest import ROOT
from helpers import example

gpt2 = example("gpt2_nnx")
linen_mlp = example("linen_mlp")

# The same model file under the three kinds of parallelism.
GPT2_LAYOUTS = {
    "tensor": {"devices": "4", "parallelism.tensor": "4", "parallelism.attention_data": "1"},
    "model-dp": {"parallelism.data": "2", "parallelism.tensor": "4", "parallelism.attention_data": "1"},
    "attention-dp": {},  # the file: tensor 8 = attn_dp 2 × model 4
}
PROMPTS = [[7], [3, 1, 4, 1, 5], list(range(40, 60)), [100, 200, 300] * 7]
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def model():
    return gpt2.build(seed=0)


@pytest.fixture(scope="module")
def own_greedy(model):
    return [gpt2.greedy(model, p, MAX_TOKENS) for p in PROMPTS]


def plan_for(layout, model):
    return compile(load(ROOT / "examples" / "gpt2.yaml", overrides=GPT2_LAYOUTS[layout]), model)


@pytest.mark.parametrize("layout", list(GPT2_LAYOUTS))
def test_gpt2_forward_under_the_plan_equals_the_unsharded_forward(layout, model):
    plan = plan_for(layout, model)
    assert "h.0.mlp.fc" in explain(plan)
    placed = apply(plan, model)  # a module comes back, each device holding its shard
    fc = nnx.state(placed)["h"][0]["mlp"]["fc"].get_value()
    assert fc.sharding.spec == plan.param("h.0.mlp.fc").spec
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 384, (8, 24)), jnp.int32)
    graphdef, state = nnx.split(placed)
    tokens_sharding = plan.sharding(P(plan.token_axes))
    forward = jax.jit(
        lambda s, t: nnx.merge(graphdef, s)(t, layout=plan.layout),
        in_shardings=(plan.param_shardings(), tokens_sharding),
    )
    got, want = np.asarray(forward(state, tokens)), np.asarray(jax.jit(lambda m, t: m(t))(model, tokens))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert (got.argmax(-1) == want.argmax(-1)).all()


@pytest.mark.parametrize("layout", list(GPT2_LAYOUTS))
def test_gpt2_served_by_the_engine_gives_its_own_greedy_tokens(layout, model, own_greedy):
    engine = Engine(plan_for(layout, model), model)
    outputs = engine.generate([{"prompt_token_ids": p, "max_tokens": MAX_TOKENS, "ignore_eos": True} for p in PROMPTS])
    assert [list(o.output_token_ids) for o in outputs] == own_greedy
    assert len({tuple(t) for t in own_greedy}) == len(PROMPTS)  # the prompts really lead apart


def test_a_plan_compiled_from_the_library_model_serves_through_its_adapter(model, own_greedy):
    """The plan of the library's model, which declares no geometry (here its bare nnx.State, and
    attention_data 2 set in the file), serves through an adapter with the same parameters."""
    library = plan_for("attention-dp", nnx.state(model))
    assert library.kv_cache is None
    engine = Engine(library, model)
    assert engine.plan.kv_cache is not None and engine.plan.attention_data == library.attention_data
    outputs = engine.generate([{"prompt_token_ids": p, "max_tokens": MAX_TOKENS, "ignore_eos": True} for p in PROMPTS])
    assert [list(o.output_token_ids) for o in outputs] == own_greedy
    other = gpt2.build(gpt2.GPT2Config(ffn=128))
    with pytest.raises(ShardspecError, match=r"the adapter's parameter 'h.0.mlp.fc' is \(64, 128\)"):
        Engine(library, other)


def test_serve_takes_the_model_its_factory_makes(own_greedy, tmp_path, monkeypatch):
    """`shardspec serve --model examples.gpt2_nnx:build`: a real server process serves the
    module the factory returns, with the library's own greedy tokens."""
    import httpx

    from helpers import serving

    monkeypatch.chdir(ROOT)  # the factory's module is found from the current directory
    args = ["serve", str(ROOT / "examples" / "gpt2.yaml"), "--model", "examples.gpt2_nnx:build"]
    with serving([*args, "--served-model-name", "gpt2"], tmp_path / "server.log") as (base, _):
        body = {"model": "gpt2", "prompt": PROMPTS, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
        response = httpx.post(base + "/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert [c["token_ids"] for c in response.json()["choices"]] == own_greedy


def test_the_engine_checks_the_model_against_the_plan(model):
    plan = plan_for("attention-dp", model)
    with pytest.raises(
        ShardspecError,
        match=r"parameter 'h.0.mlp.fc' has shape \(64, 128\); the plan has "
        r"\(64, 256\)",
    ):
        Engine(plan, gpt2.build(gpt2.GPT2Config(ffn=128)))
    with pytest.raises(ShardspecError, match="decoder geometry .* differs from the plan's"):
        Engine(plan, gpt2.build(gpt2.GPT2Config(layers=3)))
    with pytest.raises(ShardspecError, match="Engine cannot serve a dict"):
        Engine(plan, {"w": 1})
    with pytest.raises(ShardspecError, match="apply\\(\\) needs the parameters of GPT2"):
        Engine(plan)


def test_check_compares_an_outside_model_with_its_own_unsharded_forward(model):
    from shardspec.check import check

    result = check(plan_for("attention-dp", model), model)
    assert result.passed and result.tokens_equal == result.tokens_total, result.summary()
    assert result.max_abs_diff < 1e-5
    with pytest.raises(ShardspecError, match=r"check\(\) needs the model GPT2 itself"):
        check(plan_for("attention-dp", model))


def test_a_model_without_geometry_is_not_servable():
    variables = linen_mlp.abstract(linen_mlp.ResidualMLP())
    plan = compile(load(ROOT / "examples" / "linen_mlp.yaml"), variables)
    with pytest.raises(ShardspecError, match="declares no decoder geometry, so it has no KV cache"):
        Engine(plan)


def test_linen_model_applied_under_the_plan_equals_its_unsharded_apply():
    model = linen_mlp.ResidualMLP()
    plan = compile(load(ROOT / "examples" / "linen_mlp.yaml"), linen_mlp.abstract(model))
    variables = linen_mlp.init(model, seed=3)
    placed = apply(plan, variables)
    kernel = placed["params"]["Dense_0"]["kernel"]
    assert kernel.names == ("hidden", "ffn")  # boxes kept, values placed
    assert kernel.value.addressable_shards[0].data.shape == (64, 64)  # ffn 256 over model 4
    tokens = jnp.arange(64, dtype=jnp.int32).reshape(8, 8) % 256
    tokens_sharding = plan.sharding(P("data"))
    forward = jax.jit(model.apply, in_shardings=(plan.param_shardings(), tokens_sharding))
    got, want = np.asarray(forward(placed, tokens)), np.asarray(model.apply(variables, tokens))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("script", ["linen_mlp.py", "gpt2_nnx.py"])
def test_example_scripts_run(script):
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    if script == "gpt2_nnx.py":
        served, own = [line.split(":", 1)[1].strip() for line in done.stdout.splitlines()[-2:]]
        assert served.strip("()[]").replace(",", " ").split() == own.strip("()[]").replace(",", " ").split()
