"""The command: python -m tools.fuzz [flags] (see the package docstring); --worker runs a worker process."""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from . import __doc__ as _PACKAGE_DOC
from .cases import make_case
from .config import TARGETS
from .pool import run_cases
from .replay import replay
from .report import Tally, report_json, report_text
from .seeds import Seeds
from .worker import worker_main


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.fuzz", description=_PACKAGE_DOC.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", type=int, default=None, help="number of cases (default 2000 unless --seconds)")
    p.add_argument("--seconds", type=float, default=None, help="stop issuing cases after this many seconds")
    p.add_argument("--timeout", type=float, default=10.0, help="wall seconds a case may take")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--json", dest="json_path", default=None, help="also write the report as JSON here")
    p.add_argument("--repo", default=".", help="the shardspec checkout whose seeds and cwd are used (default .)")
    p.add_argument("--replay", default=None, help="rerun the reproducers of a previous --json report")
    p.add_argument("--max-rss-mb", type=int, default=4096, help="kill a worker past this resident memory")
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.add_argument("--jax-cache", default=os.path.join(tempfile.gettempdir(), "shardspec-fuzz-jax-cache"))
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--recycle-mb", type=int, default=2048, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.repo = Path(args.repo).resolve()
    args.target_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(args.target_list) - set(TARGETS))
    if unknown or not args.target_list:
        p.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
    if args.cases is None and args.seconds is None:
        args.cases = 2000
    return args


def case_stream(args, seeds: Seeds, start: float):
    i = 0
    while (args.cases is None or i < args.cases) and (args.seconds is None or time.monotonic() - start < args.seconds):
        yield make_case(seeds, args.seed, i, args.target_list)
        i += 1


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    start = time.monotonic()
    if args.replay:
        replay(args, start)
        return
    seeds = Seeds(args.repo)
    tally = Tally()
    last = [start]

    def on_result(case, res, seconds):
        tally.add(case, res, seconds)
        now = time.monotonic()
        if not args.quiet and now - last[0] > 30:
            last[0] = now
            bad = {c: n for c, n in tally.totals().items() if c not in ("ok", "user_error")}
            print(f"[{len(tally.results)} cases, {now - start:.0f} s] {bad}", file=sys.stderr, flush=True)

    run_cases(args, case_stream(args, seeds, start), on_result)
    rep = report_json(tally, args, time.monotonic() - start)
    sys.stdout.write(report_text(rep))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(rep, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
