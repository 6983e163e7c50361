"""`shardspec suggest`: the catalog, the roofline (checked against arithmetic written out
here), the memory it predicts (explain's), the search and the command line."""

import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from shardspec import compile, explain, load
from shardspec.cli.main import app
from shardspec.errors import ShardspecError
from shardspec.suggest import device_kinds, parse_devices, suggest, workload
from shardspec.suggest.catalog import DeviceKind
from shardspec.suggest.roofline import memory, step_cost

from conftest import ROOT

KINDS = device_kinds()


def run(*args):
    return CliRunner().invoke(app, list(args))


def test_the_catalog_has_every_kind_the_issue_names_with_its_numbers():
    assert {"h100", "h200", "b200", "tpu-v5e", "tpu-v5p", "tpu-v6e"} <= set(KINDS)
    h200 = KINDS["h200"]
    assert (h200.hbm_bytes, h200.hbm_bandwidth, h200.peak("bfloat16")) == (141e9, 4.8e12, 989e12)
    assert h200.peak("float16") == h200.peak("bfloat16")
    with pytest.raises(ShardspecError, match=r"gives tpu-v5e no float32 peak.*tflops.float32"):
        KINDS["tpu-v5e"].peak("float32")


def test_a_device_spec_file_adds_kinds_and_a_bad_one_is_located(tmp_path):
    spec = tmp_path / "mine.yaml"
    spec.write_text(
        "mi300x:\n  hbm_gb: 192\n  hbm_bandwidth_gb_s: 5300\n  tflops: {bfloat16: 1307}\n"
        "  devices_per_host: 8\n  links: {inside_host: 64, across_hosts: 50, latency_us: 10}\n"
    )
    kind, n = parse_devices("mi300x:8", device_kinds(spec))
    assert (kind.hbm_bytes, n) == (192e9, 8)
    spec.write_text("h200:\n  hbm_gb: -1\n")
    with pytest.raises(ShardspecError) as e:
        device_kinds(spec)
    assert f"{spec}:2: h200.hbm_gb: -1 is not above 0" in str(e.value)
    with pytest.raises(ShardspecError, match=r"unknown device kind 'h20' \(did you mean 'h200'\?\)"):
        parse_devices("h20:8", KINDS)
    with pytest.raises(ShardspecError, match="is not KIND:N"):
        parse_devices("h200", KINDS)


ONE_H100 = DeviceKind("test", "test", 80e9, 3.35e12, {"bfloat16": 989e12}, 8, 450e9, 50e9, 10e-6)


def test_a_dense_decode_step_is_the_roofline_written_out():
    """llama3-8b, bfloat16, 2 devices (tensor 2), 32 requests at context 2048."""
    plan = compile(
        load({"model": "llama3-8b", "devices": 2, "parallelism": {"tensor": 2}, "runtime": {"dtype": "bfloat16"}}),
        abstract_mesh=True,
    )
    E, layers, V, H, KV, D, F = 4096, 32, 128256, 32, 8, 128, 14336
    attention_params = E * (H + 2 * KV) * D + H * D * E
    touched = layers * (attention_params + 3 * E * F)
    flops = 2 * touched * 32 + 2 * E * V * 32 + 2 * H * (D + D) * 2048 * layers * 32
    split = 2 * (touched + 2 * V * E) / 2  # bf16: the layers' matmuls, embedding and head, halved
    norms = 2 * (2 * layers + 1) * E  # replicated
    kv_read = 32 * 2048 * layers * 2 * (KV // 2) * D * 2  # each device reads half the KV heads
    hbm = split + norms + kv_read
    # Tensor parallel: o_proj and down_proj all-reduce [32, E] a layer; the embedding
    # all-reduces [32, E] and the sampler gathers [32, V] float32 logits. A ring of 2: 2(n-1)/n = 1.
    reduce = 2 * layers + 1
    collectives = reduce * (10e-6 + 32 * E * 2 / 450e9) + (10e-6 + 0.5 * 32 * V * 4 / 450e9)
    want = max(flops / 2 / 989e12, hbm / 3.35e12) + collectives
    cost = step_cost(plan, ONE_H100, 32, 32, 2048, "bfloat16")
    assert cost.flops == pytest.approx(flops / 2)
    assert cost.hbm_bytes == pytest.approx(hbm, rel=1e-6)
    assert cost.seconds == pytest.approx(want, rel=1e-9)
    assert cost.bound == "HBM"


def test_a_moe_decode_step_reads_only_the_experts_its_tokens_reach():
    """mixtral-8x7b, bfloat16, expert 8 (one expert a device), 16 requests at context 1024:
    a device reads its expert with the chance that one of the 16 tokens is routed there."""
    strategy = {"model": "mixtral-8x7b", "devices": 8, "parallelism": {"expert": 8}, "runtime": {"dtype": "bfloat16"}}
    plan = compile(load(strategy), abstract_mesh=True)
    E, layers, F, KV, D = 4096, 32, 14336, 8, 128
    expert = 3 * E * F * 2 * layers  # bf16: one expert's SwiGLU in every layer
    rest = sum(p.bytes_per_device for p in plan.params) - expert
    reached = 1 - (1 - 2 / 8) ** 16
    kv_read = 16 * 1024 * layers * 2 * KV * D * 2  # expert parallelism keeps every KV head on each device
    cost = step_cost(plan, ONE_H100, 16, 16, 1024, "bfloat16")
    assert cost.hbm_bytes == pytest.approx(rest + expert * reached + kv_read)
    # Each MoE layer all-reduces its [16, E] partial sums over the 8 experts: 2(n-1)/n = 7/4.
    per_layer = 10e-6 + 7 / 4 * 16 * E * 2 / 450e9
    assert cost.parts["all-reduce over expert"] == pytest.approx(layers * per_layer)
    assert cost.seconds == pytest.approx(max(cost.parts["FLOPs"], cost.parts["HBM"]) + layers * per_layer)


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "strategies").glob("*.yaml")))
def test_predicted_bytes_per_device_are_explains(name):
    plan = compile(load(ROOT / "strategies" / f"{name}.yaml"), abstract_mesh=True)
    totals = json.loads(explain(plan, format="json"))["totals"]
    got = memory(plan, KINDS["h100"])
    assert (got.params, got.kv_cache) == (totals["params_bytes_per_device"], totals["kv_cache_bytes_per_device"])


