"""The compiled serving step's collectives (`explain --hlo`) and the `expect:` budget.

llama3-tiny: 2 layers, embed E = 128, vocab V = 512, float32. Token buckets run
from 8 to 512 a rank: decode = 8 tokens a rank, prefill = 512. Bytes are
result bytes (an all-gather's gathered array, an all-reduce's summed one).
"""

import dataclasses
import functools
import json

import pytest
from typer.testing import CliRunner

from shardspec import compile, explain, load
from shardspec.cli.main import app
from shardspec.errors import ShardspecError
from shardspec.explanation import hlo_lines
from shardspec.hlo import KINDS, batch_structs, budget_problems, budget_summary, collectives, hlo_report
from shardspec.runtime.packer import pack
from shardspec.runtime.schedule import StepSchedule
from shardspec.runtime.step import ROW_FIELDS, TOKEN_FIELDS, device_batch

from conftest import ROOT

E, V, L = 128, 512, 2
F32 = 4


def _path(name):
    return ROOT / "strategies" / f"{name}.yaml"


@functools.cache
def report(name):
    return hlo_report(compile(load(_path(name))))


def counts(**nonzero):
    return {k: nonzero.get(k.replace("-", "_"), 0) for k in KINDS}


def steps(r):
    return {"decode": r, "prefill": r["prefill"]}


def test_parser_counts_async_pairs_once_and_sums_tuple_results():
    text = """
%wrapped_all_to_all (p: f32[8,4]) -> f32[8,4] {
  ROOT %all-to-all = f32[8,4]{1,0} all-to-all(%p), channel_id=3, dimensions={0}
}
ENTRY %main {
  %all-reduce = (f32[16,128]{1,0}, bf16[8]{0}) all-reduce(%a, %b), channel_id=1, to_apply=%add
  %all-gather-start = (f32[8,128]{1,0}, f32[64,128]{1,0}) all-gather-start(%c), channel_id=2, dimensions={0}
  %all-gather-done = f32[64,128]{1,0} all-gather-done(%all-gather-start)
  %fusion = f32[64,128]{1,0} fusion(%all-gather-done, %all-reduce), kind=kLoop, calls=%fused
  %start = ((f32[8,4]{1,0}), f32[8,4]{1,0}) async-start(%d), calls=%wrapped_all_to_all
  %collective-permute-start = (pred[4]{0}, pred[4]{0}, u32[], u32[]) collective-permute-start(%e), channel_id=4
  ROOT %collective-permute-done = pred[4]{0} collective-permute-done(%collective-permute-start)
}
"""
    n, nbytes = collectives(text)
    assert n == counts(all_reduce=1, all_gather=1, all_to_all=1, collective_permute=1)
    assert nbytes == counts(
        all_reduce=16 * 128 * 4 + 8 * 2, all_gather=64 * 128 * 4, all_to_all=8 * 4 * 4, collective_permute=4
    )


def test_batch_structs_are_what_the_packer_makes():
    plan = compile(load(_path("attention_dp")), abstract_mesh=True)
    packed = pack(StepSchedule.empty(0), plan.runtime)  # no work: the smallest bucket
    structs = batch_structs(plan, packed.token_stride)
    assert {f: (s.shape, s.dtype) for f, s in structs.items()} == {
        f: (x.shape, x.dtype) for f, x in device_batch(packed).items()
    }
    assert set(TOKEN_FIELDS + ROW_FIELDS) < set(structs)  # and the engine's logprobs wanted


def test_the_report_needs_devices():
    with pytest.raises(ShardspecError, match="needs a plan compiled on devices"):
        hlo_report(compile(load(_path("tp")), abstract_mesh=True))


def test_model_wise_dp_adds_no_collective_to_the_model():
    r = report("dp")
    for name, step in steps(r).items():
        assert step["per_layer"] == counts(), name
        # Nothing at all: sampled ids stay on their rank (the host reads them there).
        assert step["collectives"] == counts(), name
        assert step["bytes"] == counts(), name


def test_plain_tp_is_megatron_two_all_reduces_per_layer():
    r = report("tp")
    for name, step in steps(r).items():
        T, rows = step["tokens"], min(step["tokens_per_rank"], 64)
        assert step["per_layer"] == counts(all_reduce=2), name  # after o_proj and after down_proj
        assert step["per_layer_bytes"] == counts(all_reduce=2 * T * E * F32), name
        # Outside the layers: the vocab-sharded embedding lookup (one all-reduce) and
        # the logits' vocab gathered once for the sampler (one all-gather).
        assert step["collectives"] == counts(all_reduce=1 + 2 * L, all_gather=1), name
        assert step["bytes"] == counts(all_reduce=(1 + 2 * L) * T * E * F32, all_gather=rows * V * F32), name


