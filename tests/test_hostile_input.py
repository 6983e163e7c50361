"""Every bad value a user can give is exit 2 with its location, never exit 1 or a hang.

One case per kind of input a fuzzing run broke before (strategy YAML, `--set`,
files that are not files, sizes, checkpoint config.json, requests, flags), each
checked through the command line as a user meets it.
"""

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from shardspec import ShardspecError, compile, load
from shardspec.cli.main import app
from shardspec.runtime.engine import Engine
from shardspec.runtime.request import Request, SamplingParams

from conftest import ROOT

runner = CliRunner()
TP = str(ROOT / "strategies" / "tp.yaml")
BASE = "model: llama3-tiny\nparallelism:\n  tensor: 8\n"


def _exit_2(*args) -> str:
    """stderr of a command that must fail as a user error, one located line per problem."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    return result.stderr


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("e: 2020-02-30", ":4: e: !!timestamp '2020-02-30' is not a valid timestamp (quote it if it is meant as text)"),
        ("e: !!int a", ":4: e: !!int 'a' is not a valid int"),
        ("e: !!float c", ":4: e: !!float 'c' is not a valid float"),
        ("e: !!bool maybe", ":4: e: !!bool 'maybe' is not a valid bool"),
        ("e: " + "9" * 5000, ":4: e: integer '99999999999999999999'... (5,000 characters) is out of range"),
        ("e: 0x" + "f" * 4000, ":4: e: integer '0xffffffffffffffffff'... (4,002 characters) is out of range"),
        ("e: .nan", ":4: e: .nan is not a finite number"),
        ("e: " + "[" * 300 + "]" * 300, ":4: nested more than 50 levels deep"),
        ("params:\n- {match: 'a{1001}', axes: [null]}", ":5: params[0].match: invalid regex 'a{1001}'"),
        ("params:\n- {match: '" + "(" * 1200 + ")" * 1200 + "', axes: [null]}", ":5: params[0].match: "),
        (
            "params:\n- {match: '(?=a)b', axes: [null]}",
            ":5: params[0].match: invalid regex '(?=a)b': invalid perl operator: (?= "
            "(RE2 takes Python's syntax without lookarounds or backreferences)",
        ),
    ],
)
def test_strategy_values_yaml_cannot_construct_are_located(tmp_path, extra, expected):
    path = tmp_path / "s.yaml"
    path.write_text(BASE + extra + "\n")
    assert f"error: {path}{expected}" in _exit_2("validate", str(path))


def test_a_catastrophic_regex_is_matched_in_linear_time(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(BASE + "params:\n- {match: '(.*.*)*x', axes: [null]}\n")
    assert "params[0].match: '(.*.*)*x' matches no parameter" in _exit_2("validate", str(path))


def test_a_device_product_beyond_any_machine_is_refused_before_anything_is_sized(tmp_path):
    path = tmp_path / "s.yaml"
    text = "model: llama3-tiny\nparallelism: {data: 65536, tensor: 65536, expert: 65536}\n"
    path.write_text(text + "policy: {unmatched: replicate, indivisible: replicate}\n")
    err = _exit_2("explain", str(path))
    assert f"error: {path}:2: parallelism: data 65536 x tensor 65536 x expert 65536" in err
    assert "more than the 65,536 shardspec lays out" in err


@pytest.mark.parametrize(
    "value, expected",
    [
        ("!!int a", "error: --set: parallelism.tensor: !!int 'a' is not a valid int"),
        ("2020-02-30", "error: --set: parallelism.tensor: !!timestamp '2020-02-30' is not a valid timestamp"),
        ("9" * 5000, "error: --set: parallelism.tensor: integer"),
    ],
)
def test_set_values_take_the_same_checks(value, expected):
    assert expected in _exit_2("validate", TP, "--set", f"parallelism.tensor={value}")


def test_set_of_a_key_the_file_lacks_blames_set():
    assert _exit_2("validate", TP, "--set", "nonexistent.key=1").startswith("error: --set: unknown key 'nonexistent'")


def test_a_compile_error_caused_by_set_is_located_at_set():
    err = _exit_2(
        "validate", str(ROOT / "strategies" / "dp.yaml"), "--set", "parallelism.tensor=3", "--set", "devices=3"
    )
    assert err.startswith("error: --set: parallelism: data 8 x tensor 3 x expert 1 = 24 devices, but devices: 3")
    assert "(parallelism.tensor from --set, the rest from " in err


def _fifo(tmp_path):
    os.mkfifo(tmp_path / "fifo.yaml")
    return str(tmp_path / "fifo.yaml")


def _loop(tmp_path):
    os.symlink(tmp_path / "b.yaml", tmp_path / "a.yaml")
    os.symlink(tmp_path / "a.yaml", tmp_path / "b.yaml")
    return str(tmp_path / "a.yaml")


def _big(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# " + b"x" * (2 << 20) + b"\n")
    return str(path)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda _: "/dev/zero", "is not a regular file"),
        (_fifo, "is not a regular file"),
        (lambda tmp: str(tmp), "is a directory"),
        (_loop, "symbolic link loop"),
        (_big, "is 2.0 MiB, more than the 1 MiB this file may be"),
    ],
    ids=["dev-zero", "fifo", "directory", "symlink-loop", "2-MiB"],
)
def test_a_strategy_that_is_not_a_small_regular_file_is_refused_before_reading(tmp_path, make, expected):
    path = make(tmp_path)
    assert _exit_2("validate", path).startswith(f"error: {path}: {expected}")
    if not path.endswith("big.yaml"):  # a request file may be larger (it reads as bad JSON)
        assert _exit_2("run", TP, "--prompts", path).startswith(f"error: {path}: {expected}")


def test_a_nul_in_a_path_is_a_user_error():
    with pytest.raises(ShardspecError, match="cannot contain a NUL"):
        load("abc\x00")


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"num_attention_heads": 0}, "num_attention_heads: 0 is below the minimum 1"),
        ({"hidden_size": "64"}, "hidden_size: expected an integer or null, got '64'"),
        ({"hidden_size": 64.0}, "hidden_size: expected an integer or null, got 64.0"),
        ({"num_hidden_layers": 1000000000}, "num_hidden_layers: 1000000000 is above the maximum 4096"),
        ({"rope_scaling": {"rope_type": "llama3"}}, "rope_scaling: llama3 rope scaling needs factor, low_freq_factor"),
        ({"rope_scaling": "linear"}, "rope_scaling: expected a mapping or null, got 'linear'"),
        ({"max_position_embeddings": 2.5}, "max_position_embeddings: expected an integer or null, got 2.5"),
        ({"eos_token_id": "2"}, "eos_token_id: expected an integer, a list or null, got '2'"),
        ({"eos_token_id": [2, "x"]}, "eos_token_id[1]: expected an integer, got 'x'"),
        ({"num_key_value_heads": 3}, "num_heads 8 not a multiple of num_kv_heads 3"),
        ({"hidden_size": 65, "head_dim": None}, "hidden_size: hidden_size 65 is not a multiple of num_attention_heads"),
    ],
)
def test_checkpoint_config_fields_are_typed_and_bounded(tmp_path, change, expected):
    directory = tmp_path / "llama"
    shutil.copytree(ROOT / "tests" / "fixtures" / "hf" / "llama", directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **change}))
    assert f"error: {directory / 'config.json'}: {expected}" in _exit_2("validate", TP, "--model", str(directory))


def test_an_index_whose_weight_map_is_a_list_or_points_outside(tmp_path):
    directory = tmp_path / "llama"
    shutil.copytree(ROOT / "tests" / "fixtures" / "hf" / "llama", directory)
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": ["a"]}))
    assert f"error: {index}: weight_map: expected a mapping, got a list" in _exit_2(
        "validate", TP, "--model", str(directory)
    )
    index.write_text(json.dumps({"weight_map": {"x": "../../etc/passwd"}}))
    assert "is not a file name (no directories)" in _exit_2("validate", TP, "--model", str(directory))


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"prompt_token_ids": [1], "top_k": 2147483648}', ":1: top_k: 2147483648 is above the maximum 2147483647"),
        ('{"prompt_token_ids": [1], "temperature": NaN}', ":1: not JSON: NaN is not a number JSON allows"),
        ('{"prompt_token_ids": [1], "top_p": Infinity}', ":1: not JSON: Infinity is not a number JSON allows"),
        ('{"prompt_token_ids": [1000000]}', ":1: prompt_token_ids: token id 1000000 is outside the vocabulary"),
    ],
)
def test_request_lines_are_bounded_where_the_runtime_stores_them(tmp_path, line, expected):
    path = tmp_path / "r.jsonl"
    path.write_text(line + "\n")
    assert f"error: {path}{expected}" in _exit_2("run", TP, "--prompts", str(path))


def test_request_lines_end_at_newline_only_and_a_bom_is_read(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = [
        '{"id": "a\u2028b", "prompt_token_ids": [1], "max_tokens": 1}',  # U+2028 inside a string: valid JSON
        '{"id": "c\x0cd", "prompt_token_ids": [1]}',  # a raw form feed: not JSON, at its own line
        '{"prompt_token_ids": [99999]}',
    ]
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())
    assert _exit_2("run", TP, "--prompts", str(path)).splitlines() == [
        f"error: {path}:2: not JSON: Invalid control character at (column 10)",
        f"error: {path}:3: prompt_token_ids: token id 99999 is outside the vocabulary "
        "(ids must be below vocab_size 512)",
    ]
    path.write_bytes(b'{"prompt_token_ids": [1]}\n{"prompt_token_ids": [1, \xff]}\n')
    assert _exit_2("run", TP, "--prompts", str(path)).startswith(f"error: {path}:2: not UTF-8 text (byte 0xff)")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model", ""], "error: --model: unknown model ''"),
        (["--model", "/no/such/dir"], "error: --model: unknown model '/no/such/dir'"),
        (["--input-len", "1000000000"], "error: --input-len: the longest request: prompt 1000000000 + max_tokens 32"),
        (["--output-len", "1:999999"], "error: --output-len: the longest request: prompt 96 + max_tokens 999999"),
        (["--output", "/no/such/dir/out.jsonl"], "error: /no/such/dir/out.jsonl: no directory '/no/such/dir'"),
    ],
)
def test_flags_are_checked_before_any_work_and_blamed_by_name(args, expected):
    assert _exit_2("run", TP, *args).startswith(expected)


def test_usage_errors_and_odd_paths_are_one_error_line():
    assert _exit_2("run", TP, "-n", "0").startswith("error: Invalid value for '--num-requests' / '-n'")
    assert _exit_2("run", TP, "--seed", "-1").startswith("error: Invalid value for '--seed'")
    assert _exit_2("explain").startswith("error: Missing argument 'strategy'.")
    assert _exit_2("explain", "") == "error: STRATEGY: the strategy path is empty (give a strategy file)\n"
    assert (
        _exit_2("validate", "a\nb.yaml")
        == "error: a\\nb.yaml: file not found (check the path; it is relative to the working directory)\n"
    )


def test_a_config_json_nested_past_python_recursion_is_a_user_error(tmp_path):
    directory = tmp_path / "deep"
    directory.mkdir()
    (directory / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    assert _exit_2("validate", TP, "--model", str(directory)).startswith(
        f"error: {directory / 'config.json'}: not valid JSON: nested too deeply"
    )


def test_a_request_object_is_checked_like_a_request_line():
    engine = Engine(compile(load(TP, overrides={"parallelism.tensor": "1", "devices": "1"})))
    bad = [
        Request("a", (10**6,)),
        Request("b", (1,), sampling=SamplingParams(top_k=2**31)),
        Request("c", (1,), sampling=SamplingParams(temperature=float("nan"))),
        Request("d", (1,), max_tokens=0),
    ]
    for request in bad:
        with pytest.raises(ShardspecError) as info:
            engine.add_request(request)
        assert all(p.path for p in info.value.problems), info.value.format()
    assert not engine.has_unfinished()


def test_an_internal_error_names_where_it_happened(monkeypatch):
    import shardspec.plan

    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(shardspec.plan, "compile", broken)
    result = runner.invoke(app, ["validate", TP])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith("internal error in ") and "KeyError: 'boom'" in result.stderr
