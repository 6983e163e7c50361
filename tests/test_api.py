"""The public API: explicit names, functions even after their modules are imported."""

import subprocess
import sys

import shardspec
import shardspec.explanation  # noqa: F401  (importing modules must not shadow the functions)
import shardspec.placement  # noqa: F401


def test_public_names():
    assert set(shardspec.__all__) == {
        "load",
        "Strategy",
        "compile",
        "ShardingPlan",
        "apply",
        "explain",
        "Engine",
        "hlo_report",
        "ShardspecError",
        "DecoderGeometry",
        "Layout",
        "ServableModel",
    }
    for name in ("load", "compile", "apply", "explain", "hlo_report"):
        assert callable(getattr(shardspec, name)), name
    from shardspec import apply, explain

    assert apply.__name__ == "apply" and explain.__name__ == "explain"


def test_loading_a_strategy_does_not_import_jax():
    code = (
        "import sys, shardspec; shardspec.load('strategies/dp.yaml'); assert 'jax' not in sys.modules, 'jax imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=shardspec.__path__[0] + "/..")