def test_attention_dp_adds_one_gather_per_layer_into_the_ffn_layout():
    r = report("attention_dp")  # attn_dp 4 × model 2
    for name, step in steps(r).items():
        T, S = step["tokens"], step["tokens_per_rank"]
        # o_proj all-reduces over model (a rank's S tokens), down_proj over all 8
        # devices (all T tokens); the FFN's tokens are gathered over attn_dp. Back to
        # the attention layout is a local slice: no collective.
        assert step["per_layer"] == counts(all_reduce=2, all_gather=1), name
        assert step["per_layer_bytes"] == counts(all_reduce=(S + T) * E * F32, all_gather=T * E * F32), name
    # Outside the layers: the embedding lookup (tokens gathered over attn_dp, then
    # an all-reduce), the last tokens gathered into the FFN layout for the logits,
    # and the vocab gathered for the sampler.
    assert r["collectives"] == counts(all_reduce=1 + 2 * L, all_gather=3 + L)
    # With 2,048 tokens GSPMD moves the embedding table instead of the tokens
    # (a collective-permute and an all-gather of table rows): its cost model's choice.
    assert r["prefill"]["collectives"] == counts(all_reduce=1 + 2 * L, all_gather=3 + L, collective_permute=1)


def test_per_layer_holds_for_a_deeper_model():
    plan = compile(load(_path("tp")))
    deeper = compile(plan.strategy, dataclasses.replace(plan.model.config, num_layers=3))
    r = hlo_report(deeper)
    assert r["per_layer"] == report("tp")["per_layer"] == counts(all_reduce=2)
    assert r["collectives"] == counts(all_reduce=1 + 2 * 3, all_gather=1)


def test_a_shape_only_model_is_measured_without_allocating_it():
    r = hlo_report(compile(load(_path("tp")), "llama3-8b"))  # 32 layers, 32 GB of float32 weights
    assert r["per_layer"] == counts(all_reduce=2)
    assert r["collectives"] == counts(all_reduce=1 + 2 * 32, all_gather=1)
    assert r["memory"]["argument"] > 3.5 * 2**30  # its eighth of the weights, on paper only


def test_memory_per_device_and_json_keys():
    plan = compile(load(_path("tp")))
    out = json.loads(explain(plan, format="json", hlo=report("tp")))["hlo"]
    assert {"collectives", "bytes", "per_layer", "per_layer_bytes", "memory", "prefill"} <= set(out)
    assert set(out["prefill"]) == set(out) - {"prefill"}
    assert list(out["collectives"]) == list(KINDS)
    assert {"argument", "output", "temp"} <= set(out["memory"])
    assert out["prefill"]["memory"]["temp"] > out["memory"]["temp"] > 0  # 512 tokens a rank, not 8


def test_text_table():
    lines = hlo_lines(report("tp"))
    assert lines[2:7] == [
        "  step     tokens  collective  count      bytes  per layer",
        "  decode   1×8     all-reduce      5   20.0 KiB          2",
        "  decode   1×8     all-gather      1   16.0 KiB          0",
        "  prefill  1×512   all-reduce      5    1.2 MiB          2",
        "  prefill  1×512   all-gather      1  128.0 KiB          0",
    ]
    assert lines[8] == "compiled memory per device:" and lines[9].startswith("  decode   argument ")


BUDGET = """model: llama3-tiny
parallelism: {{tensor: 8, attention_data: 1}}
expect:
  per_layer:
    all-reduce: {per_layer}
  total: {{all-gather: 1}}
"""


def budget_file(tmp_path, per_layer):
    path = tmp_path / "tp_budget.yaml"
    path.write_text(BUDGET.format(per_layer=per_layer))
    return path


def test_a_blown_budget_names_the_line_the_collective_the_steps_and_the_counts(tmp_path):
    path = budget_file(tmp_path, 0)
    problems = budget_problems(compile(load(path)), report("tp"))
    assert [p.format() for p in problems] == [
        f"error: {path}:5: expect.per_layer.all-reduce: all-reduce per decoder layer: 2 in the decode step "
        "and 2 in the prefill step, over the budget of 0 (per layer = what the decoder layers add to "
        "the step, ÷ layers; raise the budget or change the sharding; `shardspec explain --hlo` shows every count)"
    ]


def test_a_generous_budget_passes(tmp_path):
    plan = compile(load(budget_file(tmp_path, 2)))
    assert budget_problems(plan, report("tp")) == []
    assert budget_summary(plan, report("tp")) == (
        "collectives within budget (decode and prefill steps): "
        "all-reduce per decoder layer 2 ≤ 2; all-gather in a step 1 ≤ 1"
    )


runner = CliRunner()


