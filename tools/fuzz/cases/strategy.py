"""The strategy target: a seed strategy or example YAML, mutated by line, by bytes or by a whole section,
run through validate / explain / explain --format json."""

import re

from ..seeds import Seeds
from ..show import brief
from ..values import YAML_KEYS, YAML_VALUES
from .encode import bytes_file, text_file
from .raw import raw_mutation
from .sections import hostile_section

_KV = re.compile(
    r"^(?P<indent>\s*)(?P<key>[^\s#:][^:#]*?):(?P<sep>[ \t]*)(?P<value>[^#\s][^#]*?)?(?P<comment>\s+#.*)?$"
)


def _kv_lines(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if _KV.match(line)]


def _remove_section(lines: list[str], key: str) -> list[str]:
    """Drop the top-level `key:` block (the line and the indented lines under it)."""
    out, skipping = [], False
    for line in lines:
        if re.match(rf"^{re.escape(key)}\s*:", line):
            skipping = True
            continue
        if skipping and (line.startswith((" ", "\t")) or not line.strip()):
            continue
        skipping = False
        out.append(line)
    return out


def _mutate_lines(rng, lines: list[str]) -> tuple[list[str], str, str]:
    """One line-level mutation: (new lines, description, kind)."""
    kv = _kv_lines(lines)
    op = rng.randrange(8)
    if op <= 2 and kv:  # replace a scalar value (the most common edit)
        i = rng.choice(kv)
        m = _KV.match(lines[i])
        kind, value = rng.choice(YAML_VALUES)
        new = f"{m['indent']}{m['key']}: {value}{m['comment'] or ''}"
        return _put(lines, i, new), f"line {i + 1}: {brief(lines[i].strip())} -> {brief(new.strip())}", kind
    if op == 3 and kv:  # replace a key
        i = rng.choice(kv)
        m = _KV.match(lines[i])
        kind, key = rng.choice(YAML_KEYS)
        new = f"{m['indent']}{key}:{m['sep']}{m['value'] or ''}{m['comment'] or ''}"
        return _put(lines, i, new), f"line {i + 1}: key {m['key']!r} -> {brief(key)}", kind
    if op == 4 and lines:  # delete lines
        i = rng.randrange(len(lines))
        n = rng.choice([1, 1, 2, 5])
        return lines[:i] + lines[i + n :], f"deleted lines {i + 1}-{i + n}", "deleted lines"
    if op == 5 and kv:  # duplicate a line (a duplicate key)
        i = rng.choice(kv)
        return lines[: i + 1] + lines[i:], f"duplicated line {i + 1} {brief(lines[i].strip())}", "duplicate key"
    if op == 6 and kv:  # re-indent
        i = rng.choice(kv)
        indent = rng.choice(["\t", " ", "   ", "", "      "])
        return _put(lines, i, indent + lines[i].lstrip()), f"line {i + 1} re-indented with {indent!r}", "indentation"
    i = rng.randrange(len(lines) + 1)  # insert a random line
    kind, value = rng.choice(YAML_VALUES)
    key = rng.choice(["tensor", "data", "nonexistent", "kv_cache", "page_size", "model"])
    new = rng.choice(["", "  "]) + f"{key}: {value}"
    return lines[:i] + [new] + lines[i:], f"inserted at line {i + 1}: {brief(new)}", f"inserted {kind}"


def _put(lines: list[str], i: int, line: str) -> list[str]:
    return lines[:i] + [line] + lines[i + 1 :]


def gen_strategy(rng, seeds: Seeds) -> dict:
    seed_file = rng.choice(seeds.files)
    text = seeds.texts[seed_file]
    lines = text.splitlines()
    descs, kinds, valid = [], [], seed_file in seeds.strategies
    content: str | bytes
    roll = rng.random()
    if roll < 0.2:  # a whole hostile section
        kind, section, replaces = hostile_section(rng)
        for key in replaces:
            lines = _remove_section(lines, key)
        content = "\n".join(lines) + "\n" + section
        descs.append(f"section {brief(section.strip(), 120)}")
        kinds.append(kind)
        valid = False
    elif roll < 0.35:  # bytes
        data, desc, kind, still = raw_mutation(rng, text)
        content, valid = data, valid and still
        descs.append(desc)
        kinds.append(kind)
    else:
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            lines, desc, kind = _mutate_lines(rng, lines)
            descs.append(desc)
            kinds.append(kind)
        content, valid = "\n".join(lines) + "\n", False
    command = rng.choice([["validate"], ["validate"], ["explain"], ["explain", "--format", "json"]])
    name = "s.yaml"
    return {
        "kind": kinds[0],
        "desc": f"$TMP/{name} = {seed_file}, " + "; ".join(descs),
        "files": {name: bytes_file(content) if isinstance(content, bytes) else text_file(content)},
        "argv": [command[0], "{tmp}/" + name, *command[1:]],
        "expect_ok": valid,
        "checks": {"json_stdout": "json" in command},
    }
