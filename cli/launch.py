"""`shardspec launch --local N -- COMMAND`: one cluster of N processes on this machine.

Each process runs `shardspec COMMAND` with the cluster in its environment
(SHARDSPEC_COORDINATOR = 127.0.0.1 and a free port, SHARDSPEC_NUM_PROCESSES,
SHARDSPEC_PROCESS_ID), JAX on CPU, and so devices/N simulated CPU devices of
its own: the same program that N hosts would run, on one machine.

Every output line comes back prefixed with its process id. A process that
fails takes the others down with it: a peer that died leaves the rest waiting
in a collective forever, so the launcher stops them and says which one failed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Annotated

import typer

from shardspec.errors import Problem, ShardspecError

COMMANDS = ("run", "check", "explain", "serve")  # the commands that join a cluster
CLUSTER_FLAGS = ("--coordinator", "--num-processes", "--process-id")
STOP_GRACE_S = 3.0  # SIGTERM, then SIGKILL after this long (JAX catches SIGTERM to note preemption)
POLL_S = 0.05
GLOO_CHATTER = "Expected number of connected peer ranks"


def launch(
    ctx: typer.Context,
    local: Annotated[int, typer.Option("--local", min=1, help="Processes to start on this machine.")],
    command: Annotated[
        list[str], typer.Argument(metavar="-- COMMAND...", help="The shardspec command each process runs.")
    ],
):
    """Run a shardspec command as N processes of one cluster on this machine.

    Each process gets devices/N simulated CPU devices; output lines are prefixed
    with the process id; the exit code is the worst one. If a process fails, the
    others are stopped.
    """
    _check_command(command)
    port = _free_port()
    debug = ["--debug"] if (ctx.obj or {}).get("debug") else []
    argv = [sys.executable, "-m", "shardspec.cli.main", *debug, *command]
    typer.echo(f"launch: {local} processes, coordinator 127.0.0.1:{port}: shardspec {' '.join(command)}", err=True)
    procs = [_start(argv, i, local, port) for i in range(local)]
    for i, p in enumerate(procs):
        typer.echo(f"launch: process {i}: pid {p.pid}", err=True)
    lock = threading.Lock()
    readers = [
        threading.Thread(target=_relay, args=(stream, i, err, lock), daemon=True)
        for i, p in enumerate(procs)
        for stream, err in ((p.stdout, False), (p.stderr, True))
    ]
    for r in readers:
        r.start()
    codes, stopped = _supervise(procs)
    for r in readers:
        r.join(timeout=STOP_GRACE_S)
    failed = [i for i, c in enumerate(codes) if c != 0 and i not in stopped]
    if failed:
        told = "; ".join(f"process {i} {_describe(codes[i])}" for i in failed)
        if stopped:
            told += f"; stopped process{'es' if len(stopped) > 1 else ''} {', '.join(map(str, sorted(stopped)))}"
        typer.echo(f"error: launch: {told}", err=True)
    raise typer.Exit(max((_exit_code(codes[i]) for i in failed), default=0))


def _check_command(command: list[str]) -> None:
    if not command or command[0] not in COMMANDS:
        got = repr(command[0]) if command else "nothing"
        raise ShardspecError(
            Problem(
                f"{got} is not a command that runs in a cluster",
                path="launch",
                hint=f"use one of {', '.join(COMMANDS)}: shardspec launch --local 2 -- "
                "run strategies/multihost_dp.yaml",
            )
        )
    given = [a for a in command if a.split("=")[0] in CLUSTER_FLAGS]
    if given:
        raise ShardspecError(
            Problem(
                f"{given[0].split('=')[0]} is set by launch",
                path="launch",
                hint="leave the cluster flags out of the command",
            )
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(argv: list[str], index: int, count: int, port: int) -> subprocess.Popen:
    env = dict(
        os.environ,
        SHARDSPEC_COORDINATOR=f"127.0.0.1:{port}",
        SHARDSPEC_NUM_PROCESSES=str(count),
        SHARDSPEC_PROCESS_ID=str(index),
        PYTHONUNBUFFERED="1",
        JAX_PLATFORMS="cpu",  # simulated CPU devices, whatever accelerator the machine has
        JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",
    )  # process 0 listens on loopback only
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _relay(stream: IO[bytes], index: int, err: bool, lock: threading.Lock) -> None:
    """Copy a process's output line by line, each prefixed with its process id.

    Reads to the end even when our own output is gone (`| head`): a process
    whose pipe fills up would block.
    """
    open_, count_follows = True, False
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        # gloo's C++ prints one such line per communicator, on stdout, and at times
        # its count (or a bare line break) lands on a line of its own: drop them all.
        trailing = count_follows and (not line.strip() or line.strip().isdigit())
        chatter = GLOO_CHATTER in line or trailing
        count_follows = (GLOO_CHATTER in line and not line.rstrip()[-1:].isdigit()) or (trailing and not line.strip())
        if chatter or not open_:
            continue
        with lock:
            try:
                typer.echo(f"[{index}] {line}", err=err)
            except (BrokenPipeError, ValueError):  # closed by the reader / at interpreter exit
                open_ = False
    stream.close()


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
