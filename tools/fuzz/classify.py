"""Parent side: a finished case and its result -> (class, group key, one-line detail)."""

import re


def classify_any(case: dict, res: dict) -> tuple[str, str, str]:
    """(class, group key, one-line detail) of any case: killed or died in the parent's view, else finished."""
    if res.get("kind") == "killed":
        cls = res["why"]
        verb = case["argv"][0] if case.get("argv") else "engine"
        return cls, f"{cls} {case['target']}/{case['kind']} ({verb})", f"killed: {cls}"
    if res.get("kind") == "died":
        return "internal", f"WorkerDied(rc={res['rc']}) {case['target']}/{case['kind']}", res.get("log", "")[-200:]
    return classify(case, res)


def _shape(text: str) -> str:
    """A message with its values blanked, to group messages that differ only in values."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"\d+", "N", text)
    return text[:140]


def classify(case: dict, res: dict) -> tuple[str, str, str]:
    """(class, group key, one-line detail) of a finished case."""
    if res.get("kind") == "harness":
        e = res["exc"]
        return "internal", f"harness {e['type']} @ {e['frame']}", e["message"]
    if res.get("kind") == "engine":
        return _classify_engine(case, res)
    code, exc = res["exit"], res.get("exc")
    if res["traceback"] or code not in (0, 2):
        if exc:
            return "internal", f"{exc['type']} @ {exc['frame']}", f"{exc['type']}: {exc['message']}"
        first = (res["stderr"].strip().splitlines() or ["(no output)"])[-1]
        return "internal", f"exit {code}: {_shape(first)}", first
    if code == 0:
        if res["violations"]:
            v = res["violations"][0]
            return "internal", f"InvariantViolation @ {case['target']}: {_shape(v)}", v
        return "ok", "ok", ""
    lines = res["errors"]
    first = lines[0]["line"] if lines else (res["stderr"].strip().splitlines() or ["(no output)"])[0]
    if case.get("expect_ok"):
        return "rejected_valid", f"rejected_valid {case['target']}/{case['kind']}: {_shape(first)}", first
    unlocated = [e["line"] for e in lines if not e["located"]]
    if unlocated or (not lines and not res["mentions_flag"]):
        line = unlocated[0] if unlocated else first
        return "user_error_no_location", f"{case['target']}: {_shape(line)}", line
    return "user_error", "user_error", first


def _classify_engine(case: dict, res: dict) -> tuple[str, str, str]:
    name = res["engine"]
    if res.get("exc"):
        e = res["exc"]
        return "internal", f"{e['type']} @ {e['frame']}", f"{e['type']}: {e['message']}"
    if res["violations"]:
        v = res["violations"][0]
        return "internal", f"InvariantViolation @ engine: {v}", "; ".join(res["violations"])
    if res["lost"]:
        return "lost_request", f"lost_request {name}: {_shape(res['lost'][0])}", "; ".join(res["lost"])
    if res["leaked"]:
        return "leaked_pages", f"leaked_pages {name}", "; ".join(res["leaked"])
    unlocated = [u["line"] for u in res["user_errors"] if not u["located"]]
    if unlocated:
        return "user_error_no_location", f"engine: {_shape(unlocated[0])}", unlocated[0]
    if res["user_errors"]:
        return "user_error", "user_error", res["user_errors"][0]["line"]
    return "ok", "ok", ""


def format_violation(res: dict) -> str | None:
    """An exit-2 output that breaks `error: FILE:LINE: path: message (hint)`, one line a problem."""
    if res.get("kind") != "cli" or res["exit"] != 2 or res.get("debug"):
        return None
    if not res["n_errors"]:
        return "exit 2 without an `error:` line: " + _shape((res["stderr"].strip().splitlines() or [""])[0])
    if res["odd_stderr"]:
        return "exit 2 with stderr lines that are not `error:`/`note:` lines: " + _shape(res["odd_stderr"][0])
    return None
