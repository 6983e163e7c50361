"""Flax NNX models that speak logical axes only (see `axes.py`).

This top-level `models/` folder is installed as `shardspec.models` (the
project's layout keeps it beside `shardspec/`; `pyproject.toml` maps it), so
`from shardspec.models import presets` and, inside the library, `from .models
import ...` in `shardspec/*.py` both mean this folder.

Importing this package does not import jax: `presets` and `config` are plain
data so that strategies load and validate instantly.
"""
