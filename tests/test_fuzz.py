"""Hostile input, generated: every input path gives a clean result or a located ShardspecError.

Strategy text, `--set` overrides, checkpoint config.json files, request fields and
request files are drawn by hypothesis around real seeds and hostile values (tags
PyYAML cannot construct, 5,000-digit integers, NaN, catastrophic regexes,
sizes beyond any device count, wrong types). Each case asserts that only a
ShardspecError escapes and that every problem names where it is. The engine's
exactly-once property under add / abort / step and failing steps is here too.
Example counts are kept small so the suite stays fast; `python -m tools.fuzz` runs the
same kind of attack for as long as you like.
"""

import json
import shutil

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_failures import _FailingStep

from shardspec import ShardspecError, compile, load
from shardspec.models.hf_config import config_from_dir
from shardspec.runtime.engine import Engine
from shardspec.runtime.requests_io import make_request, read_requests
from shardspec.runtime.step import shared_step
from shardspec.sizes import RuntimeSizes

from conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "hf"
SEED_STRATEGIES = sorted((ROOT / "strategies").glob("*.yaml"))
LIMITS = RuntimeSizes(1, 16, 64, 256, 8, 64)

# Values a careless or hostile user writes where a number, a name or a list belongs.
HOSTILE_YAML = [
    "2020-02-30",
    "2020-02-03",
    "!!int a",
    "!!float c",
    "!!bool maybe",
    "!!binary x",
    "!!timestamp 12",
    "!!python/name:os.system",
    "!!set {a}",
    "9" * 5000,
    "0x" + "f" * 4000,
    "-1",
    "0",
    "65536",
    str(2**63),
    ".nan",
    ".inf",
    "1e999",
    "''",
    "~",
    "[]",
    "{}",
    "[" * 80 + "]" * 80,
    "*undefined",
    "'a{4294967296}'",
    "'(.*.*)*x'",
    "'" + "(" * 1200 + ")" * 1200 + "'",
    "'(?=a)b'",
    "\u2028",
    "\x00",
    "x" * 10_000,
    "auto",
    "[data, data]",
    "{match: '.*', axes: [null]}",
]
HOSTILE_JSON = [
    None,
    True,
    -1,
    0,
    2**31,
    2**63,
    10**30,
    float("nan"),
    float("inf"),
    1e9,
    0.5,
    "",
    "7",
    "\u2028",
    [],
    [1, "a"],
    [10**6],
    {},
    {"factor": "x"},
]


def _located(error: ShardspecError) -> bool:
    return all(p.file is not None or p.path for p in error.problems)


def _clean_or_located(fn, *args, **kwargs):
    """fn's result, or None when it raised a ShardspecError whose every problem has a location."""
    try:
        return fn(*args, **kwargs)
    except ShardspecError as e:
        assert _located(e), e.format()
        return None


@st.composite
def mutated_strategy_text(draw):
    """A real strategy file with a few of its values (or keys) replaced by hostile ones."""
    lines = draw(st.sampled_from(SEED_STRATEGIES)).read_text().splitlines()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        line = lines[i].split("#")[0]
        hostile = draw(st.sampled_from(HOSTILE_YAML) | st.text(max_size=12))
        if ":" in line and draw(st.booleans()):
            key, _, _ = line.partition(":")
            lines[i] = f"{key}: {hostile}"
        else:
            lines.insert(i, draw(st.sampled_from(["params:", "- match: x", "  axes: [embd]", "e:"])) + f" {hostile}")
    return "\n".join(lines) + "\n"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_strategy_text())
def test_any_strategy_text_loads_and_compiles_or_is_a_located_error(text):
    strategy = _clean_or_located(load, text)
    if strategy is not None and strategy.model is not None:
        _clean_or_located(compile, strategy, abstract_mesh=True)


_SET_KEYS = [
    "parallelism.tensor",
    "parallelism.data",
    "parallelism.attention_data",
    "runtime.routing",
    "runtime.max_num_seqs",
    "kv_cache.page_size",
    "params[0].match",
    "rules.heads",
    "nonexistent.key",
    "model",
    "devices",
    "policy.unmatched",
]


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(_SET_KEYS) | st.text(max_size=10), st.sampled_from(HOSTILE_YAML) | st.text(max_size=10))
def test_any_set_override_is_applied_or_a_located_error(key, value):
    strategy = _clean_or_located(load, ROOT / "strategies" / "tp.yaml", overrides={key: value})
    if strategy is not None:
        _clean_or_located(compile, strategy, abstract_mesh=True)


_CONFIG_KEYS = [
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "max_position_embeddings",
    "rope_theta",
    "rope_scaling",
    "rms_norm_eps",
    "eos_token_id",
    "tie_word_embeddings",
    "sliding_window",
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "mlp_only_layers",
    "decoder_sparse_step",
    "model_type",
]


@pytest.fixture(scope="module")
def checkpoint_copies(tmp_path_factory):
    """One writable copy per fixture family; config.json is rewritten per example."""
    copies = {}
    for family in ("llama", "qwen3_moe"):
        target = tmp_path_factory.mktemp(family)
        for f in (FIXTURES / family).iterdir():
            shutil.copy(f, target / f.name)
        copies[family] = (target, json.loads((target / "config.json").read_text()))
    return copies


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(["llama", "qwen3_moe"]),
    st.dictionaries(st.sampled_from(_CONFIG_KEYS), st.sampled_from(HOSTILE_JSON), min_size=1, max_size=3),
)
def test_any_config_json_reads_or_is_a_located_error(checkpoint_copies, family, changes):
    directory, config = checkpoint_copies[family]
    (directory / "config.json").write_text(json.dumps({**config, **changes}))  # NaN written as NaN, as Python does
    try:
        if _clean_or_located(config_from_dir, directory) is not None:
            _clean_or_located(
                compile, load({"model": str(directory), "parallelism": {"tensor": 2}}), abstract_mesh=True
            )
    finally:
        (directory / "config.json").write_text(json.dumps(config))


