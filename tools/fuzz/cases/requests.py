"""The requests target: a request JSONL file, mutated by field, line or bytes
-> run strategies/attention_dp.yaml --prompts FILE."""

from ..config import FAST, RUN_STRATEGY, VOCAB
from ..seeds import Seeds
from ..show import brief
from ..values import JSON_VALUES, REQUEST_EDGE_VALID, REQUEST_FIELDS
from .encode import bytes_file, jsonl, text_file
from .raw import raw_mutation


def _valid_request(rng, i: int) -> dict:
    req = {
        "id": f"r{i}",
        "prompt_token_ids": [rng.randrange(VOCAB) for _ in range(rng.randint(1, 12))],
        "max_tokens": rng.randint(1, 3),
    }
    if rng.random() < 0.7:
        req["ignore_eos"] = True
    if rng.random() < 0.3:
        req.update(temperature=rng.choice([0, 0.7, 1.3]), top_k=rng.choice([0, 5, -1]), seed=rng.randrange(1000))
    if rng.random() < 0.2:
        req["top_p"] = rng.choice([1, 0.9, 0.5])
    if rng.random() < 0.1:
        req["logprobs"] = rng.randint(0, 5)
    return req


def _stored(field: str, value) -> bool:
    """Whether the runtime can hold `value`: top_k an int32, an id at most 256 characters or an int64."""
    if field == "top_k":
        return value < 2**31
    if field == "id":
        return len(value) <= 256 if isinstance(value, str) else abs(value) < 2**63
    return True


def gen_requests(rng, seeds: Seeds) -> dict:
    reqs = [_valid_request(rng, i) for i in range(rng.randint(1, 4))]
    valid, content, desc, kind = _mutate(rng, reqs)
    if content is None:
        content = jsonl(reqs)
    argv = ["run", RUN_STRATEGY, "--prompts", "{tmp}/in.jsonl", "--output", "{tmp}/out.jsonl", *FAST]
    json_out = rng.random() < 0.5
    if json_out:
        argv.append("--json")
    checks = {"json_stdout": json_out}
    if valid:
        checks["output_ids"] = [str(r.get("id", i + 1)) for i, r in enumerate(reqs)]
        checks["output_file"] = "{tmp}/out.jsonl"
    return {
        "kind": kind,
        "desc": f"$TMP/in.jsonl: {desc}",
        "files": {"in.jsonl": bytes_file(content) if isinstance(content, bytes) else text_file(content)},
        "argv": argv,
        "expect_ok": valid,
        "checks": checks,
    }


def _mutate(rng, reqs: list[dict]) -> tuple[bool, str | bytes | None, str, str]:
    """One mutation of `reqs` (in place) or of their file: (still valid, file content or None for
    `reqs` as JSONL, description, kind)."""
    valid, content = True, None
    op = rng.randrange(12)
    j = rng.randrange(len(reqs))
    if op <= 3:  # a hostile field value
        field = rng.choice(REQUEST_FIELDS + ["unknown_field"])
        value = rng.choice(JSON_VALUES)
        reqs[j][field] = value
        valid = False
        desc, kind = f"line {j + 1}: {field} = {brief(value)}", f"field {field}"
    elif op <= 5:  # an edge value the schema allows
        field = rng.choice(sorted(REQUEST_EDGE_VALID))
        value = rng.choice(REQUEST_EDGE_VALID[field])
        reqs[j][field] = value
        desc, kind = f"line {j + 1}: {field} = {brief(value)} (schema-valid)", f"edge {field}"
        if field == "id" and len({str(r["id"]) for r in reqs}) < len(reqs):
            valid = False
        if not _stored(field, value):  # allowed by the old schema, refused where the runtime stores it
            valid = False
    elif op == 6:
        reqs[j]["id"] = rng.choice(["a\u2028b", "a\x85b", "a\u2029b", "line\u2028sep"])
        content = jsonl(reqs, ascii_only=False)  # the raw separator inside a JSON string: still valid JSON
        desc, kind = f"line {j + 1}: id {reqs[j]['id']!r} written unescaped", "U+2028/NEL inside a string"
    elif op == 7:
        content = jsonl(reqs).replace("\n", "\r\n")
        if rng.random() < 0.5:
            content = "\n  \n" + content + "\n\n"
        desc, kind = "CRLF line ends (and maybe blank lines)", "CRLF/blank lines"
    elif op == 8:  # the same id twice, or one line given twice
        reqs.append(dict(reqs[j]))
        valid = False
        desc, kind = f"line {len(reqs)} repeats line {j + 1}", "duplicate id"
    elif op == 9:  # whole-line garbage
        junk, kind = rng.choice(_junk_lines())
        lines = jsonl(reqs).splitlines()
        lines.insert(rng.randrange(len(lines) + 1), junk)
        content, valid = "\n".join(lines) + "\n", False
        desc = f"a line {brief(junk)}"
    elif op == 10:  # bytes
        data, desc, kind, still = raw_mutation(rng, jsonl(reqs), comments=False)
        content, valid = data, still
    else:
        desc, kind = "a valid file", "valid"
    return valid, content, desc, kind


def _junk_lines() -> list[tuple[str, str]]:
    """(line, kind) of whole lines that are no request (built per call: some are megabytes)."""
    return [
        ("[" * 100_000 + "]" * 100_000, "deep nesting"),
        ('{"prompt_token_ids": [1], "max_tokens": 1}' * 2, "two objects on a line"),
        ("[1, 2]", "array line"),
        ("NaN", "NaN line"),
        ('{"prompt_token_ids": [1], "max_tokens": 1,}', "trailing comma"),
        ('{"prompt_token_ids": [1], "prompt_token_ids": [2], "max_tokens": 1}', "duplicate key"),
        ('{"prompt_token_ids": [' + "1," * 200_000 + "1]}", "huge prompt"),
        ('{"id": "' + "x" * 5_000_000 + '", "prompt_token_ids": [1]}', "5 MB line"),
        ('{"prompt_token_ids": [1], "max_tokens": 1, "id": "a\x0cb"}', "raw \\x0c in a string"),
        ('{"prompt_token_ids": [1], "max_tokens": 1e400}', "1e400"),
        ('{"prompt_token_ids": [1], "max_tokens": ' + "9" * 5000 + "}", "5000-digit int"),
        ('{"prompt_token_ids": [1], "temperature": NaN, "max_tokens": 1}', "NaN literal"),
        ('{"prompt_token_ids": [1], "temperature": Infinity, "max_tokens": 1}', "Infinity literal"),
        ('{"prompt_token_ids": [1], "max_tokens": 1, "id": "\\ud800"}', "lone surrogate escape"),
    ]
