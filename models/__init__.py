"""Flax NNX models that speak logical axes only (see `axes.py`).

Importing this package does not import jax: `presets` and `config` are plain
data so that strategies load and validate instantly.
"""
