"""explain(): exact text for one strategy, the JSON contract, and no device memory."""

import gc
import json

import jax

from shardspec import compile, explain, load
from shardspec.explanation import fmt_bytes, spec_str

from conftest import ROOT
from helpers import strategy

GOLDEN = ROOT / "tests" / "golden"


def test_attention_dp_text_is_exactly_the_golden_file():
    plan = compile(load(ROOT / "strategies" / "attention_dp.yaml"), abstract_mesh=True)
    assert explain(plan) == (GOLDEN / "explain_attention_dp.txt").read_text()


def test_json_has_the_documented_fields():
    plan = compile(load(ROOT / "strategies" / "tp.yaml"), abstract_mesh=True)
    out = json.loads(explain(plan, format="json"))
    assert {"mesh", "attention_data", "rules", "params", "kv_cache", "totals"} <= set(out)
    assert out["mesh"] == {
        "axes": {"data": 1, "attn_dp": 1, "expert": 1, "model": 8},
        "devices": 8,
        "device_ids": [[[[0, 1, 2, 3, 4, 5, 6, 7]]]],
    }
    assert out["attention_data"] == 1
    q = next(p for p in out["params"] if p["path"] == "layers.0.self_attn.q_proj")
    assert q == {
        "path": "layers.0.self_attn.q_proj",
        "shape": [128, 8, 16],
        "axes": ["embed", "heads", "head_dim"],
        "spec": [None, "model", None],
        "bytes_per_device": 128 * 1 * 16 * 4,
        "notes": [],
    }
    assert out["kv_cache"]["kv_head_replication"] == 4 and out["kv_cache"]["prefix_caching"] is True
    assert out["totals"]["params_bytes_per_device"] == sum(p["bytes_per_device"] for p in out["params"])
    assert out["serving"] == {
        "routing": "balanced",
        "async_scheduling": True,
        "token_buckets": [8, 16, 32, 64, 128, 256, 512],
        "step_costs": "auto",
        "step_costs_ms": None,
        "kv_growth_reserve": "auto",
        "kv_growth_reserve_tokens": 64,
    }


def test_explain_shows_prefix_caching_and_given_step_costs():
    overrides = {
        "kv_cache.prefix_caching": "false",
        "runtime.step_costs": "[{tokens: 8, ms: 1}, {tokens: 512, ms: 64}]",
    }
    plan = compile(load(ROOT / "strategies" / "tp.yaml", overrides=overrides), abstract_mesh=True)
    text = explain(plan)
    assert "prefix caching: off (kv_cache.prefix_caching: false)" in text
    assert (
        "step costs (ms per step by bucket): from the strategy: 8 1, 16 2, 32 4, 64 8, 128 16, 256 32, 512 64" in text
    )
    assert json.loads(explain(plan, format="json"))["serving"]["step_costs_ms"]["512"] == 64


def test_warnings_name_every_policy_fallback_and_large_replicated_tensor():
    st = strategy("parallelism: {tensor: 8, attention_data: 1}\nrules: {vocab: null}", model="llama3-small")
    text = explain(compile(st, abstract_mesh=True))
    assert "lm_head: 8.0 MiB replicated on every device" in text
    assert "layers.0.self_attn.k_proj: KV heads replicated over model" in text


def test_seventy_billion_parameters_are_explained_without_memory():
    gc.collect()  # arrays earlier tests dropped must not be counted, or freed, in between
    before = len(jax.live_arrays())
    plan = compile(load(ROOT / "strategies" / "tp.yaml"), "llama3-70b", abstract_mesh=True)
    text = explain(plan)
    gc.collect()
    assert len(jax.live_arrays()) == before
    assert "layers.79.mlp.down_proj" in text and "lm_head" in text


def test_formatting_helpers():
    assert [fmt_bytes(n) for n in (512, 2048, 3 << 20)] == ["512 B", "2.0 KiB", "3.0 MiB"]
    assert spec_str(jax.sharding.PartitionSpec(("attn_dp", "model"), None)) == "(attn_dp×model, -)"