# Every field a request line may have (from its schema), and one it may not.
_REQUEST_KEYS = [*json.loads((ROOT / "shardspec/runtime/request.schema.json").read_text())["properties"], "junk"]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(_REQUEST_KEYS), st.sampled_from(HOSTILE_JSON) | st.integers(), max_size=5))
def test_any_request_fields_make_a_request_or_a_located_error(fields):
    fields = {"prompt_token_ids": [1, 2, 3], **fields}
    request = _clean_or_located(make_request, fields, default_id="0", vocab_size=512, limits=LIMITS)
    if request is not None:  # what is accepted is what the runtime can store
        assert all(0 <= t < 512 for t in request.prompt_token_ids)
        assert -1 <= request.sampling.top_k < 2**31 and np.isfinite(request.sampling.temperature)


_LINE_PIECES = [
    b'{"prompt_token_ids": [1, 2]}',
    b'{"prompt_token_ids": [1], "temperature": NaN}',
    b'{"prompt_token_ids": [1], "top_k": 2147483648}',
    b'{"prompt_token_ids": [1], "id": "a\xe2\x80\xa8b"}',
    b'{"prompt_token_ids": [1], "id": "a\x0cb"}',
    b"\xef\xbb\xbf",
    b"\xff",
    b"[1, 2]",
    b"{",
    b"",
    b"\r",
]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(_LINE_PIECES) | st.binary(max_size=8), min_size=1, max_size=6))
def test_any_request_file_reads_or_names_each_bad_line(tmp_path, pieces):
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"\n".join(pieces))
    try:
        requests = read_requests(path, vocab_size=512, limits=LIMITS)
    except ShardspecError as e:
        assert all(p.file == str(path) for p in e.problems), e.format()
        assert all(p.line is not None for p in e.problems if p.message != "no requests in the file"), e.format()
    else:
        assert len(requests) <= len(pieces)


# -- the engine: exactly once, every page back ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_engines():
    """A sync and an async engine on one program, sharing one step whose failures each example sets."""
    overrides = {
        "parallelism.tensor": "1",
        "devices": "1",
        "kv_cache.num_pages": "6",  # 6 pages of 16 tokens: preemption and waiting come quickly
        "runtime.kv_growth_reserve": "0",  # (admission does not hold pages back for growth)
        "runtime.max_num_seqs": "3",
        "runtime.max_num_batched_tokens": "16",
        "kv_cache.dtype": "float32",
    }
    engines, failing = {}, None
    for mode in (False, True):
        plan = compile(
            load(
                ROOT / "strategies" / "tp.yaml", overrides={**overrides, "runtime.async_scheduling": str(mode).lower()}
            )
        )
        failing = failing or _FailingStep(shared_step(plan, plan.model.tree.graphdef), (), consume=False)
        engines[mode] = Engine(plan, step=failing)
    return engines, failing


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 40), st.integers(1, 12), st.sampled_from([0, 512, -1])),
        st.tuples(st.just("abort"), st.integers(0, 8)),
        st.tuples(st.just("step")),
        st.tuples(st.just("async"), st.booleans()),
    ),
    max_size=25,
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_ops, st.sets(st.integers(0, 30), max_size=3), st.booleans())
def test_engine_operations_finish_every_accepted_request_once(tiny_engines, ops, failing, consume):
    engines, step = tiny_engines
    step.fail_at, step.consume, step.calls = set(failing), consume, 0  # this example's failures, from its first call
    engine = engines[True]
    accepted, outputs, n = [], [], 0
    try:
        for op in ops:
            if op[0] == "add":
                _, prompt, max_tokens, bad_token = op
                tokens = [7] * (prompt - 1) + [bad_token if bad_token else 3]
                rid = f"r{n}"
                n += 1
                if _clean_or_located(engine.add_request, id=rid, prompt_token_ids=tokens, max_tokens=max_tokens):
                    accepted.append(rid)
            elif op[0] == "abort" and accepted:
                engine.abort(accepted[op[1] % len(accepted)])
            elif op[0] == "step":
                outputs += engine.step()
            elif op[0] == "async" and not engine.has_unfinished():
                engine = engines[op[1]]  # the other scheduling mode from here on
        for _ in range(1000):
            if not engine.has_unfinished():
                break
            outputs += engine.step()
    finally:
        step.fail_at = set()
    assert not any(e.has_unfinished() for e in engines.values())
    assert sorted(o.id for o in outputs) == sorted(accepted)  # every accepted request exactly once
    assert all(o.finish_reason in ("length", "stop", "abort", "error") for o in outputs)
    assert not any(any(e.stats().pages_used) for e in engines.values())  # every page back


def test_hostile_yaml_values_are_all_exercised():
    """The list above is YAML that PyYAML composes: each value reaches shardspec's own checks."""
    for value in HOSTILE_YAML:
        if value in ("*undefined", "\x00"):
            continue  # a syntax error and a control character: rejected by the reader itself
        yaml.compose(f"e: {value}", Loader=yaml.SafeLoader)