def test_cli_explain_hlo_json():
    result = runner.invoke(app, ["explain", str(_path("dp")), "--hlo", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["hlo"]["per_layer"] == counts()


def test_cli_explain_hlo_exits_2_on_a_blown_budget_after_printing_the_table(tmp_path):
    path = budget_file(tmp_path, 1)
    result = runner.invoke(app, ["explain", str(path), "--hlo"])
    assert result.exit_code == 2, result.output
    assert "  decode   1×8     all-reduce      5   20.0 KiB          2" in result.stdout
    assert result.stderr.startswith(
        f"error: {path}:5: expect.per_layer.all-reduce: all-reduce per decoder "
        "layer: 2 in the decode step and 2 in the prefill step, over the budget of 1"
    )
    assert "Traceback" not in result.output


def test_cli_check_holds_the_strategy_to_its_budget(tmp_path):
    result = runner.invoke(app, ["check", str(budget_file(tmp_path, 0))])
    assert result.exit_code == 2, result.output
    assert "expect.per_layer.all-reduce" in result.stderr and "PASS" not in result.stdout


def test_flops_are_xla_counts_beside_the_analytic_ideal():
    from shardspec.flops import step_flops, touched_per_token
    from shardspec.models.presets import PRESETS

    r = report("tp")
    for step in steps(r).values():
        assert step["flops"] > 0 and step["flops_ideal"] > 0
        assert step["flops_over_ideal"] == round(step["flops"] / step["flops_ideal"], 3)
    # The ideal by hand for llama3-tiny: per token q, k, v, o (128·(8+4)·16 + 8·16·128) and SwiGLU 3·128·256.
    cfg = PRESETS["llama3-tiny"]
    assert touched_per_token(cfg) == 2 * (128 * 12 * 16 + 8 * 16 * 128 + 3 * 128 * 256)
    # XLA counts the attention loop once: one tile of 64 tokens reading one block of 64 positions.
    assert r["prefill"]["flops_ideal"] == step_flops(cfg, 512, 64, 64, attending=64) / 8
    assert 1.0 <= r["prefill"]["flops_over_ideal"] < 2.0  # XLA does what the work needs, plus the sampler
    assert "FLOPs per device" in explain(compile(load(_path("tp"))), hlo=r)


def test_an_outside_servable_models_step_is_measured_and_budgeted(tmp_path):
    """The served step of a model shardspec did not write (examples/gpt2_nnx.py): counted as
    shardspec's own are; per layer is the step ÷ layers, and there is no analytic ideal."""
    from helpers import example

    gpt2 = example("gpt2_nnx")
    plan = compile(load(ROOT / "examples" / "gpt2.yaml"), gpt2.build())
    r = hlo_report(plan)
    layers = plan.model.geometry.num_layers
    for name, step in steps(r).items():
        assert step["per_layer_basis"] == "step" and step["flops_ideal"] is None, name
        assert step["collectives"]["all-reduce"] > 0, name  # a tensor-parallel model reduces its projections
        assert step["per_layer"]["all-reduce"] == pytest.approx(step["collectives"]["all-reduce"] / layers, abs=0.01)
    text = "\n".join(hlo_lines(r))
    assert "the whole step ÷ layers" in text and "no analytic ideal for an outside model" in text
    tight = dataclasses.replace(plan.strategy, expect={"total": {"all-reduce": 0}})
    assert budget_problems(dataclasses.replace(plan, strategy=tight), r)


def test_any_program_under_the_plan_is_measured():
    """hlo_report(plan, fn, *args): a Megatron MLP forward reduces once; the same forward with its own
    constraint gathering the hidden activation adds the gather."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    shapes = {"up": jax.ShapeDtypeStruct((64, 256), jnp.float32), "down": jax.ShapeDtypeStruct((256, 64), jnp.float32)}
    strategy = load({"parallelism": {"tensor": 8}, "rules": {"hidden": None, "ffn": "model"}})
    plan = compile(strategy, shapes, axes={"up": ("hidden", "ffn"), "down": ("ffn", "hidden")})
    params = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, plan.param_shardings()
    )
    x = jax.ShapeDtypeStruct((8, 64), jnp.float32, sharding=plan.sharding(P()))

    def forward(p, x, gather=False):
        h = jax.nn.relu(x @ p["up"])
        if gather:  # the library's own constraint: the hidden activation replicated
            h = jax.lax.with_sharding_constraint(h, P())
        return h @ p["down"]

    plain = hlo_report(plan, forward, params, x)
    assert plain["collectives"] == counts(all_reduce=1) and plain["flops"] > 0
    gathered = hlo_report(plan, jax.jit(functools.partial(forward, gather=True)), params, x)
    assert gathered["collectives"]["all-gather"] == 1


STRATEGY_FILES = sorted(p.stem for p in (ROOT / "strategies").glob("*.yaml"))


@pytest.mark.parametrize("name", STRATEGY_FILES)
def test_suggests_collective_model_is_what_the_step_compiles_to(name):
    """`shardspec suggest` times the collectives it derives from the mesh alone: per layer,
    each kind's count and bytes equal the compiled step's, decode and prefill."""
    from shardspec.suggest.collectives import per_layer

    r = report(name)
    plan = compile(load(_path(name)), abstract_mesh=True)
    for step_name, step in steps(r).items():
        predicted = per_layer(plan, step["tokens_per_rank"])
        assert predicted == (step["per_layer"], step["per_layer_bytes"]), (name, step_name)
