"""Exceptions and printed tracebacks, summarised for grouping: type, message, innermost frame in the repo."""

import os
import re
import traceback
from pathlib import Path


def exc_summary(exc: BaseException, repo: Path, tb=None) -> dict:
    """type, message and the innermost frame in the repo (shardspec/, models/, cli/), for grouping."""
    frames = traceback.extract_tb(tb or exc.__traceback__)
    inside = [f for f in frames if _in_repo(f.filename, repo)]
    where = inside[-1] if inside else (frames[-1] if frames else None)
    return {
        "type": type(exc).__name__,
        "message": str(exc)[:400],
        "frame": _frame_name(where, repo) if where else "?",
        "line": where.lineno if where else None,
        "stack": [f"{_frame_name(f, repo)}:{f.lineno}" for f in frames[-6:]],
    }


def _in_repo(filename: str, repo: Path) -> bool:
    if not os.path.isabs(filename):  # a compiled module's 'numpy/random/x.pyx', '<frozen ...>'
        return False
    try:
        rel = Path(filename).resolve().relative_to(repo)
    except ValueError:
        return False
    return rel.parts[:1] not in (("tools",), (".venv",), ("tests",))


def _frame_name(frame, repo: Path) -> str:
    try:
        rel = str(Path(frame.filename).resolve().relative_to(repo))
    except ValueError:
        rel = "/".join(Path(frame.filename).parts[-2:])
    return f"{rel}:{frame.name}"


_TB_FRAME = re.compile(r'File "(.+?)", line (\d+), in (\S+)')
_TB_LAST = re.compile(r"^(\w+(?:\.\w+)*)(?::\s?(.*))?$")


def parse_traceback(text: str, repo: Path) -> dict | None:
    """exc_summary's fields from a printed traceback (the --debug fallback)."""
    if "Traceback (most recent call last)" not in text:
        return None
    block = text[text.rindex("Traceback (most recent call last)") :]
    frames = [(f, int(n), fn) for f, n, fn in _TB_FRAME.findall(block)]
    inside = [fr for fr in frames if _in_repo(fr[0], repo)]
    where = inside[-1] if inside else (frames[-1] if frames else None)
    last = ""
    for line in block.splitlines():
        if line and not line.startswith((" ", "Traceback")):
            last = line
    m = _TB_LAST.match(last) or _TB_LAST.match("UnknownError")
    name = "?"
    if where:
        try:
            name = f"{Path(where[0]).resolve().relative_to(repo)}:{where[2]}"
        except ValueError:
            name = f"{'/'.join(Path(where[0]).parts[-2:])}:{where[2]}"
    return {"type": m.group(1).rsplit(".", 1)[-1], "message": (m.group(2) or "")[:400], "frame": name}
