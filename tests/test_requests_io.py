"""Request files: every bad line reported with its line and field, nothing run."""

import enum
import gc
import json
import random
import types

import numpy as np
import pytest

from shardspec import ShardspecError
from shardspec._schema import schema_problems, validator
from shardspec._schema_fast import fast_check
from shardspec.errors import Source, raise_all
from shardspec.files import parse_json
from shardspec.runtime.request import Output
from shardspec.runtime.requests_io import _DEEP_FIELDS, _SCHEMA, make_request, read_requests, write_outputs
from shardspec.sizes import RuntimeSizes

LIMITS = dict(
    vocab_size=512, limits=RuntimeSizes(1, 16, 64, max_model_len=64, max_num_seqs=8, max_num_batched_tokens=64)
)


def _file(tmp_path, *lines):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_good_file_reads_every_field(tmp_path):
    path = _file(
        tmp_path,
        json.dumps(
            {
                "id": "a",
                "prompt_token_ids": [1, 2],
                "max_tokens": 4,
                "temperature": 0.5,
                "top_k": 5,
                "top_p": 0.9,
                "seed": 3,
                "ignore_eos": True,
                "stop_token_ids": [7],
            }
        ),
        "",
        json.dumps({"prompt_token_ids": [3]}),
    )
    a, b = read_requests(path, **LIMITS)
    assert (a.id, a.prompt_token_ids, a.max_tokens, a.ignore_eos, a.stop_token_ids) == ("a", (1, 2), 4, True, (7,))
    assert (a.sampling.temperature, a.sampling.top_k, a.sampling.top_p, a.sampling.seed) == (0.5, 5, 0.9, 3)
    assert (b.id, b.max_tokens, b.sampling.temperature) == ("3", 16, 0.0)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("{not json", ":1: not JSON: Expecting property name enclosed in double quotes (column 2)"),
        ('{"prompt_token_ids": [1], "max_token": 3}', ":1: unknown key 'max_token' (did you mean 'max_tokens'?)"),
        ('{"prompt_token_ids": [1], "max_tokens": "3"}', ":1: max_tokens: expected an integer, got '3'"),
        ('{"prompt_token_ids": []}', ":1: prompt_token_ids: must not be empty"),
        ('{"prompt_token_ids": [1, 999]}', ":1: prompt_token_ids: token id 999 is outside the vocabulary"),
        ('{"prompt_token_ids": [1, 2], "max_tokens": 63}', ":1: max_tokens: prompt 2 + max_tokens 63 exceeds"),
        ('{"prompt": "hello"}', ":1: prompt_token_ids: prompt text needs a model with a tokenizer"),
        ("[1, 2]", ":1: each line must be a JSON object"),
    ],
)
def test_bad_lines_name_the_line_and_field(tmp_path, line, expected):
    path = _file(tmp_path, line)
    with pytest.raises(ShardspecError) as err:
        read_requests(path, **LIMITS)
    assert f"error: {path}{expected}" in str(err.value)


def test_every_bad_line_is_reported_at_once(tmp_path):
    path = _file(
        tmp_path,
        '{"prompt_token_ids": [1]}',
        "{",
        '{"prompt_token_ids": [1], "x": 1}',
        '{"id": "1", "prompt_token_ids": [2]}',
    )
    with pytest.raises(ShardspecError) as err:
        read_requests(path, **LIMITS)
    lines = str(err.value).splitlines()
    assert [line.split(":")[2] for line in lines] == ["2", "3", "4"]
    assert "duplicate id '1'" in lines[-1]


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ShardspecError, match="file not found"):
        read_requests(tmp_path / "none.jsonl", **LIMITS)
    with pytest.raises(ShardspecError, match="no requests"):
        read_requests(_file(tmp_path, ""), **LIMITS)


def test_keyword_requests_are_validated_the_same_way():
    with pytest.raises(ShardspecError, match="top_p: 0 is not above 0"):
        make_request({"prompt_token_ids": [1], "top_p": 0}, default_id="0", **LIMITS)


