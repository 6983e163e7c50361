"""--replay: rerun each group's reproducer from an earlier --json report, old class -> new class."""

import json
import time
from pathlib import Path

from .classify import classify_any
from .pool import run_cases


def replay(args, start: float) -> None:
    old = json.loads(Path(args.replay).read_text())
    groups = [g for g in old["groups"]]
    cases = [g["example"]["case"] for g in groups]
    args.target_list = sorted({c["target"] for c in cases}) or ["strategy"]
    new: dict[int, tuple[str, str, float]] = {}

    def on_result(case, res, seconds):
        cls, key, _ = classify_any(case, res)
        new[case["id"]] = (cls, key, seconds)

    run_cases(args, iter(cases), on_result)
    print(f"replayed {len(cases)} reproducers from {args.replay} in {time.monotonic() - start:.1f} s")
    for g in groups:
        cls, key, seconds = new.get(g["example"]["case"]["id"], ("?", "?", 0.0))
        mark = "same" if key == g["key"] else "CHANGED"
        print(
            f"{mark:>7}  {g['class']} -> {cls} ({seconds:.2f} s)  {g['key']}"
            + (f"  =>  {key}" if mark != "same" else "")
        )
