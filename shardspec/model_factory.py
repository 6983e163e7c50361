"""A model named by where its code is: `package.module:attribute` (`--model`, a strategy's `model:`).

The attribute is a callable that takes no arguments and returns the model (an
nnx.Module, concrete or from `nnx.eval_shape`, an nnx.State, Linen variables,
or a pytree with its axes named by the strategy's `params:`), or the model
itself. The current directory is importable, as for `python -m`. What the
factory returns is compiled like any outside model (`compile(strategy, model)`);
a concrete servable module is what `run` and `serve` serve.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any

from .errors import ShardspecError, Source

_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_HINT = "give package.module:factory, a callable that takes no arguments and returns the model"


def names_a_factory(model: Any) -> bool:
    """Whether `model` is a `package.module:attribute` string (and not a path that exists)."""
    return isinstance(model, str) and _SPEC.fullmatch(model) is not None and not os.path.exists(model)


def load_factory(spec: str, where: Source | None = None) -> Any:
    """The model `spec` names; a ShardspecError (located at `where`'s `model:`) if it cannot be had."""
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:  # a console script does not see the current directory: `python -m` does
        sys.path.insert(0, os.getcwd())
    try:
        found = importlib.import_module(module_name)
    except ImportError as e:
        raise _error(where, f"{spec}: cannot import {module_name}: {e}", _HINT) from None
    for name in attribute.split("."):
        if not hasattr(found, name):
            raise _error(where, f"{spec}: {module_name} has no attribute {attribute!r}", _HINT)
        found = getattr(found, name)
    if not callable(found) or _is_module(found):  # the model itself (a module's __call__ is its forward)
        return found
    try:
        return found()
    except Exception as e:  # the factory is the caller's code: its failure is theirs, said in one line
        raise _error(
            where, f"{spec}() raised {type(e).__name__}: {e}", "run the factory by hand with --debug"
        ) from None


def _is_module(x) -> bool:
    import flax.linen as nn
    from flax import nnx

    return isinstance(x, (nnx.Module, nn.Module))


def _error(where: Source | None, message: str, hint: str) -> ShardspecError:
    if where is not None:
        return where.error("model", message, hint)
    return ShardspecError(message, path="model", hint=hint)
