"""shardspec._yaml: safe YAML with line numbers, and every way a file can be unsafe."""

import time

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from shardspec import _yaml
from shardspec.errors import ShardspecError


def error_text(text, file="s.yaml"):
    with pytest.raises(ShardspecError) as info:
        _yaml.parse_document(text, file)
    return str(info.value)


def test_lines_of_keys_and_list_items():
    text = (
        "name: x\n"  # 1
        "parallelism:\n"  # 2
        "  tensor: 8\n"  # 3
        "params:\n"  # 4
        "  - match: a\n"  # 5
        "    axes: [embed]\n"  # 6
        "rules: {mlp: model}\n"  # 7
    )
    data, lines = _yaml.parse_document(text, "s.yaml")
    assert data == {
        "name": "x",
        "parallelism": {"tensor": 8},
        "params": [{"match": "a", "axes": ["embed"]}],
        "rules": {"mlp": "model"},
    }
    assert lines == {
        "name": 1,
        "parallelism": 2,
        "parallelism.tensor": 3,
        "params": 4,
        "params[0]": 5,
        "params[0].match": 5,
        "params[0].axes": 6,
        "params[0].axes[0]": 6,
        "rules": 7,
        "rules.mlp": 7,
    }


def test_bytes_are_decoded_and_a_bom_is_ignored():
    data, lines = _yaml.parse_document("\ufeffname: café\n".encode(), "s.yaml")
    assert data == {"name": "café"} and lines == {"name": 1}


def test_merge_keys_explicit_key_wins_and_keeps_its_line():
    text = "base: &b {page_size: 8, dtype: float32}\nkv_cache:\n  <<: *b\n  page_size: 32\n"
    data, lines = _yaml.parse_document(text, "s.yaml")
    assert data["kv_cache"] == {"page_size": 32, "dtype": "float32"}
    assert lines["kv_cache.page_size"] == 4
    assert lines["kv_cache.dtype"] == 1


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system",
        "!!python/name:os.system",
        "!!python/object:collections.OrderedDict",
        "!custom",
    ],
)
def test_unsafe_tags_are_rejected_and_never_constructed(tag, tmp_path):
    marker = tmp_path / "ran"
    text = f"name: x\nrules:\n  mlp: {tag} ['touch {marker}']\n"
    assert error_text(text) == (
        f"error: s.yaml:3: rules.mlp: the tag {tag} is not allowed "
        "(a strategy is plain data: values, lists and mappings)"
    )
    assert not marker.exists()


def test_alias_bomb_is_rejected_quickly():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    start = time.perf_counter()
    message = error_text("\n".join(lines) + "\n")
    assert time.perf_counter() - start < 0.5
    assert message == (
        "error: s.yaml:4: the document expands to more than 10000 values (anchors and aliases nested too deeply)"
    )


def test_recursive_alias_is_rejected():
    assert error_text("name: x\nloop: &a [1, *a]\n") == (
        "error: s.yaml:2: an anchor is used inside itself (recursive alias)"
    )


def test_syntax_error_has_its_line():
    assert error_text("name: x\nparallelism:\n  tensor: 8\n   data: 2\n") == (
        "error: s.yaml:4: invalid YAML: mapping values are not allowed here"
    )


def test_unclosed_quote_says_where_it_started():
    assert error_text("name: x\nmodel: 'llama\nruntime: {}\n") == (
        "error: s.yaml:4: invalid YAML: found unexpected end of stream (while scanning a quoted scalar at line 2)"
    )


def test_two_documents_are_an_error():
    assert "expected a single document" in error_text("name: a\n---\nname: b\n")


def test_non_utf8_bytes_name_their_line():
    assert error_text(b"name: x\nmodel: caf\xe9\n") == (
        "error: s.yaml:2: not UTF-8 text (byte 0xe9) (save the file as UTF-8)"
    )


def test_control_characters_are_a_yaml_error():
    assert error_text("name: x\nmodel: a\x07b\n") == (
        "error: s.yaml:2: invalid YAML: character #x0007: special characters are not allowed"
    )


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_document(text):
    assert error_text(text) == "error: s.yaml: the file is empty (a strategy needs at least `parallelism:`)"


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "a list"), ("8\n", "'8'"), ("!!set {a, b}\n", "a mapping")])
def test_top_level_must_be_a_mapping(text, kind):
    assert error_text(text) == (
        f"error: s.yaml:1: the top level must be a mapping (name:, parallelism:, ...), got {kind}"
    )


def test_duplicate_keys_are_rejected_at_the_second():
    text = "name: x\nparallelism:\n  tensor: 8\n  data: 2\n  tensor: 4\nname: y\n"
    assert error_text(text).splitlines() == [
        "error: s.yaml:5: parallelism.tensor: duplicate key 'tensor' (first at line 3) (keep one of them)",
        "error: s.yaml:6: name: duplicate key 'name' (first at line 1) (keep one of them)",
    ]


def test_keys_must_be_text():
    assert error_text("name: x\nmultihost:\n  1: 2\n") == (
        "error: s.yaml:3: multihost: keys must be text, got '1' (quote the key)"
    )


def test_join_path():
    assert _yaml.join_path([]) == ""
    assert _yaml.join_path(["params", 0, "axes", 1]) == "params[0].axes[1]"
    assert _yaml.join_path(["expect", "per_layer", "all-reduce"]) == "expect.per_layer.all-reduce"


def test_parse_value():
    assert _yaml.parse_value("least_tokens", "--set") == "least_tokens"
    assert _yaml.parse_value("[data, model]", "--set") == ["data", "model"]
    assert _yaml.parse_value("", "--set") is None
    with pytest.raises(ShardspecError, match="not allowed"):
        _yaml.parse_value("!!python/name:os.system", "--set")


# Plain data as strategies hold it: text keys; scalars, lists and mappings.
_keys = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=8)
# Control and line-separator characters are left out: YAML counts U+0085,
# U+2028 and U+2029 as line breaks, which would shift the line numbers checked.
_text = st.text(st.characters(exclude_categories=["Cs", "Cc", "Zl", "Zp"]), max_size=8)
_scalars = st.none() | st.booleans() | st.integers(-_yaml.MAX_INT, _yaml.MAX_INT) | _text
_data = st.dictionaries(
    _keys,
    st.recursive(
        _scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3), max_leaves=10
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(_data)
def test_same_data_as_safe_load_and_every_key_has_a_line(data):
    text = yaml.safe_dump(data, allow_unicode=True)
    parsed, lines = _yaml.parse_document(text, "s.yaml")
    # Compared with PyYAML's own reading, not with `data`: PyYAML's dump/load
    # round trip itself changes some characters (e.g. U+0085 becomes a space).
    assert parsed == yaml.safe_load(text)
    assert all(key in lines for key in data)
    assert all(1 <= n <= text.count("\n") for n in lines.values())
