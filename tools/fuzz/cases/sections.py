"""Whole hostile top-level sections of a strategy: (kind, section text, the sections it replaces)."""

from ..values import REGEXES


def hostile_section(rng) -> tuple[str, str, list[str]]:
    """(kind, top-level section text, sections it replaces) of a hostile whole section."""
    return rng.choice(_SECTIONS)(rng)


def _regex_params(rng) -> tuple[str, str, list[str]]:
    kind, regex = rng.choice(REGEXES)
    axes = rng.choice(["[null, null]", "[embed, heads]", "[]", "[nope]", "5", "[null, null, null]"])
    quoted = "'" + regex.replace("'", "''") + "'"
    return f"params.match {kind}", f"params:\n  - match: {quoted}\n    axes: {axes}\n", ["params"]


def _huge_mesh(rng) -> tuple[str, str, list[str]]:
    sizes = [1, 2, 8, 256, 4096, 65536, 65537]
    d, t, e = (rng.choice(sizes) for _ in range(3))
    a = rng.choice(["auto", 1, t, 65536])
    model = rng.choice(["llama3-tiny", "llama3-70b", "mixtral-tiny", "qwen3-moe-tiny", "tests/fixtures/hf/llama"])
    text = (
        f"model: {model}\nparallelism: {{data: {d}, tensor: {t}, attention_data: {a}, expert: {e}}}\n"
        "policy: {unmatched: replicate, indivisible: replicate}\n"
    )
    return "huge parallelism + replicate policy", text, ["model", "parallelism", "policy", "devices"]


def _rules(rng) -> tuple[str, str, list[str]]:
    logical = rng.choice(["batch", "heads", "mlp", "vocab", "kv_pages", "nonexistent", "''", "λ", "x" * 5000])
    value = rng.choice(
        ["data", "[data, data]", "[model, attn_dp, model]", "nope", "[]", "null", "8", "[[data]]", "{a: b}"]
    )
    return "rules", f"rules:\n  {logical}: {value}\n", ["rules"]


def _expect(rng) -> tuple[str, str, list[str]]:
    body = rng.choice(
        [
            "{per_layer: {all-reduce: -1}}",
            "{per_layer: {all-reduce: .nan}}",
            "{per_layer: 5}",
            "{total: {nope: 1}}",
            "{per_layer: {all-reduce: " + "9" * 5000 + "}}",
            "[]",
            "{per_layer: {}, total: {}}",
        ]
    )
    return "expect", f"expect: {body}\n", ["expect"]


def _billion_laughs(rng) -> tuple[str, str, list[str]]:
    laughs = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]\n"
        for i in range(1, 9)
    )
    return "anchors: billion laughs", laughs, []


def _merge_key(rng) -> tuple[str, str, list[str]]:
    text = "base: &b {data: 1, tensor: 8}\nparallelism:\n  <<: *b\n  attention_data: auto\n"
    return "anchors: merge key", text, ["parallelism"]


def _size_extremes(rng) -> tuple[str, str, list[str]]:
    extremes = rng.choice(
        [
            "kv_cache: {page_size: 4096, num_pages: 2147483648}\n",
            "kv_cache: {page_size: 1, num_pages: 1}\n",
            "kv_cache: {num_pages: 0}\n",
            "runtime: {max_model_len: 16777216, max_num_batched_tokens: 1048576, max_num_seqs: 65536}\n",
            "runtime: {max_model_len: 1, max_num_batched_tokens: 1, max_num_seqs: 1}\n",
            "multihost: {data: 65536}\n",
            "multihost: {model: 3}\n",
            "devices: 65536\n",
        ]
    )
    return "size extremes", extremes, [extremes.split(":")[0]]


# regexes and huge meshes twice as often as the others
_SECTIONS = (
    _regex_params,
    _regex_params,
    _huge_mesh,
    _huge_mesh,
    _rules,
    _expect,
    _billion_laughs,
    _merge_key,
    _size_extremes,
)
