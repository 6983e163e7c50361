"""shardspec.load: one test per class of bad input, plus the happy paths."""

import dataclasses
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jsonschema
import pytest

import shardspec
from shardspec import load
from shardspec.errors import ShardspecError
from shardspec.strategy import KVCacheConfig, Parallelism, ParamOverride, Policy, RuntimeConfig, Strategy

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "shardspec" / "strategy.schema.json").read_text())

FULL = """\
# yaml-language-server: $schema=../shardspec/strategy.schema.json
name: attention-dp
model: llama3-tiny
devices: 8
parallelism:
  data: 1
  tensor: 8
  attention_data: auto
  expert: 1
multihost:
  data: 1
rules:
  mlp: [attn_dp, model]
  vocab: model
  embed: null
params:
  - match: 'layers\\.\\d+\\.mlp'
    axes: [embed, mlp]
policy:
  unmatched: replicate
  indivisible: pad
kv_cache:
  dtype: float32
  page_size: 32
  num_pages: 256
runtime:
  dtype: bfloat16
  max_num_seqs: 16
  max_num_batched_tokens: 1024
  routing: least_tokens
  async_scheduling: false
expect:
  per_layer: {all-reduce: 2}
  total: {all-gather: 0}
"""

MINIMAL = "parallelism:\n  tensor: 8\n"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Work in tmp_path, so that file names in messages are short and exact."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def errors(text, name="s.yaml", overrides=None):
    """The error lines `load` reports for `text` written to `name`."""
    Path(name).write_text(text)
    with pytest.raises(ShardspecError) as info:
        load(name, overrides)
    return str(info.value).splitlines()


def test_full_strategy_round_trips(in_tmp):
    Path("s.yaml").write_text(FULL)
    strategy = load("s.yaml")
    assert strategy == Strategy(
        name="attention-dp",
        model="llama3-tiny",
        devices=8,
        parallelism=Parallelism(data=1, tensor=8, attention_data="auto", expert=1),
        multihost={"data": 1},
        rules={"mlp": ("attn_dp", "model"), "vocab": ("model",), "embed": ()},
        params=(ParamOverride(match=r"layers\.\d+\.mlp", axes=("embed", "mlp"), index=0),),
        activations=(),
        mesh_aliases={},
        units={},
        policy=Policy(unmatched="replicate", indivisible="pad"),
        kv_cache=KVCacheConfig(dtype="float32", page_size=32, num_pages=256),
        runtime=RuntimeConfig(
            dtype="bfloat16",
            max_num_seqs=16,
            max_num_batched_tokens=1024,
            routing="least_tokens",
            async_scheduling=False,
        ),
        expect={"per_layer": {"all-reduce": 2}, "total": {"all-gather": 0}},
    )
    assert strategy.source.file == "s.yaml"
    assert strategy.source.line("parallelism.tensor") == 7
    assert strategy.source.line("params[0].axes") == 18


def test_defaults_are_filled_in_and_name_is_the_file_stem(in_tmp):
    Path("attn_dp.yaml").write_text(MINIMAL)
    strategy = load(Path("attn_dp.yaml"))
    assert strategy.name == "attn_dp"
    assert (strategy.model, strategy.devices, strategy.device_count) == (None, None, 8)
    assert strategy.parallelism == Parallelism(tensor=8)
    assert (strategy.policy, strategy.kv_cache, strategy.runtime) == (Policy(), KVCacheConfig(), RuntimeConfig())
    assert (dict(strategy.multihost), dict(strategy.rules), strategy.params, dict(strategy.expect)) == ({}, {}, (), {})


def test_yaml_text_and_dict_sources():
    from_text = load(FULL)
    assert from_text.source.file == "<string>" and from_text.source.line("devices") == 4
    raw = {"parallelism": {"tensor": 8}, "rules": {"mlp": "model"}}
    from_dict = load(raw, {"parallelism.data": "2"})
    assert from_dict.name == "strategy" and from_dict.rules["mlp"] == ("model",)
    assert raw == {"parallelism": {"tensor": 8}, "rules": {"mlp": "model"}}  # not mutated
    with pytest.raises(ShardspecError) as info:
        load({"parallelism": {"tensor": "8"}})
    assert str(info.value) == "error: <dict>: parallelism.tensor: expected an integer, got '8'"


