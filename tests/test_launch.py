"""`shardspec launch --local N`: real processes joined by jax.distributed on 127.0.0.1.

Each cluster test starts the launcher as a subprocess (JAX can join a cluster
only before it starts its devices, which this test process has done already)
and bounds every wait, so a hang fails the test instead of stalling CI. The
library under it, `run_local_cluster`, is tested first with plain Python
processes: no JAX, a second or so.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from shardspec.cli.main import app
from shardspec.local_cluster import ClusterResult, run_local_cluster

from conftest import ROOT

runner = CliRunner()
MULTIHOST = str(ROOT / "strategies" / "multihost_dp.yaml")
FAST = ["--set", "runtime.max_num_batched_tokens=32", "--set", "runtime.max_num_seqs=8"]
WORKLOAD = ["-n", "8", "--input-len", "4:40", "--output-len", "4:12", *FAST]
STOP_LIMIT_S = 60  # from a process's death to the launcher's exit
HANG_S = 240  # a safety net only: each test takes 5-30 s on two idle cores


def launch(*args: str, timeout: float = HANG_S) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "shardspec.cli.main", "launch", *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if not k.startswith("SHARDSPEC_")},
    )


# Process 1 fails once its peers have written their lines and are waiting; they never end on their own.
PEER = """
import os, pathlib, sys, time
i, ready = int(os.environ["SHARDSPEC_PROCESS_ID"]), pathlib.Path(sys.argv[1])
print(f"up, {i} of {os.environ['SHARDSPEC_NUM_PROCESSES']}")
print("Expected number of connected peer ranks is : 2")
if i != 1:
    (ready / str(i)).touch()
    time.sleep(600)
deadline = time.monotonic() + 60
while len(list(ready.iterdir())) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
print("failing", file=sys.stderr)
sys.exit(3)
"""


def test_a_failing_process_stops_its_peers_and_names_them(tmp_path):
    out: list[str] = []
    err: list[str] = []
    started = time.monotonic()
    result = run_local_cluster(
        [sys.executable, "-c", PEER, str(tmp_path)], 3, out=out.append, err=err.append, label="peers"
    )
    assert time.monotonic() - started < STOP_LIMIT_S
    assert result == ClusterResult((-signal.SIGTERM, 3, -signal.SIGTERM), frozenset({0, 2}))
    assert (result.failed, result.exit_code) == ((1,), 3)
    assert result.summary == "process 1 exited with 3; stopped processes 0, 2"
    assert sorted(out) == ["[0] up, 0 of 3", "[1] up, 1 of 3", "[2] up, 2 of 3"]  # gloo's line dropped
    assert err[0].startswith("launch: 3 processes, coordinator 127.0.0.1:") and err[0].endswith(": peers")
    assert [x.rsplit(" ", 1)[0] for x in err[1:4]] == [f"launch: process {i}: pid" for i in range(3)]
    assert err[4:] == ["[1] failing"]


def test_a_cluster_result_speaks_as_a_shell_would():
    assert ClusterResult((0, 0)).summary == "" and ClusterResult((0, 0)).exit_code == 0
    killed = ClusterResult((0, -signal.SIGKILL, 2), frozenset({0}))
    assert killed.failed == (1, 2) and killed.exit_code == 128 + signal.SIGKILL
    told = "process 1 was killed by SIGKILL (exit 137); process 2 exited with 2 (user error); stopped process 0"
    assert killed.summary == told


@pytest.mark.slow
def test_two_processes_serve_what_one_process_serves(tmp_path):
    """CI's multi-host check: 2 processes × 4 devices == 1 process × 8 devices, token for token."""
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    result = runner.invoke(app, ["run", MULTIHOST, "--output", str(one), *WORKLOAD])
    assert result.exit_code == 0, result.output
    assert "multihost {data: 2} is not in effect" in result.stderr

    done = launch("--local", "2", "--", "run", MULTIHOST, "--output", str(two), "--json", *WORKLOAD)
    assert done.returncode == 0, done.stderr
    assert two.read_text() == one.read_text()
    # Only process 0 writes: one JSON line on stdout, none from process 1 (whose
    # runtime libraries may still log a line of their own there).
    lines = done.stdout.splitlines()
    assert len([x for x in lines if x.startswith("[0] {")]) == 1, lines
    assert not any(x.startswith("[1] {") for x in lines), lines
    assert "[0] note: using 8 simulated CPU devices (4 in each of 2 processes)" in done.stderr


@pytest.mark.slow
def test_check_passes_across_two_processes():
    done = launch("--local", "2", "check", MULTIHOST)  # `--` is optional
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("[0] PASS: batch 8×16 tokens; greedy tokens identical at 128/128")
    assert "[1]" not in done.stdout


@pytest.mark.slow
def test_a_killed_process_ends_the_launch_with_a_clear_error():
    command = [
        sys.executable,
        "-m",
        "shardspec.cli.main",
        "launch",
        "--local",
        "2",
        "--",
        "run",
        MULTIHOST,
        "-n",
        "4000",
        *FAST,
    ]
    lines: list[str] = []
    pids: dict[int, int] = {}
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + HANG_S
            # Process 0's note comes once both processes joined the cluster; then let it serve.
            while not any("[0] note: using 8 simulated CPU devices" in x for x in list(lines)):
                assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
                time.sleep(0.1)
            pids = {
                int(x.split()[2].rstrip(":")): int(x.split()[-1])
                for x in list(lines)
                if x.startswith("launch: process ")
            }
            time.sleep(3)
            assert proc.poll() is None, "".join(lines)
            killed = time.monotonic()
            os.kill(pids[1], signal.SIGKILL)
            code = proc.wait(timeout=STOP_LIMIT_S)
            assert time.monotonic() - killed < STOP_LIMIT_S
            reader.join(timeout=10)
            err = "".join(lines)
            assert code == 128 + signal.SIGKILL, err
            assert "error: launch: process 1 was killed by SIGKILL (exit 137); stopped process 0" in err
            assert _gone(pids[0]), "process 0 was left running"
        finally:
            for pid in [proc.pid, *pids.values()]:
                if not _gone(pid):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_every_process_reports_a_user_error_and_the_launch_exits_2():
    done = launch("--local", "3", "--", "check", MULTIHOST)
    assert done.returncode == 2, done.stderr
    assert f"error: {MULTIHOST}:16: parallelism: 8 devices do not split evenly over 3 processes" in done.stderr
    # The first failure stops the others, which may or may not have failed by then.
    last = done.stderr.splitlines()[-1]
    assert last.startswith("error: launch: process ") and "exited with 2 (user error)" in last


def test_launch_runs_only_commands_that_join_a_cluster():
    result = runner.invoke(app, ["launch", "--local", "2", "--", "models"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: launch: 'models' is not a command that runs in a cluster (use one of")
    result = runner.invoke(app, ["launch", "--local", "2", "--", "run", MULTIHOST, "--process-id", "1"])
    assert result.exit_code == 2 and "--process-id is set by launch" in result.stderr


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie our own child left: reap it
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return False