def test_the_search_covers_every_parallelism_and_ranks_what_fits_first():
    wl = workload((512, 1024), (128, 256), 64)
    found = suggest("mixtral-8x7b", KINDS["h100"], 8, wl)
    shapes = {tuple(c.parallelism.values()) for c in found.candidates}
    # data × expert × tensor = 8, attention_data | tensor: 20 shapes
    assert len(shapes) == len(found.candidates) == 20
    assert found.best == 0 and found.candidates[0].fits
    fits = [c.fits for c in found.candidates]
    assert fits == sorted(fits, reverse=True)
    speeds = [c.tokens_per_s_per_device for c in found.candidates if c.fits and not c.missed]
    assert speeds == sorted(speeds, reverse=True)
    for c in found.candidates:
        if c.fits:
            assert c.memory.total <= 0.9 * 80e9
            assert c.plan.strategy.kv_cache.num_pages * 16 >= math.ceil(64 / c.plan.dp_ranks) * 1280
        else:
            assert c.reason.startswith("does not fit: needs")


def test_latency_limits_rank_a_candidate_that_misses_them_after_those_that_meet_them():
    wl = workload((1024, 1024), (256, 256), 32, max_ttft_ms=40.0)
    found = suggest("llama3.1-70b", KINDS["h200"], 8, wl)
    missed = [bool(c.missed) for c in found.candidates if c.fits]
    assert any(missed) and not all(missed) and missed == sorted(missed)
    assert all(c.ttft_ms <= 40 for c in found.candidates if c.fits and not c.missed)


def test_hosts_keep_tensor_groups_inside_a_host_where_they_can():
    found = suggest("llama3-70b", KINDS["h100"], 16, workload((1024, 1024), (256, 256), 64))
    assert found.hosts == 2
    for c in found.candidates:
        multihost = c.strategy["multihost"]
        assert math.prod(multihost.values()) == 2
        assert set(multihost) <= {"data", "expert"} or c.parallelism["tensor"] == 16


def test_a_request_longer_than_the_model_is_an_error_at_the_flag():
    with pytest.raises(ShardspecError, match=r"1024 \+ 8192 = 9216 tokens, exceeds llama3-70b's maximum length 8192"):
        suggest("llama3-70b", KINDS["h200"], 8, workload((1024, 1024), (8192, 8192), 32))


def test_the_command_ranks_writes_a_strategy_that_validates_and_prints_json(tmp_path):
    best = tmp_path / "best.yaml"
    args = ["--model", "qwen3-30b-a3b", "--devices", "h200:8", "--prompt-len", "1024", "--output-len", "256:1024"]
    result = run("suggest", *args, "--write", str(best))
    assert result.exit_code == 0, result.output
    assert "decode ms" in result.stdout and "assumptions:" in result.stdout
    written = yaml.safe_load(best.read_text())
    assert run("validate", str(best)).exit_code == 0
    result = run("suggest", *args, "--format", "json")
    out = json.loads(result.stdout)
    first = out["candidates"][out["best"]]
    assert first["parallelism"] == written["parallelism"]
    keys = {"parallelism", "multihost", "fits", "reason", "memory_bytes_per_device", "decode_step_ms", "prefill_ms"}
    assert keys | {"ttft_ms", "tpot_ms", "tokens_per_s_per_device", "bound"} <= set(first)
    assert out["workload"]["output_max"] == 1024 and out["device"]["kind"] == "h200"