def test_outputs_are_written_in_the_given_order(tmp_path):
    outs = [Output("b", (1,), (2, 3), "length"), Output("a", (4,), (5,), "stop")]
    write_outputs(tmp_path / "out.jsonl", outs)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["b", "a"] and rows[0]["output_token_ids"] == [2, 3]
    assert set(rows[0]) == {"id", "prompt_token_ids", "output_token_ids", "finish_reason"}


def test_request_defaults_have_one_owner():
    """A field left out takes Request's / SamplingParams' default; the schema documents the same."""
    import dataclasses

    from shardspec.runtime.request import Request, SamplingParams
    from shardspec.runtime.requests_io import _SCHEMA

    request = make_request({"prompt_token_ids": [1]}, default_id="0", **LIMITS)
    assert request == Request("0", (1,))
    owners = {f.name: f.default for cls in (Request, SamplingParams) for f in dataclasses.fields(cls)}
    documented = {k: v["default"] for k, v in _SCHEMA["properties"].items() if "default" in v}
    assert documented and all(owners[k] == v for k, v in documented.items()), documented


# -- token ids: numpy finds the bad ones, the schema words them as it always did ------------------------------

# Ids a JSON line (or a Python caller) can hold that the schema's items refuse:
BAD_IDS = [True, False, 1.0, -0.0, 1.5, -1.5, 3e9]  # a bool (an int to numpy); floats, 1.0 too (integers are 1)
BAD_IDS += [-1, 2**31, 2**63, 2**64, 10**50, -(10**50)]  # outside [0, 2**31), past 64 bits
BAD_IDS += ["1", None, [1], [[1, 2]], {}]  # not numbers


def _problems(fields):
    """make_request's problems with `fields`, one line each."""
    with pytest.raises(ShardspecError) as err:
        make_request(fields, default_id="0", where=Source("r.jsonl", {"": 1}), **LIMITS)
    return err.value.format()


def _full_schema(fields):
    """What the full schema, walking every id, says of `fields`: make_request's messages before numpy."""
    with pytest.raises(ShardspecError) as err:
        raise_all(schema_problems(fields, Source("r.jsonl", {"": 1}), _SCHEMA))
    return err.value.format()


@pytest.mark.parametrize("name", ["prompt_token_ids", "stop_token_ids"])
@pytest.mark.parametrize("bad", BAD_IDS, ids=lambda v: repr(v)[:24])
def test_each_bad_id_has_the_schemas_problem(name, bad):
    fields = {"prompt_token_ids": [1, 2], name: [3, bad, 4, bad]}
    assert _problems(fields) == _full_schema(fields)


def test_bad_ids_among_other_bad_fields_keep_the_schemas_order():
    fields = {"prompt_token_ids": [True, -1, 2.5], "max_tokens": 0, "stop_token_ids": ["a"], "junk": 1, "top_p": 2}
    assert _problems(fields) == _full_schema(fields)
    assert _problems(fields).count("\n") == 6  # junk, max_tokens, three ids, the stop id, top_p


HINT = "(ids must be below vocab_size 512)"


def test_an_int_subclass_is_an_id_and_a_bool_is_not():
    class Token(enum.IntEnum):
        A = 3

    assert make_request({"prompt_token_ids": [Token.A] * 30}, default_id="0", **LIMITS).prompt_token_ids[0] == 3
    fields = {"prompt_token_ids": [Token.A, True, 3, False]}
    assert _problems(fields) == _full_schema(fields)


def test_ids_at_the_vocabulary_boundary():
    assert make_request({"prompt_token_ids": [0, 511]}, default_id="0", **LIMITS).prompt_token_ids == (0, 511)
    for top in (512, 2**31 - 1):  # in the schema's bounds, outside the vocabulary
        said = _problems({"prompt_token_ids": [1, top, 513]})
        assert said == f"error: r.jsonl:1: prompt_token_ids: token id {top} is outside the vocabulary {HINT}"


def test_a_prompt_longer_than_the_plan_serves_is_refused_before_its_ids_are_read():
    # 64 tokens with one bad id at the end: the plan's limit is the problem, not the id.
    assert _problems({"prompt_token_ids": [1] * 64 + ["x"]}).endswith(
        "r.jsonl:1: max_tokens: prompt 65 + max_tokens 16 exceeds the maximum length 64 "
        "(shorten the prompt to under 64 tokens)"
    )
    # Another field's problem is still reported (and the length once it is fixed).
    assert _problems({"prompt_token_ids": [1] * 64 + ["x"], "top_k": "2"}) == (
        "error: r.jsonl:1: top_k: expected an integer, got '2'"
    )