def test_strategy_is_frozen():
    strategy = load(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        strategy.name = "other"
    with pytest.raises(TypeError):
        strategy.rules["mlp"] = ("model",)


def test_not_a_source():
    with pytest.raises(TypeError, match="takes a path, YAML text or a dict"):
        load(8)


def test_unknown_keys_with_did_you_mean(in_tmp):
    assert errors("name: x\nparalelism:\n  tensor: 8\nruntime:\n  routng: balanced\n  colour: red\n") == [
        "error: s.yaml:2: unknown key 'paralelism' (did you mean 'parallelism'?)",
        "error: s.yaml:5: runtime: unknown key 'routng' (did you mean 'routing'?)",
        "error: s.yaml:6: runtime: unknown key 'colour' (allowed: dtype, max_model_len, max_num_seqs, "
        "max_num_batched_tokens, routing, max_waiting, moe_dispatch, kv_growth_reserve, async_scheduling or "
        "step_costs)",
    ]


@pytest.mark.parametrize(
    "line, message",
    [
        ("  tensor: eight", "parallelism.tensor: expected an integer, got 'eight'"),
        ("  tensor: 8.0", "parallelism.tensor: expected an integer, got 8.0"),
        ("  tensor: true", "parallelism.tensor: expected an integer, got true"),
        ("  tensor: [8]", "parallelism.tensor: expected an integer, got a list"),
        ("  attention_data: half", "parallelism.attention_data: expected an integer or 'auto', got 'half'"),
    ],
)
def test_wrong_types(in_tmp, line, message):
    assert errors(f"parallelism:\n{line}\n") == [f"error: s.yaml:2: {message}"]


def test_wrong_type_of_a_section(in_tmp):
    assert errors("parallelism: 8\nrules: [mlp]\n") == [
        "error: s.yaml:1: parallelism: expected a mapping, got 8",
        "error: s.yaml:2: rules: expected a mapping, got a list",
    ]


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("parallelism.tensor", "0", "0 is below the minimum 1"),
        ("parallelism.data", "-2", "-2 is below the minimum 1"),
        ("parallelism.attention_data", "0", "0 is below the minimum 1"),
        ("devices", "100000", "100000 is above the maximum 65536"),
        ("kv_cache.page_size", "8192", "8192 is above the maximum 4096"),
        ("kv_cache.num_pages", "16777217", "16777217 is above the maximum 16777216"),
        ("runtime.max_num_batched_tokens", "2000000", "2000000 is above the maximum 1048576"),
        ("multihost.data", "0", "0 is below the minimum 1"),
        ("expect.total.all-reduce", "-1", "-1 is below the minimum 0"),
    ],
)
def test_sizes_out_of_range(path, value, message):
    with pytest.raises(ShardspecError) as info:
        load(MINIMAL, {path: value})
    assert str(info.value) == f"error: --set: {path}: {message}"


def test_enum_with_did_you_mean(in_tmp):
    assert errors("parallelism: {tensor: 8}\nruntime:\n  routing: fast\npolicy: {unmatched: replicat}\n") == [
        "error: s.yaml:3: runtime.routing: 'fast' is not one of balanced, least_load, cache_first, least_tokens "
        "or round_robin",
        "error: s.yaml:4: policy.unmatched: 'replicat' is not one of error or replicate (did you mean 'replicate'?)",
    ]


def test_params_entry_needs_match_and_axes(in_tmp):
    assert errors("params:\n  - match: a\n") == [
        "error: s.yaml:2: params[0]: missing 'axes' (each entry needs match: and axes:)"
    ]
    assert errors("params:\n  - {}\n") == [
        "error: s.yaml:2: params[0]: missing 'match' and 'axes' (each entry needs match: and axes:)"
    ]


def test_parallelism_product_must_match_devices(in_tmp):
    assert errors("devices: 8\nparallelism:\n  data: 2\n  tensor: 2\n") == [
        "error: s.yaml:2: parallelism: data 2 x tensor 2 x expert 1 = 4 devices, but devices: 8 "
        "(make data x tensor x expert = 8, or set devices: 4 (or leave it out))"
    ]


def test_attention_data_must_divide_tensor(in_tmp):
    text = "name: attn\nparallelism:\n  data: 1\n  tensor: 8\n  expert: 1\n\n  attention_data: 3\n"
    assert errors(text, "attn_dp.yaml") == [
        "error: attn_dp.yaml:7: parallelism.attention_data: 3 does not divide tensor=8 (use 1, 2, 4 or 8, or auto)"
    ]


