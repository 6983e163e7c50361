"""Many hosts: joining JAX's own multi-controller runtime (`jax.distributed`).

One process per host; every process runs the same program over one global
mesh, and JAX moves data between hosts inside the compiled step. shardspec adds
no runtime of its own: it joins the cluster before JAX starts its backends,
checks that every process agrees on its inputs, and lets process 0 alone speak
for the cluster (outputs, metrics, reports).

How a process finds its cluster, first match wins:
1. `--coordinator HOST:PORT --num-processes N --process-id I` on the command
   line, or `SHARDSPEC_COORDINATOR`, `SHARDSPEC_NUM_PROCESSES`,
   `SHARDSPEC_PROCESS_ID` (what `shardspec launch` sets). Any one left out is
   auto-detected by JAX. `--num-processes 1` means: one process, join nothing.
2. A strategy with `multihost:` factors and no flags: `jax.distributed.initialize()`
   auto-detects the cluster where JAX can (Cloud TPU pods, SLURM, Open MPI,
   Kubernetes); where it finds none, the run stays one process and `multihost`
   is not in effect.
3. Otherwise: one process.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys

import jax
import numpy as np

from .cluster_env import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID
from .errors import Problem, ShardspecError

JOIN_HINT = (
    f"pass --coordinator HOST:PORT --num-processes N --process-id I (or set {ENV_COORDINATOR}, "
    f"{ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); on one machine use `shardspec launch --local N -- ...`"
)


def join(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto_detect: bool = False,
) -> int:
    """Join the cluster if one is given (or, with `auto_detect`, found); return its process count.

    Must run before JAX starts its backends (the first device query). When they
    have started already (a library user, a test), nothing is joined and the
    count is what JAX has. CPU processes talk through gloo collectives.
    """
    if jax.distributed.is_initialized():
        return _state().num_processes
    given = (coordinator, num_processes, process_id) != (None, None, None)
    _check_args(coordinator, num_processes, process_id)
    if num_processes == 1 or not (given or auto_detect):
        return 1
    from jax._src import xla_bridge  # backends_are_initialized has no public home

    if xla_bridge.backends_are_initialized():
        if given:
            raise ShardspecError(
                "cannot join a cluster: JAX has started its devices in this process already",
                hint="join before any JAX computation (the CLI does; from Python call "
                "shardspec.distributed.join first)",
            )
        return jax.process_count()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    _native_stdout_to_stderr()
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    except ValueError as e:  # JAX found no cluster to fill in what was not given
        if not given:
            return 1
        raise ShardspecError(f"cannot join the cluster: {e}", hint=JOIN_HINT) from None
    return _state().num_processes


def _native_stdout_to_stderr() -> None:
    """Point the C-level stdout at stderr; Python's own stdout keeps the real one.

    gloo's C++ prints "Expected number of connected peer ranks ..." on the C
    stdout, now and then split over lines of its own, in the middle of what the
    program writes there (a JSON line, a report). Only when sys.stdout is the
    process's own fd 1 (not a test's capture).
    """
    try:
        if sys.stdout.fileno() != 1:
            return
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return
    sys.stdout.flush()
    own = os.dup(1)
    os.dup2(2, 1)
    encoding, errors = sys.stdout.encoding, sys.stdout.errors
    sys.stdout = io.TextIOWrapper(io.FileIO(own, "w"), encoding=encoding, errors=errors, line_buffering=True)


def _check_args(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    problems = []
    if coordinator is not None:
        host, colon, port = coordinator.rpartition(":")
        if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
            problems.append(
                Problem(
                    f"{coordinator!r} is not HOST:PORT",
                    path="--coordinator",
                    hint="e.g. 10.0.0.1:1234: process 0's host and a free port",
                )
            )
    if num_processes is not None and num_processes < 1:
        problems.append(Problem(f"{num_processes} is below 1", path="--num-processes"))
    if process_id is not None and not 0 <= process_id < (num_processes or process_id + 1):
        problems.append(
            Problem(
                f"{process_id} is not a process id of {num_processes} processes",
                path="--process-id",
                hint=f"use 0 to {(num_processes or 1) - 1}",
            )
        )
    if problems:
        raise ShardspecError(problems)


def _state():
    from jax._src import distributed  # the joined cluster's size, known before backends start

    return distributed.global_state


def process_count() -> int:
    """Processes in the cluster (1 when none was joined); needs no backend."""
    return _state().num_processes if jax.distributed.is_initialized() else 1


def is_main() -> bool:
    """Whether this process speaks for the cluster: writes outputs, prints results."""
    return not jax.distributed.is_initialized() or _state().process_id == 0


def agree(value: object, what: str, hint: str) -> None:
    """Raise a ShardspecError when some process holds another `value` (JSON-able) than process 0."""
    if differ := disagreeing(value):
        raise ShardspecError(f"processes {differ} hold other {what} than process 0", hint=hint)


def disagreeing(value: object) -> list[int]:
    """The processes whose `value` (JSON-able) differs from process 0's; [] in one process.

    One small all-gather of a digest; every process must call it at the same point.
    """
    if jax.process_count() == 1:
        return []
    from jax.experimental import multihost_utils

    text = json.dumps(value, sort_keys=True, default=str).encode()
    digest = np.frombuffer(hashlib.sha256(text).digest(), np.uint8)
    digests = np.asarray(multihost_utils.process_allgather(digest))  # [processes, 32]
    return [i for i in range(len(digests)) if not np.array_equal(digests[i], digests[0])]


def global_array(host: np.ndarray, sharding: jax.sharding.NamedSharding) -> jax.Array:
    """A host array placed in `sharding`, across processes too.

    Every process holds the same full host array (each runs the same scheduler
    on the same requests, or draws the same seeded batch), so each hands its own
    devices their slices.
    """
    if not sharding.mesh.is_multi_process:
        return jax.device_put(host, sharding)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def fetch(x: jax.Array) -> np.ndarray:
    """The whole array on the host; across processes each gathers the others' shards."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def leave() -> None:
    """Leave the cluster at the end of a successful command: a barrier, so no process
    exits while another still needs the coordinator (process 0 hosts it)."""
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


def broadcast_text(text: str) -> str:
    """Process 0's `text` on every process; every process must call it at the same point.

    Two broadcasts: the length, then the bytes padded to a power of two (few shapes,
    so few compiles of the collective)."""
    if jax.process_count() == 1:
        return text
    from jax.experimental import multihost_utils

    data = np.frombuffer(text.encode(), np.uint8)
    n = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
    buf = np.zeros(max(64, 1 << max(0, n - 1).bit_length()), np.uint8)
    if is_main():
        buf[:n] = data
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(buf))[:n]).decode()
