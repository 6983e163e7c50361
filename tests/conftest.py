"""Every test runs on 8 simulated CPU devices (set before JAX creates its backend)."""

from pathlib import Path

import jax
import pytest
from hypothesis import settings

jax.config.update("jax_num_cpu_devices", 8)

# Property tests draw the same examples on every run: CI must not be flaky.
settings.register_profile("deterministic", derandomize=True)
settings.load_profile("deterministic")

ROOT = Path(__file__).resolve().parent.parent
STRATEGY_FILES = sorted((ROOT / "strategies").glob("*.yaml"))


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
    assert len(jax.devices()) == 8, "tests need 8 simulated CPU devices"


def strategy_ids():
    return [p.stem for p in STRATEGY_FILES]