def test_multihost_must_divide_its_axis(in_tmp):
    text = "parallelism: {data: 4, tensor: 4, attention_data: 2}\nmultihost: {data: 3, model: 4, attn_dp: 2}\n"
    assert errors(text) == [
        "error: s.yaml:2: multihost.data: 3 does not divide data=4 (use 1, 2 or 4)",
        "error: s.yaml:2: multihost.model: 4 does not divide model=2 (use 1 or 2)",
    ]
    # attn_dp and model are unknown until compile() resolves attention_data: auto.
    assert load("parallelism: {tensor: 4}\nmultihost: {model: 3}\n").multihost == {"model": 3}


def test_rules_name_mesh_axes(in_tmp):
    # Any logical name loads: compile() checks names against the model's (test_plan).
    text = "rules:\n  mpl: model\n  heads: modle\n  vocab: [attn_dp, tensor]\n"
    assert errors(text) == [
        "error: s.yaml:3: rules.heads: unknown mesh axis 'modle' (did you mean 'model'?)",
        "error: s.yaml:4: rules.vocab[1]: unknown mesh axis 'tensor' (use data, attn_dp, expert or model)",
    ]


def test_a_mesh_axis_only_once_per_rule(in_tmp):
    assert errors("rules:\n  mlp:\n    - model\n    - model\n") == [
        "error: s.yaml:4: rules.mlp[1]: mesh axis 'model' appears twice (a mesh axis can shard a dimension only once)"
    ]


def test_params_regex(in_tmp):
    text = "params:\n  - match: 'mlp('\n    axes: [embd, null]\n"
    assert errors(text) == [
        "error: s.yaml:2: params[0].match: invalid regex 'mlp(': missing ): mlp(",
    ]


def test_unknown_preset(in_tmp):
    assert errors("model: llama3-tin\n") == [
        "error: s.yaml:1: model: unknown model 'llama3-tin' (did you mean 'llama3-tiny'? see `shardspec models`)"
    ]
    assert "checkpoint directory" in errors("model: gpt-neo\n")[0]


def test_an_existing_directory_is_a_model(in_tmp):
    (in_tmp / "ckpt").mkdir()
    assert load("model: ckpt\n").model == "ckpt"


@pytest.mark.parametrize("name", ["x.yaml", "strategies/x.yml", "x"])
def test_missing_file(in_tmp, name):
    with pytest.raises(ShardspecError) as info:
        load(name)
    assert str(info.value) == (
        f"error: {name}: file not found (check the path; it is relative to the working directory)"
    )


def test_an_existing_file_without_a_yaml_suffix(in_tmp):
    Path("attn.txt").write_text(MINIMAL)
    assert load("attn.txt").name == "attn"


def test_directory_is_not_a_file(in_tmp):
    (in_tmp / "d.yaml").mkdir()
    with pytest.raises(ShardspecError, match="is a directory"):
        load(Path("d.yaml"))


def test_empty_file(in_tmp):
    assert errors("") == ["error: s.yaml: the file is empty (a strategy needs at least `parallelism:`)"]


def test_top_level_not_a_mapping(in_tmp):
    assert errors("- parallelism\n") == [
        "error: s.yaml:1: the top level must be a mapping (name:, parallelism:, ...), got a list"
    ]


def test_non_utf8_file(in_tmp):
    Path("s.yaml").write_bytes(b"name: x\nmodel: \xff\n")
    with pytest.raises(ShardspecError) as info:
        load("s.yaml")
    assert str(info.value) == "error: s.yaml:2: not UTF-8 text (byte 0xff) (save the file as UTF-8)"


def test_yaml_syntax_error_has_its_line(in_tmp):
    assert errors("name: x\nparallelism:\n  tensor: 8\n  data: [1, 2\n") == [
        "error: s.yaml:5: invalid YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence at line 4)"
    ]


