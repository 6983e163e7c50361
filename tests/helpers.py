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
