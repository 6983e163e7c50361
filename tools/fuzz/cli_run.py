"""Worker side: one command-line case through typer's CliRunner, and what its output says."""

import json
from pathlib import Path

from .locate import file_args, located, mentions_flag
from .show import brief
from .traces import exc_summary, parse_traceback


def run_cli(worker, case: dict, tmp: Path) -> dict:
    """The case's command line in `worker` (a Worker), its files under `tmp`."""
    argv = [a.replace("{tmp}", str(tmp)) for a in case["argv"]]
    worker.captured = None
    result = worker.runner.invoke(worker.app, argv)
    stdout, stderr = _out(result, "stdout"), _out(result, "stderr")
    exc = worker.captured
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        exc = exc_summary(result.exception, worker.repo, result.exc_info[2] if result.exc_info else None)
    debug = "--debug" in argv
    if result.exit_code == 1 and exc is None and not debug:  # no exception seen: ask --debug for the traceback
        again = worker.runner.invoke(worker.app, ["--debug", *argv])
        exc = parse_traceback(_out(again, "stderr"), worker.repo)
    paths = file_args(argv)
    lines = stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    odd = [line for line in lines if line.strip() and not line.startswith(("error: ", "note: "))]
    res = {
        "kind": "cli",
        "exit": result.exit_code,
        "debug": debug,
        "traceback": not debug and "Traceback (most recent call last)" in stdout + stderr,
        "errors": [{"line": _scrub(e, tmp)[:400], "located": located(e, paths)} for e in errors[:20]],
        "n_errors": len(errors),
        "odd_stderr": [_scrub(line, tmp)[:200] for line in odd[:5]],
        "mentions_flag": mentions_flag(stderr),
        "stderr": _scrub(stderr[:1500], tmp),
        "stdout": _scrub(stdout[:600], tmp),
        "exc": exc,
        "violations": _checks(case, result.exit_code, stdout, tmp) if result.exit_code == 0 else [],
    }
    if res["traceback"] and exc is None:
        res["exc"] = parse_traceback(stdout + stderr, worker.repo)
    return res


def _checks(case: dict, code: int, stdout: str, tmp: Path) -> list[str]:
    """The case's output invariants that a successful command broke."""
    checks, out = case.get("checks", {}), []
    if checks.get("json_stdout"):
        try:
            json.loads(stdout)
        except ValueError:
            out.append("stdout is not one JSON object")
    if checks.get("output_ids") is not None:
        path = Path(checks["output_file"].replace("{tmp}", str(tmp)))
        try:
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            ids = [str(r["id"]) for r in rows]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            out.append(f"output file unreadable: {type(exc).__name__}")
        else:
            if ids != checks["output_ids"]:
                out.append(f"output ids {brief(ids)} != input ids {brief(checks['output_ids'])}")
    return out


def _out(result, stream: str) -> str:
    try:
        return getattr(result, stream) or ""
    except ValueError:  # click < 8.2 without a separate stderr
        return result.output if stream == "stdout" else ""


def _scrub(text: str, tmp: Path) -> str:
    return text.replace(str(tmp), "$TMP")