def test_python_tags_never_run(in_tmp):
    marker = in_tmp / "executed"
    lines = errors(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    assert lines == [
        "error: s.yaml:1: name: the tag !!python/object/apply:os.system is not allowed "
        "(a strategy is plain data: values, lists and mappings)"
    ]
    assert not marker.exists()


def test_alias_bomb_is_rejected_fast(in_tmp):
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(8):
        prev, cur = chr(ord("a") + i), chr(ord("a") + i + 1)
        text += f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]\n"
    start = time.perf_counter()
    lines = errors(text)
    assert time.perf_counter() - start < 0.5
    assert lines == [
        "error: s.yaml:5: the document expands to more than 10000 values (anchors and aliases nested too deeply)"
    ]


def test_duplicate_keys(in_tmp):
    assert errors("runtime:\n  routing: balanced\n  routing: round_robin\n") == [
        "error: s.yaml:3: runtime.routing: duplicate key 'routing' (first at line 2) (keep one of them)"
    ]


def test_all_schema_errors_at_once_in_file_order(in_tmp):
    text = textwrap.dedent("""\
        runtime:
          routing: fastest
        parallelism:
          tensor: 0
          data: two
        paralelism: {}
        """)
    assert errors(text) == [
        "error: s.yaml:2: runtime.routing: 'fastest' is not one of balanced, least_load, cache_first, least_tokens "
        "or round_robin",
        "error: s.yaml:4: parallelism.tensor: 0 is below the minimum 1",
        "error: s.yaml:5: parallelism.data: expected an integer, got 'two'",
        "error: s.yaml:6: unknown key 'paralelism' (did you mean 'parallelism'?)",
    ]


def test_all_semantic_errors_at_once(in_tmp):
    text = "model: llama3\ndevices: 4\nparallelism: {tensor: 8, attention_data: 3}\nrules: {mlp: modle}\n"
    assert errors(text) == [
        "error: s.yaml:1: model: unknown model 'llama3' (did you mean 'llama3-8b'? see `shardspec models`)",
        "error: s.yaml:3: parallelism: data 1 x tensor 8 x expert 1 = 8 devices, but devices: 4 "
        "(make data x tensor x expert = 4, or set devices: 8 (or leave it out))",
        "error: s.yaml:3: parallelism.attention_data: 3 does not divide tensor=8 (use 1, 2, 4 or 8, or auto)",
        "error: s.yaml:4: rules.mlp: unknown mesh axis 'modle' (did you mean 'model'?)",
    ]


def test_overrides(in_tmp):
    Path("s.yaml").write_text(FULL)
    strategy = load(
        "s.yaml",
        {
            "runtime.routing": "round_robin",
            "parallelism.attention_data": "2",
            "rules.mlp": "[model]",
            "multihost.expert": "1",
            "params[0].axes": "[null, mlp]",
            "model": "llama3-small",
        },
    )
    assert strategy.runtime.routing == "round_robin"
    assert strategy.parallelism.attention_data == 2
    assert strategy.rules["mlp"] == ("model",)
    assert strategy.multihost == {"data": 1, "expert": 1}
    assert strategy.params[0].axes == (None, "mlp")
    assert strategy.model == "llama3-small"
    # An overridden key no longer points at its (stale) line in the file.
    assert strategy.source.line("runtime.routing") == strategy.source.line("runtime") == 26


def test_overrides_create_sections_and_leave_aliases_alone():
    text = "parallelism: {tensor: 8}\nexpect:\n  per_layer: &c {all-reduce: 2}\n  total: *c\n"
    strategy = load(text, {"expect.total.all-reduce": "4", "kv_cache.page_size": "64"})
    assert strategy.expect == {"per_layer": {"all-reduce": 2}, "total": {"all-reduce": 4}}
    assert strategy.kv_cache.page_size == 64


def test_bad_overrides_are_reported_at_set(in_tmp):
    Path("s.yaml").write_text(FULL)
    with pytest.raises(ShardspecError) as info:
        load("s.yaml", {"runtime.routing": "fastest"})
    assert str(info.value) == (
        "error: --set: runtime.routing: 'fastest' is not one of balanced, least_load, cache_first, least_tokens "
        "or round_robin"
    )
    with pytest.raises(ShardspecError) as info:
        load("s.yaml", {"parallelism.attention_data": "3"})
    assert str(info.value) == (
        "error: --set: parallelism.attention_data: 3 does not divide tensor=8 (use 1, 2, 4 or 8, or auto)"
    )


