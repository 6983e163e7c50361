"""Every test runs on 8 simulated CPU devices (set before JAX creates its backend)."""

import contextlib
import os
from pathlib import Path

import jax
import pytest
from hypothesis import settings

from shardspec import compilation_cache

jax.config.update("jax_num_cpu_devices", 8)
# Tests check what shardspec computes, not how well LLVM optimises the CPU code for it:
# code generation at -O0 compiles a program in about two thirds of the time (the same HLO,
# so the same collectives, FLOPs and buffers; IEEE arithmetic either way). Set before JAX
# starts its backend; the commands the tests start inherit it.
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

ROOT = Path(__file__).resolve().parent.parent
# Every program compiled once for the whole run: JAX's persistent compilation cache,
# kept inside the clone, shared with the commands the tests start (they read the variable).
COMPILATION_CACHE = ROOT / ".jax_cache"
os.environ[compilation_cache.ENV] = str(COMPILATION_CACHE)
compilation_cache.enable(COMPILATION_CACHE)

# Property tests draw the same examples on every run: CI must not be flaky.
settings.register_profile("deterministic", derandomize=True)
settings.load_profile("deterministic")

STRATEGY_FILES = sorted((ROOT / "strategies").glob("*.yaml"))


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
    assert len(jax.devices()) == 8, "tests need 8 simulated CPU devices"


def strategy_ids():
    return [p.stem for p in STRATEGY_FILES]


# What JAX reports for each program it traces and each one XLA compiles (a persistent-cache
# hit is traced but not compiled).
_PROGRAM_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/backend_compile_duration")


@pytest.fixture
def jax_programs():
    """A context manager that lists the programs traced or compiled inside it, as event names."""

    @contextlib.contextmanager
    def watch():
        seen = []

        def listen(event, seconds, **_):
            if event in _PROGRAM_EVENTS:
                seen.append(event)

        jax.monitoring.register_event_duration_secs_listener(listen)
        try:
            yield seen
        finally:
            jax.monitoring.unregister_event_duration_listener(listen)

    return watch
