"""shardspec: a sharding-strategy compiler for JAX.

    strategy = shardspec.load("strategies/attention_dp.yaml")
    plan = shardspec.compile(strategy)            # mesh + PartitionSpec trees
    print(shardspec.explain(plan))                # every tensor, bytes per device
    model = shardspec.apply(plan)                 # parameters created in their shardings
    engine = shardspec.Engine(plan)               # serve it: DP scheduler + input packer

Any Flax model compiles the same way, `shardspec.compile(strategy, module)`
(an nnx.Module or State, Linen variables, or a pytree with `axes=`); a decoder
that implements `ServableModel` (`shardspec.protocol`) is served by `Engine`.

`load`, `Strategy` and the protocol types never import jax, so loading and
validating a strategy is instant; the rest is imported on first use.

Layout: this folder is the library. The top-level `models/` and `cli/`
folders are installed as `shardspec.models` and `shardspec.cli`
(`pyproject.toml` maps them), so `from .models import ...` here means `models/`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import ShardspecError
from .load import load
from .protocol import DecoderGeometry, Layout, ServableModel
from .strategy import Strategy

# Public name -> module that defines it (imported lazily: these pull in jax).
_LAZY = {
    "compile": ".plan",
    "ShardingPlan": ".plan",
    "apply": ".placement",
    "explain": ".explanation",
    "Engine": ".runtime.engine",
    "hlo_report": ".hlo",
}

__all__ = ["load", "Strategy", "ShardspecError", "DecoderGeometry", "Layout", "ServableModel", *_LAZY]

if TYPE_CHECKING:
    from .explanation import explain  # noqa: F401
    from .hlo import hlo_report  # noqa: F401
    from .placement import apply  # noqa: F401
    from .plan import ShardingPlan, compile  # noqa: F401
    from .runtime.engine import Engine  # noqa: F401


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'shardspec' has no attribute {name!r}")