def test_malformed_overrides():
    with pytest.raises(ShardspecError) as info:
        load(
            MINIMAL,
            {
                "runtime..routing": "x",
                "parallelism.tensor.x": "1",
                "params[3].match": "a",
                "runtime.dtype": "[unclosed",
            },
        )
    assert str(info.value).splitlines() == [
        "error: --set: bad key path 'runtime..routing' (write key.path=value, e.g. runtime.routing=least_tokens)",
        "error: --set: parallelism.tensor.x: parallelism.tensor is 8, not a mapping",
        "error: --set: params[3].match: params has no item [3]",
        "error: --set: runtime.dtype: invalid YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence at line 1)",
    ]


def test_an_override_of_an_unknown_key_is_reported_at_set():
    with pytest.raises(ShardspecError) as info:
        load(MINIMAL, {"runtime.routng": "balanced"})
    assert str(info.value) == "error: --set: runtime: unknown key 'routng' (did you mean 'routing'?)"


def test_load_does_not_import_jax(tmp_path):
    strategy = tmp_path / "s.yaml"
    strategy.write_text(FULL)
    code = (
        "import sys, shardspec; s = shardspec.load(sys.argv[1]); "
        "assert s.parallelism.tensor == 8; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code, str(strategy)], cwd=ROOT, check=True)


def _properties(schema, path="$"):
    """(path, subschema) of every property of the schema, however deep."""
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}.{name}", sub
        yield from _properties(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield f"{path}.{key}", schema[key]
            yield from _properties(schema[key], f"{path}.{key}")
    for name, sub in schema.get("$defs", {}).items():
        yield from _properties(sub, f"{path}.$defs.{name}")


def test_every_schema_property_has_a_description():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    undescribed = [path for path, sub in _properties(SCHEMA) if not sub.get("description")]
    assert not undescribed


@pytest.mark.parametrize(
    "section, cls",
    [("parallelism", Parallelism), ("policy", Policy), ("kv_cache", KVCacheConfig), ("runtime", RuntimeConfig)],
)
def test_schema_defaults_are_the_dataclass_defaults(section, cls):
    properties = SCHEMA["properties"][section]["properties"]
    assert {f.name: f.default for f in dataclasses.fields(cls)} == {
        name: sub["default"] for name, sub in properties.items()
    }


def test_public_api():
    assert shardspec.load is load


def test_a_strategy_is_a_short_hashable_value():
    a, b = load(ROOT / "strategies" / "attention_dp.yaml"), load(ROOT / "strategies" / "attention_dp.yaml")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert repr(a) == (
        "Strategy(name='attention-dp', model='llama3-tiny', data×tensor×expert=1×8×1, attention_data=auto)"
    )
    c = load(ROOT / "strategies" / "attention_dp.yaml", overrides={"runtime.routing": "round_robin"})
    assert c != a and hash(c) != hash(a)
    assert hash(load({"expect": {"per_layer": {"all-reduce": 2}}, "rules": {"mlp": "model"}}))


def test_a_compile_time_problem_under_a_set_key_blames_set():
    from shardspec import compile

    st = load(ROOT / "strategies" / "tp.yaml", overrides={"parallelism.tensor": "16", "devices": "16"})
    with pytest.raises(ShardspecError) as err:
        compile(st, abstract_mesh=True)
    assert all(line.startswith("error: --set: parallelism.tensor: ") for line in str(err.value).splitlines())


def test_step_costs_are_auto_or_points_of_tokens_and_ms():
    assert load(MINIMAL).runtime.step_costs == "auto"
    given = load(MINIMAL, {"runtime.step_costs": "[{tokens: 8, ms: 2}, {tokens: 512, ms: 9.5}]"})
    assert given.runtime.step_costs == ((8, 2.0), (512, 9.5))
    assert load(MINIMAL, {"kv_cache.prefix_caching": "false"}).kv_cache.prefix_caching is False


@pytest.mark.parametrize(
    "value, wrong",
    [("fast", "'fast'"), ("[{tokens: 0, ms: 1}]", "tokens"), ("[{tokens: 8, ms: -1}]", "ms"), ("[{tokens: 8}]", "ms")],
)
def test_bad_step_costs_are_located(value, wrong):
    with pytest.raises(ShardspecError) as info:
        load(MINIMAL, {"runtime.step_costs": value})
    text = str(info.value)
    assert text.startswith("error: --set: runtime.step_costs") and wrong in text and "\n" not in text.strip(), text