def test_a_line_of_junk_reports_the_first_problems_and_a_count():
    ids = _problems({"prompt_token_ids": [-1] * 30})
    assert ids.splitlines()[0] == "error: r.jsonl:1: prompt_token_ids: 30 bad ids, the first 20 shown"
    assert ids.count("is below the minimum 0") == 20
    keys = _problems({"prompt_token_ids": [1], **{f"k{i}": 1 for i in range(25)}}).splitlines()
    assert len(keys) == 21 and keys[-1].startswith("error: r.jsonl:1: 25 unknown keys, the first 20 shown")
    stop = _problems({"prompt_token_ids": [1], "stop": ["a"] * 100_000})  # not 100,000 strings walked
    assert stop == "error: r.jsonl:1: stop: a list is longer than 16"


def test_the_id_rules_are_the_ones_numpy_checks():
    """numpy checks a token id's type and bounds only: a rule added to the ids' schema needs code there too."""
    for name in ("prompt_token_ids", "stop_token_ids"):
        items = _SCHEMA["properties"][name]["items"]
        assert items.keys() == {"type", "minimum", "maximum"} and items["type"] == "integer"


# Values of the kinds json.loads makes, NaN aside (jsonschema's bounds let it through, msgspec's do not).
JSON_VALUES = [*BAD_IDS, 0, 1, 16, 20, 21, 2**31 - 1, 4294967295, 4294967296, 2**63 - 1, -(2**63), -(2**63) - 1]
JSON_VALUES += [0.5, 1.0, 100.0, 100.5, "", "a", "x" * 256, "x" * 257, "😀" * 256, "😀" * 257, "\ud800"]
JSON_VALUES += [[], ["a"], ["a"] * 16, ["a"] * 17, [""], [1] * 1025, {"a": 1}, {}, {"17": 5}, {"1": -100.5}]


class IntId(enum.IntEnum):
    A = 3


# Values a Python caller can pass that json.loads never makes: some the schema takes, some not.
PYTHON_VALUES = [float("nan"), IntId.A, np.int64(3), np.float64(0.5), np.bool_(True), (1,), ("a",), {1}, frozenset()]
PYTHON_VALUES += [types.MappingProxyType({}), [IntId.A], ["a", ("a",)]]


@pytest.mark.parametrize("name", sorted(_SCHEMA["properties"].keys() - set(_DEEP_FIELDS)))
def test_the_fast_check_passes_nothing_the_schema_refuses(name):
    """msgspec, the fast test that lets a good request skip jsonschema's walk, never says yes where jsonschema says
    no; on JSON's values it says what jsonschema says. Each field is checked where it is, in a request."""
    schema = {"type": "object", "properties": {name: _SCHEMA["properties"][name]}}
    fast, full = fast_check(schema), validator(schema)
    assert [v for v in JSON_VALUES + PYTHON_VALUES if fast({name: v}) and not full.is_valid({name: v})] == []
    assert [v for v in JSON_VALUES if fast({name: v}) != full.is_valid({name: v})] == []
    assert any(fast({name: v}) for v in JSON_VALUES)  # and it does pass the good ones


def test_the_fast_check_of_a_whole_request():
    """The request's fast check, as requests_io builds it: a field deeper than msgspec's type looks
    (structured_outputs) is left out, so a request that has one is left to jsonschema."""
    rng = random.Random(0)
    shallow = {k: v for k, v in _SCHEMA["properties"].items() if k not in _DEEP_FIELDS}
    fast, full = fast_check({**_SCHEMA, "properties": shallow}), validator(_SCHEMA)
    values = [*BAD_IDS, 0, 1, 3, 0.5, "a", "", [1, 2], ["a"], IntId.A, (1,), float("nan")]
    for _ in range(2000):
        fields = {k: rng.choice(values) for k in rng.sample([*_SCHEMA["properties"], "junk"], rng.randrange(4))}
        assert not fast(fields) or full.is_valid(fields), fields
    assert fast({"prompt_token_ids": [1], "max_tokens": 3, "stop": "a"}) and not fast({"junk": 1})
    assert not fast({"prompt_token_ids": [1], "structured_outputs": {"regex": "a+"}})  # jsonschema walks it
    assert not fast(types.MappingProxyType({"prompt_token_ids": [1]}))


