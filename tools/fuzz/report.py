"""Parent side: the tally of classes and groups, the text and JSON reports, and shell reproducers."""

import collections
import json
import shlex
import sys

from .classify import classify_any, format_violation
from .config import CLASSES, FAILING
from .show import brief


def show_arg(arg: str) -> str:
    arg = arg.replace("{tmp}", "$TMP")
    if len(arg) > 120:
        return f"<{brief(arg)}>"
    if arg.isprintable() and arg:
        return shlex.quote(arg) if not arg.startswith("$TMP") else '"' + arg + '"'
    return "$'" + arg.encode("unicode_escape").decode().replace("'", "\\'") + "'"


def reproducer(case: dict) -> str:
    if case["target"] == "engine":
        return case["desc"]
    return "shardspec " + " ".join(show_arg(a) for a in case["argv"]) + f"    # {case['desc']}"


def _size(case: dict) -> int:
    return len(json.dumps(case))


class Tally:
    """Counts per target and class, the slowest case, and each group's shortest reproducer."""

    def __init__(self):
        self.per_target = collections.defaultdict(collections.Counter)
        self.groups: dict[str, dict] = {}
        self.format_violations: dict[str, dict] = {}
        self.results: list[dict] = []
        self.slowest = None

    def add(self, case: dict, res: dict, seconds: float) -> str:
        cls, key, detail = classify_any(case, res)
        self.per_target[case["target"]][cls] += 1
        row = {"id": case["id"], "target": case["target"], "kind": case["kind"], "class": cls}
        row.update(seconds=round(seconds, 3), key=key if cls != "ok" else "")
        self.results.append(row)
        if self.slowest is None or seconds > self.slowest["seconds"]:
            self.slowest = {**row, "repro": reproducer(case)}
        if cls not in ("ok", "user_error"):
            self._keep(self.groups, key, cls, case, res, seconds, detail)
        violation = format_violation(res)
        if violation:
            self._keep(self.format_violations, violation, "format", case, res, seconds, violation)
        return cls

    @staticmethod
    def _keep(groups, key, cls, case, res, seconds, detail) -> None:
        g = groups.setdefault(key, {"class": cls, "key": key, "count": 0, "targets": [], "example": None})
        g["count"] += 1
        if case["target"] not in g["targets"]:
            g["targets"].append(case["target"])
        if g["example"] is None or _size(case) < _size(g["example"]["case"]):
            g["example"] = {
                "id": case["id"],
                "seconds": round(seconds, 3),
                "detail": detail[:400],
                "where": (res.get("exc") or {}).get("stack") or (res.get("exc") or {}).get("frame"),
                "repro": reproducer(case),
                "case": case,
            }

    def totals(self) -> collections.Counter:
        total = collections.Counter()
        for counts in self.per_target.values():
            total.update(counts)
        return total


def report_json(tally: Tally, args, seconds: float) -> dict:
    order = {c: i for i, c in enumerate(FAILING)}
    groups = sorted(tally.groups.values(), key=lambda g: (order.get(g["class"], 99), -g["count"]))
    return {
        "seed": args.seed,
        "repo": str(args.repo),
        "python": sys.executable,
        "command": sys.argv,
        "timeout_s": args.timeout,
        "cases": len(tally.results),
        "seconds": round(seconds, 1),
        "per_target": {t: dict(c) for t, c in sorted(tally.per_target.items())},
        "totals": dict(tally.totals()),
        "slowest": tally.slowest,
        "groups": groups,
        "format_violations": sorted(tally.format_violations.values(), key=lambda g: -g["count"]),
        "results": sorted(tally.results, key=lambda r: r["id"]),
    }


def report_text(rep: dict) -> str:
    out = [f"shardspec fuzz: seed {rep['seed']}, {rep['cases']} cases in {rep['seconds']} s, repo {rep['repo']}", ""]
    shown = [c for c in CLASSES if rep["totals"].get(c)]
    out.append(f"{'target':<11}{'cases':>7}" + "".join(f"{c:>{max(len(c), 5) + 2}}" for c in shown))
    rows = list(rep["per_target"].items()) + [("total", rep["totals"])]
    for target, counts in rows:
        cells = "".join(f"{counts.get(c, 0):>{max(len(c), 5) + 2}}" for c in shown)
        out.append(f"{target:<11}{sum(counts.values()):>7}" + cells)
    s = rep["slowest"]
    if s:
        out += ["", f"slowest case: #{s['id']} {s['target']} ({s['class']}) {s['seconds']:.2f} s", f"  {s['repro']}"]
    for cls in FAILING:
        groups = [g for g in rep["groups"] if g["class"] == cls]
        if not groups:
            continue
        out += ["", f"== {cls}: {len(groups)} distinct, {sum(g['count'] for g in groups)} cases"]
        for i, g in enumerate(groups, 1):
            ex = g["example"]
            out.append(f"[{i}] {g['key']}  ({g['count']} cases; {', '.join(g['targets'])})")
            if ex["detail"] and ex["detail"] not in g["key"]:
                out.append(f"    {ex['detail'][:240]}")
            out.append(f"    #{ex['id']} {ex['seconds']:.2f} s: {ex['repro'][:400]}")
    if rep["format_violations"]:
        out += [
            "",
            f"== exit-2 output not in the `error: FILE:LINE: path: message` form: {len(rep['format_violations'])}",
        ]
        for g in rep["format_violations"]:
            out.append(f"- {g['key']}  ({g['count']} cases)")
            out.append(f"    #{g['example']['id']}: {g['example']['repro'][:300]}")
    return "\n".join(out) + "\n"
