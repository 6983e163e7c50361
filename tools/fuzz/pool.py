"""Parent side: the worker processes, each case's wall timeout and memory limit, and restarts.

A catastrophic regex holds the worker's GIL, so no alarm inside it could stop a case: the parent kills
the process and starts a fresh one.
"""

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .memory import rss_mb

# The worker runs `python -c _BOOT ROOT --worker ...` in the fuzzed checkout (cwd): ROOT, the directory that
# holds tools/, is on sys.path only while the package is imported, so the worker imports shardspec as
# installed, never from a checkout's directory that happens to be first on sys.path (`-m` would put cwd there).
_ROOT = str(Path(__file__).resolve().parents[2])
_BOOT = "import sys; sys.path[0] = sys.argv.pop(1); from tools.fuzz.__main__ import main; del sys.path[0]; main()"


class Proc:
    """One worker subprocess and the case it is running."""

    def __init__(self, index: int, args, workdir: Path):
        self.index, self.args, self.workdir = index, args, workdir
        self.proc = None
        self.spawn()

    def spawn(self) -> None:
        log = open(self.workdir / f"worker{self.index}.log", "ab")
        cmd = [sys.executable, "-c", _BOOT, _ROOT, "--worker", "--repo", str(self.args.repo)]
        cmd += ["--workdir", str(self.workdir), "--targets", ",".join(self.args.target_list)]
        cmd += ["--recycle-mb", str(self.args.max_rss_mb // 2), "--jax-cache", self.args.jax_cache or ""]
        env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", COLUMNS="120", NO_COLOR="1")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=self.args.repo, env=env
        )
        log.close()
        self.buf, self.case, self.state = b"", None, "starting"
        self.deadline = time.monotonic() + self.args.startup_timeout
        self.started = time.monotonic()

    def fileno(self) -> int:
        return self.proc.stdout.fileno()

    def send(self, case: dict) -> None:
        self.case, self.state = case, "busy"
        self.started = time.monotonic()
        self.deadline = self.started + self.args.timeout
        self.proc.stdin.write((json.dumps(case) + "\n").encode())
        self.proc.stdin.flush()

    def read(self) -> list[dict] | None:
        """The complete messages available now; None at EOF (the worker died)."""
        chunk = os.read(self.fileno(), 1 << 20)
        if not chunk:
            return None
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def log_tail(self) -> str:
        try:
            return (self.workdir / f"worker{self.index}.log").read_text(errors="replace")[-600:]
        except OSError:
            return ""


def run_cases(args, cases_iter, on_result) -> None:
    """Feed cases to --workers workers; on_result(case, result or None-with-reason, seconds)."""
    workdir = Path(tempfile.mkdtemp(prefix="shardspec-fuzz-"))
    procs = [Proc(i, args, workdir) for i in range(args.workers)]
    exhausted = False
    try:
        while True:
            exhausted = _hand_out(procs, cases_iter, exhausted)
            active = [p for p in procs if p.state in ("busy", "starting", "housekeeping")]
            if not active or (exhausted and not any(p.state == "busy" for p in procs)):
                break
            ready, _, _ = select.select(active, [], [], 0.1)
            for p in ready:
                _on_readable(p, on_result)
            now = time.monotonic()
            for p in active:
                _watch(p, now, args, on_result)
    finally:
        for p in procs:
            p.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def _hand_out(procs: list[Proc], cases_iter, exhausted: bool) -> bool:
    """A case to every idle worker while cases last; whether they ran out."""
    for p in procs:
        if p.state == "idle" and not exhausted:
            case = next(cases_iter, None)
            if case is None:
                exhausted = True
            else:
                p.send(case)
    return exhausted


def _watch(p: Proc, now: float, args, on_result) -> None:
    """Replace a worker past its deadline or over its memory limit."""
    if p.state == "busy" and now > p.deadline:
        _fail(p, on_result, {"kind": "killed", "why": "hang"})
    elif p.state == "busy" and rss_mb(p.proc.pid) > args.max_rss_mb:
        _fail(p, on_result, {"kind": "killed", "why": "memory", "rss_mb": args.max_rss_mb})
    elif p.state == "starting" and now > p.deadline:
        raise SystemExit(f"fuzz: a worker did not start in {args.startup_timeout} s:\n{p.log_tail()}")
    elif p.state == "housekeeping" and now > p.deadline:
        _fail(p, on_result, {})  # rebuilding its engines took too long: a fresh worker


def _on_readable(p: Proc, on_result) -> None:
    messages = p.read()
    if messages is None:
        if p.state == "starting":
            raise SystemExit(f"fuzz: a worker died while starting:\n{p.log_tail()}")
        _fail(p, on_result, {"kind": "died", "rc": p.proc.poll(), "log": p.log_tail()})
        return
    for msg in messages:
        if msg.get("ready"):
            p.state = "idle"
        elif msg.get("recycle"):
            p.kill()
            p.spawn()
        else:
            on_result(p.case, msg, time.monotonic() - p.started)
            p.state = "housekeeping"
            p.deadline = time.monotonic() + p.args.startup_timeout


def _fail(p: Proc, on_result, res: dict) -> None:
    if p.case is not None and p.state == "busy":
        on_result(p.case, res, time.monotonic() - p.started)
    p.kill()
    p.spawn()