def test_the_fast_check_where_msgspecs_rules_are_not_the_schemas():
    # The same rules: an integer is 8, not 8.0 or True; a number an int or a float, not a bool.
    integer, number = fast_check({"type": "integer"}), fast_check({"type": "number", "maximum": 2**53})
    assert integer(8) and not integer(8.0) and not integer(True)
    assert number(8) and number(0.5) and not number(True)
    assert not number(2**53 + 1)  # an int compared as an int: as a float it would be 2**53, in bounds
    # msgspec takes a tuple or a set for a list and any mapping for a dict; the schema does not.
    array, mapping = fast_check({"type": "array"}), fast_check({"type": "object"})
    assert array([1]) and not any(map(array, [(1,), {1}, frozenset([1])]))
    assert mapping({}) and not mapping(types.MappingProxyType({}))
    assert not fast_check({"type": "object", "properties": {"a": {"type": "array"}}})({"a": (1,)})
    # A lone surrogate (json.loads makes one of "\ud800") where msgspec wants no string: it raises, not refuses.
    assert not integer("\ud800") and not mapping({"\ud800": 1}) and fast_check({"type": "string"})("\ud800")
    # msgspec takes a subclass of int as an int, as shardspec's integers do; the fast check leaves it to jsonschema.
    assert not integer(IntId.A) and validator({"type": "integer"}).is_valid(IntId.A)
    # A field whose values follow one schema (logit_bias): keys by pattern, values by bounds, size by maxProperties.
    bias = {"type": "object", "maxProperties": 2, "propertyNames": {"pattern": "^[0-9]+$"},
            "additionalProperties": {"type": "number", "maximum": 100}}  # fmt: skip
    field = fast_check({"type": "object", "properties": {"b": bias}})
    assert field({"b": {"1": 5, "22": -1.5}}) and field({"b": {}})
    assert not field({"b": {"x": 1}}) and not field({"b": {"1": 101}}) and not field({"b": {"1": 1, "2": 2, "3": 3}})


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "^a"},  # a keyword not translated
        {"type": "object", "required": ["a"]},
        {"type": "integer", "maxLength": 3},  # a keyword of another type
        {"type": "array", "items": [{"type": "integer"}]},  # a schema that is not an object
        {"type": "array", "items": False},
        {"type": "object", "additionalProperties": {"type": "integer"}},
        {"enum": [1, 2]},  # neither type nor anyOf
        {"type": "decimal"},
        {"anyOf": [{"type": "integer"}], "minimum": 0},  # anyOf and another keyword
        {"anyOf": [{"type": "integer"}, {"type": "number"}]},  # two of a kind: msgspec would check both
        {"type": "array", "items": {"type": "array"}},  # a list in a list: msgspec would take a tuple
        {"type": "integer", "minimum": 0.5},  # bounds msgspec would not compare exactly
        {"type": "number", "maximum": 2**63 - 1},
        {"type": "integer", "maximum": 2**64},  # msgspec's own refusal: past int64
    ],
    ids=repr,
)
def test_the_fast_check_refuses_a_schema_it_does_not_translate(schema):
    """A keyword the translation does not know fails here (and at import, the request schema's): never a fast check
    that quietly passes what the schema refuses."""
    with pytest.raises((ValueError, TypeError), match="not translated|int64"):
        fast_check(schema)


def test_parsing_a_line_leaves_the_gc_as_it_was():
    """parse_json turns the cyclic GC off while it parses (a line of a million lists): on or off, as it was."""
    assert gc.isenabled()
    parse_json('{"prompt_token_ids": [[], []]}')
    assert gc.isenabled()
    gc.disable()
    try:
        parse_json("[]")
        assert not gc.isenabled()
    finally:
        gc.enable()