def test_nothing_fits_exits_2_saying_what_would():
    result = run("suggest", "--model", "deepseek-v3", "--devices", "h200:8", "--prompt-len", "1024")
    assert result.exit_code == 2
    assert "error: no strategy fits 8 × h200 (what would fit:" in result.stderr
    assert "does not fit: needs" in result.stdout and "Traceback" not in result.output


def test_a_request_file_gives_the_workload_its_lengths(tmp_path):
    prompts = tmp_path / "in.jsonl"
    lines = [{"prompt_token_ids": list(range(n)), "max_tokens": m} for n, m in ((100, 50), (300, 150), (200, 400))]
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    args = ["suggest", "--model", "llama3-8b", "--devices", "h100:8", "--prompts", str(prompts), "--format", "json"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    wl = json.loads(result.stdout)["workload"]
    assert (wl["prompt_mean"], wl["prompt_max"], wl["output_mean"], wl["output_max"]) == (200, 300, 200, 400)
    prompts.write_text('{"prompt_token_ids": [1, 2], "max_tokens": 0}\n')
    result = run(*args)
    assert result.exit_code == 2 and f"{prompts}:1: max_tokens" in result.stderr, result.output


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--devices", "h100:8", "--hosts", "3"], "--hosts: 8 devices on 3 hosts is not a whole number"),
        (["--devices", "h100:8", "--output-len", "9:3"], "--output-len: '9:3' is not a length or a range"),
        (["--devices", "h100:8", "--concurrency", "0"], "--concurrency: 0 requests in flight"),
        (["--devices", "tpu-v5e:8", "--dtype", "float32"], "the catalog gives tpu-v5e no float32 peak"),
        (["--devices", "gpu:8"], "--devices: unknown device kind 'gpu'"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(flags, words):
    result = run("suggest", "--model", "llama3-8b", *flags)
    assert result.exit_code == 2 and words in result.stderr and "Traceback" not in result.output, result.output


@pytest.mark.parametrize(
    "model, devices",
    [("llama3-8b", "h100:8"), ("mixtral-8x7b", "h200:8"), ("deepseek-v3", "h200:16"), ("llama3-70b", "tpu-v6e:32")],
)
def test_every_written_strategy_validates(model, devices):
    from shardspec.suggest.report import strategy_yaml

    kind, n = parse_devices(devices, KINDS)
    found = suggest(model, kind, n, workload((512, 2048), (256, 1024), 64))
    fitting = [i for i, c in enumerate(found.candidates) if c.fits]
    assert fitting
    for i in fitting[:4]:
        text = strategy_yaml(found, i)
        plan = compile(load(text), abstract_mesh=True)
        assert plan.strategy.parallelism.tensor == found.candidates[i].parallelism["tensor"]
        assert plan.runtime.max_request_len >= 2048 + 1024


CPU_SPEC = """\
cpu:
  description: this machine's simulated devices
  hbm_gb: 2
  hbm_bandwidth_gb_s: 1
  tflops: {float32: 0.02, bfloat16: 0.02}
  devices_per_host: 8
  links: {inside_host: 5, across_hosts: 5, latency_us: 500}
"""


def test_calibrate_measures_the_best_candidates_steps_on_the_devices(tmp_path):
    spec = tmp_path / "cpu.yaml"
    spec.write_text(CPU_SPEC)
    args = ["suggest", "-m", "llama3-tiny", "--devices", "cpu:8", "--device-spec", str(spec), "--dtype", "float32"]
    args += ["--prompt-len", "64", "--output-len", "32", "--concurrency", "16"]
    roofline = json.loads(run(*args, "-f", "json").stdout)
    result = run(*args, "-f", "json", "--calibrate", "--top", "1")
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout)
    first = measured["candidates"][0]
    assert measured["measured"] == 1 and first["bound"] == "measured"
    assert first["name"] == roofline["candidates"][0]["name"]
    assert first["decode_step_ms"] != roofline["candidates"][0]["decode_step_ms"]
    assert measured["candidates"][1:] == roofline["candidates"][1:]
    result = run("suggest", "-m", "llama3-70b", "--devices", "h200:8", "--calibrate")
    assert result.exit_code == 2 and "--calibrate: llama3-70b is shape-only here" in result.stderr, result.output
