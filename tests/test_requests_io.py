"""Request files: every bad line reported with its line and field, nothing run."""

import json

import pytest

from shardspec import ShardspecError
from shardspec.runtime.request import Output
from shardspec.runtime.requests_io import make_request, read_requests, write_outputs
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
