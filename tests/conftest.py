"""Every test runs on 8 simulated CPU devices (set before JAX creates its backend)."""

import os
from pathlib import Path

import jax
import pytest
from hypothesis import settings

from shardspec import compilation_cache

jax.config.update("jax_num_cpu_devices", 8)

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
