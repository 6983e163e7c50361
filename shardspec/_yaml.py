"""Safe YAML parsing that remembers where every key came from.

    data, lines = parse_document(text, "attn_dp.yaml")
    lines["parallelism.attention_data"]  # -> 7

PyYAML's `safe_load` throws the node tree (and so the line numbers) away and
silently keeps the last of two duplicate keys. Here the text is composed into
nodes with `SafeLoader`, the nodes are checked (size, tags, keys) and their lines
recorded, and only then turned into plain data by SafeLoader's own constructor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import yaml

from .errors import Problem, ShardspecError, clip, raise_all
from .files import decode

# Expanded node count above which a document is rejected. A strategy is a few
# hundred nodes; anchors and aliases can make a 1 kB file expand to billions.
MAX_NODES = 10_000
# Largest integer a strategy may hold: every size shardspec stores fits in int64.
MAX_INT = 2**63 - 1
MAX_DEPTH = 50  # nesting levels; a strategy has four
_MAX_INT_TEXT = 80  # characters: more than any spelling of MAX_INT (0b + 63 digits, underscores)

_STD = "tag:yaml.org,2002:"
_MERGE = _STD + "merge"  # `<<: *base`
_VALUE = _STD + "value"  # a bare `=` key, constructed as the string '='
# Only what SafeLoader itself constructs: never python/*, never custom `!tags`.
_SAFE_TAGS = frozenset(tag for tag in yaml.SafeLoader.yaml_constructors if tag is not None)


def parse_document(text: str | bytes, file: str) -> tuple[dict, dict[str, int]]:
    """(data, {yaml path: 1-based line of its key}) of a strategy-like file.

    The top level must be a mapping with text keys. Raises `ShardspecError`
    (with `file` and the line) for anything that is not plain, safe YAML data.
    """
    loader, root = _compose(text, file)
    try:
        if root is None or (root.tag == _STD + "null" and not root.value):
            raise ShardspecError("the file is empty", file=file, hint="a strategy needs at least `parallelism:`")
        _check_size(root, file)
        if not isinstance(root, yaml.MappingNode) or root.tag != _STD + "map":
            raise ShardspecError(
                f"the top level must be a mapping (name:, parallelism:, ...), got {_kind(root)}",
                file=file,
                line=_line(root),
            )
        lines: dict[str, int] = {}
        raise_all(list(_walk(loader, root, "", file, lines)))
        return _construct(loader, root, file), lines
    finally:
        loader.dispose()


def parse_value(text: str, file: str) -> object:
    """One safe YAML value (e.g. the right-hand side of `--set key=value`)."""
    loader, root = _compose(text, file)
    try:
        if root is None:
            return None
        _check_size(root, file)
        raise_all(list(_walk(loader, root, "", file, {})))
        return _construct(loader, root, file)
    finally:
        loader.dispose()


def join_path(parts: Iterable[str | int]) -> str:
    """('params', 0, 'match') -> 'params[0].match'."""
    path = ""
    for part in parts:
        path = _child(path, part)
    return path


def _child(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else str(part)


def _compose(text: str | bytes, file: str) -> tuple[yaml.SafeLoader, yaml.Node | None]:
    if isinstance(text, bytes):
        text = decode(text, file)
    try:
        loader = yaml.SafeLoader(text)  # the reader already rejects control characters
        return loader, loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        raise _syntax_error(e, file) from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        raise ShardspecError(f"invalid YAML: character #x{e.character:04x}: {e.reason}", file=file, line=line) from None
    except RecursionError:
        raise ShardspecError(f"nested more than {MAX_DEPTH} levels deep", file=file, line=_deepest_line(text)) from None


def _deepest_line(text: str) -> int | None:
    """Line where nesting first passes MAX_DEPTH, found by PyYAML's scanner (which,
    unlike its composer, does not recurse)."""
    depth = 0
    opening = (
        yaml.BlockMappingStartToken,
        yaml.BlockSequenceStartToken,
        yaml.FlowMappingStartToken,
        yaml.FlowSequenceStartToken,
    )
    closing = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            depth += isinstance(token, opening) - isinstance(token, closing)
            if depth > MAX_DEPTH:
                return token.start_mark.line + 1
    except yaml.YAMLError:
        pass
    return None


def _syntax_error(e: yaml.MarkedYAMLError, file: str) -> ShardspecError:
    mark = e.problem_mark or e.context_mark
    hint = None
    if e.context and e.context_mark is not None:
        hint = f"{e.context} at line {e.context_mark.line + 1}"
    return ShardspecError(
        f"invalid YAML: {e.problem or e.context}", file=file, line=mark.line + 1 if mark else None, hint=hint
    )


def _check_size(root: yaml.Node, file: str) -> None:
    """Reject documents whose aliases expand past MAX_NODES, without expanding.

    An alias is the *same* node object as its anchor, so counting each node once
    (memoised by id) takes time linear in the text even for a billion laughs.
    """
    counts: dict[int, int] = {}
    active: set[int] = set()  # nodes on the current path: an alias to one is a cycle
    aliased = False  # whether any node was reached twice: then the expansion, not the text, is too big

    def count(node: yaml.Node) -> int:
        nonlocal aliased
        if id(node) in counts:
            aliased = True
            return counts[id(node)]
        if id(node) in active:
            raise ShardspecError("an anchor is used inside itself (recursive alias)", file=file, line=_line(node))
        if len(active) > MAX_DEPTH:
            raise ShardspecError(f"nested more than {MAX_DEPTH} levels deep", file=file, line=_line(node))
        active.add(id(node))
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(count(item) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(count(k) + count(v) for k, v in node.value)
        active.discard(id(node))
        if total > MAX_NODES:
            why = " (anchors and aliases nested too deeply)" if aliased else "; a strategy has a few hundred"
            raise ShardspecError(
                f"the document expands to more than {MAX_NODES} values{why}", file=file, line=_line(node)
            )
        counts[id(node)] = total
        return total

    count(root)


def _walk(loader: yaml.SafeLoader, node: yaml.Node, path: str, file: str, lines: dict[str, int]) -> Iterable[Problem]:
    """Problems of `node` and below; records the line of every key and list item.

    Lines are only set once (`setdefault`), and a mapping's own keys are visited
    before its `<<` merges, so an explicit key wins over a merged one, as in YAML.
    """
    if node.tag not in _SAFE_TAGS:
        yield Problem(
            f"the tag {_short_tag(node.tag)} is not allowed",
            path=path,
            file=file,
            line=_line(node),
            hint="a strategy is plain data: values, lists and mappings",
        )
        return  # never look inside (or construct) an untrusted tag
    if isinstance(node, yaml.ScalarNode):
        message = _scalar_problem(loader, node)
        if message:
            yield Problem(message, path=path, file=file, line=_line(node), hint="quote it if it is meant as text")
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.setdefault(_child(path, i), _line(item))
            yield from _walk(loader, item, _child(path, i), file, lines)
    elif isinstance(node, yaml.MappingNode):
        yield from _walk_mapping(loader, node, path, file, lines)


def _scalar_problem(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str | None:
    """Why SafeLoader cannot make a value of `node` that shardspec can use, if it cannot.

    SafeLoader's scalar constructors raise plain ValueError / KeyError without a
    line (`2020-02-30` resolves as a date, `!!int a`, `!!bool maybe`), and Python
    refuses to convert an integer of more than 4300 digits; constructing each
    scalar here, where its line is known, turns those into located problems.
    """
    if node.tag == _STD + "int" and len(node.value) > _MAX_INT_TEXT:
        return f"integer {clip(node.value, 20)} is out of range (at most {MAX_INT:,})"
    try:
        value = loader.yaml_constructors[node.tag](loader, node)
    except yaml.MarkedYAMLError:
        return None  # reported with its own mark when the document is constructed
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        return f"{_short_tag(node.tag)} {clip(node.value)} is not a valid {_short_tag(node.tag)[2:]}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        return f"integer {clip(node.value)} is out of range (at most {MAX_INT:,})"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{node.value} is not a finite number"
    return None


def _walk_mapping(
    loader: yaml.SafeLoader, node: yaml.MappingNode, path: str, file: str, lines: dict[str, int]
) -> Iterable[Problem]:
    seen: dict[str, int] = {}
    merges = []
    for key, value in node.value:
        if key.tag == _MERGE:
            merges.append(value)
            continue
        if not isinstance(key, yaml.ScalarNode) or key.tag not in (_STD + "str", _VALUE):
            yield Problem(
                f"keys must be text, got {_kind(key)}", path=path, file=file, line=_line(key), hint="quote the key"
            )
            continue
        child = _child(path, key.value)
        if key.value in seen:
            yield Problem(
                f"duplicate key {key.value!r} (first at line {seen[key.value]})",
                path=child,
                file=file,
                line=_line(key),
                hint="keep one of them",
            )
            continue
        seen[key.value] = _line(key)
        lines.setdefault(child, _line(key))
        yield from _walk(loader, value, child, file, lines)
    for merged in merges:  # `<<: *base` or `<<: [*base, *other]`
        if isinstance(merged, yaml.SequenceNode) and merged.tag == _STD + "seq":
            for item in merged.value:
                yield from _walk(loader, item, path, file, lines)
        else:
            yield from _walk(loader, merged, path, file, lines)


def _construct(loader: yaml.SafeLoader, root: yaml.Node, file: str) -> object:
    try:
        return loader.construct_document(root)
    except yaml.MarkedYAMLError as e:  # e.g. a bad !!binary or an unhashable set item
        raise _syntax_error(e, file) from None
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # _walk has checked every scalar: not expected
        raise ShardspecError(f"invalid YAML value: {e}", file=file) from None


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_STD) :] if tag.startswith(_STD) else tag


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    return repr(node.value)
