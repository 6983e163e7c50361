"""One command run as N processes of one cluster on this machine.

Each process runs the same `argv` with the cluster in its environment
(SHARDSPEC_COORDINATOR = 127.0.0.1 and a free port, SHARDSPEC_NUM_PROCESSES,
SHARDSPEC_PROCESS_ID: what `shardspec.distributed` reads) and JAX on CPU, so
each gets its own simulated CPU devices: the same program that N hosts would
run, on one machine.

Every output line comes back prefixed with its process id, through the
callables the caller passes (`out`, `err`). A process that fails takes the
others down with it: a peer that died leaves the rest waiting in a collective
forever, so they are stopped, and the result says which one failed.

    result = run_local_cluster([sys.executable, "-c", "..."], 2, out=print, err=print)
    result.codes       # (-15, 3): process 1 exited with 3, so process 0 was stopped (SIGTERM)
    result.summary     # 'process 1 exited with 3; stopped process 0'
    result.exit_code   # 3

This module imports neither jax nor the command line: it only starts and
watches processes.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO

from .cluster_env import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID

__all__ = ["ClusterResult", "run_local_cluster"]

STOP_GRACE_S = 3.0  # SIGTERM, then SIGKILL after this long (JAX catches SIGTERM to note preemption)
POLL_S = 0.05
GLOO_CHATTER = "Expected number of connected peer ranks"

Write = Callable[[str], object]  # writes one line, given without its line break


@dataclasses.dataclass(frozen=True)
class ClusterResult:
    """How a local cluster ended.

    codes: each process's exit code, by process id; -N when killed by signal N (as `subprocess` says).
    stopped: the processes stopped because another one failed; their codes are ours, not theirs.
    """

    codes: tuple[int, ...]
    stopped: frozenset[int] = frozenset()

    @property
    def failed(self) -> tuple[int, ...]:
        """The processes that failed on their own."""
        return tuple(i for i, c in enumerate(self.codes) if c != 0 and i not in self.stopped)

    @property
    def exit_code(self) -> int:
        """What a shell should see: the worst failure's code (killed by signal N -> 128 + N), 0 when none failed."""
        return max((_exit_code(self.codes[i]) for i in self.failed), default=0)

    @property
    def summary(self) -> str:
        """One line: `process 1 was killed by SIGKILL (exit 137); stopped process 0`, '' when none failed."""
        if not self.failed:
            return ""
        told = "; ".join(f"process {i} {_describe(self.codes[i])}" for i in self.failed)
        if self.stopped:
            many = "es" if len(self.stopped) > 1 else ""
            told += f"; stopped process{many} {', '.join(map(str, sorted(self.stopped)))}"
        return told


def run_local_cluster(
    argv: Sequence[str], processes: int, *, out: Write, err: Write, label: str | None = None
) -> ClusterResult:
    """Run `argv` as `processes` processes of one cluster on this machine and wait for them all.

    `out` and `err` each take one line: every line a process writes comes back
    as `[i] line` through the matching one (gloo's chatter dropped), and `err`
    also gets the launch lines (the coordinator, each process's pid). `label`
    names the command in the first line (default: `argv`, quoted for a shell).
    If a process fails, the others are stopped (SIGTERM, then SIGKILL after
    STOP_GRACE_S); an interrupt stops them all.
    """
    if processes < 1:
        raise ValueError(f"processes={processes}: a cluster needs at least 1 process")
    port = _free_port()
    err(f"launch: {processes} processes, coordinator 127.0.0.1:{port}: {label or shlex.join(argv)}")
    procs = [_start(argv, i, processes, port) for i in range(processes)]
    for i, p in enumerate(procs):
        err(f"launch: process {i}: pid {p.pid}")
    lock = threading.Lock()
    readers = [
        threading.Thread(target=_relay, args=(stream, i, write, lock), daemon=True)
        for i, p in enumerate(procs)
        for stream, write in ((p.stdout, out), (p.stderr, err))
    ]
    for r in readers:
        r.start()
    codes, stopped = _supervise(procs)
    for r in readers:
        r.join(timeout=STOP_GRACE_S)
    return ClusterResult(tuple(codes), frozenset(stopped))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(argv: Sequence[str], index: int, count: int, port: int) -> subprocess.Popen:
    env = dict(
        os.environ,
        **{ENV_COORDINATOR: f"127.0.0.1:{port}", ENV_NUM_PROCESSES: str(count), ENV_PROCESS_ID: str(index)},
        PYTHONUNBUFFERED="1",
        JAX_PLATFORMS="cpu",  # simulated CPU devices, whatever accelerator the machine has
        JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",
    )  # process 0 listens on loopback only
    return subprocess.Popen(
        list(argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _relay(stream: IO[bytes], index: int, write: Write, lock: threading.Lock) -> None:
    """Copy a process's output line by line, each prefixed with its process id.

    Reads to the end even when our own output is gone (`| head`): a process
    whose pipe fills up would block.
    """
    open_ = True
    lines = (raw.decode("utf-8", "replace").rstrip("\r\n") for raw in iter(stream.readline, b""))
    for line in _without_chatter(lines):
        if not open_:
            continue
        with lock:
            try:
                write(f"[{index}] {line}")
            except (BrokenPipeError, ValueError):  # closed by the reader / at interpreter exit
                open_ = False
    stream.close()


def _without_chatter(lines: Iterable[str]) -> Iterator[str]:
    """`lines` less gloo's: its C++ prints one such line per communicator, on stdout, and at
    times its count (or a bare line break) lands on a line of its own: drop them all."""
    count_follows = False
    for line in lines:
        trailing = count_follows and (not line.strip() or line.strip().isdigit())
        chatter = GLOO_CHATTER in line or trailing
        count_follows = (GLOO_CHATTER in line and not line.rstrip()[-1:].isdigit()) or (trailing and not line.strip())
        if not chatter:
            yield line


def _supervise(procs: list[subprocess.Popen]) -> tuple[list[int], set[int]]:
    """Wait for every process; once one fails, stop the rest. (exit codes, stopped ids)."""
    stopped: set[int] = set()
    try:
        while True:
            codes = [p.poll() for p in procs]
            if not stopped and any(c not in (None, 0) for c in codes):
                stopped = {i for i, c in enumerate(codes) if c is None}
                _stop([procs[i] for i in stopped])
            if all(c is not None for c in codes):
                return codes, stopped
            time.sleep(POLL_S)
    finally:
        _stop([p for p in procs if p.poll() is None])  # Ctrl-C or a bug here: leave no orphans


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _exit_code(code: int) -> int:
    """A shell's view: killed by signal N -> 128 + N."""
    return 128 - code if code < 0 else code


def _describe(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name} (exit {_exit_code(code)})"
    return f"exited with {code}" + {1: " (internal error)", 2: " (user error)"}.get(code, "")
