"""Small builders shared by tests."""

from __future__ import annotations

import yaml

from shardspec import load


def strategy(text: str = "", **sections):
    """A strategy from YAML text plus keyword sections, llama3-tiny by default."""
    data = yaml.safe_load(text) or {}
    data.setdefault("model", "llama3-tiny")
    for key, value in sections.items():
        data[key] = value
    return load(data)


def example(name: str):
    """A module of `examples/` (not a package: imported by path)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
