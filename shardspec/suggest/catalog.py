"""The device kinds `shardspec suggest` plans for: the shipped catalog (devices.yaml) and a
user's `--device-spec FILE`, checked like a strategy (a bad entry is a located error)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from .. import _yaml
from .._schema import schema_problems
from ..errors import ShardspecError, Source, did_you_mean, one_of, raise_all
from ..files import read_bytes

HERE = Path(__file__).parent
CATALOG = HERE / "devices.yaml"
SCHEMA = HERE / "devices.schema.json"
MAX_SPEC_BYTES = 1 << 20
GIGA, TERA = 1e9, 1e12


@dataclasses.dataclass(frozen=True)
class DeviceKind:
    """One accelerator, in bytes, bytes/s and operations/s."""

    name: str
    description: str
    hbm_bytes: float
    hbm_bandwidth: float
    peak_flops: dict[str, float]  # by element type (float16 reads bfloat16's)
    devices_per_host: int
    inside_host_bandwidth: float  # a mesh axis inside one host: per device, one direction
    across_hosts_bandwidth: float  # an axis `multihost:` spreads over hosts
    collective_latency: float  # seconds one collective costs before any byte moves

    def peak(self, dtype: str) -> float:
        """Dense peak FLOP/s for matmuls in `dtype`; a ShardspecError where the catalog has none."""
        key = "bfloat16" if dtype == "float16" else dtype
        if key not in self.peak_flops:
            raise ShardspecError(
                f"the catalog gives {self.name} no {dtype} peak (it has {one_of(self.peak_flops)})",
                path="--dtype",
                hint=f"use --dtype bfloat16, or give tflops.{key} for {self.name} in a --device-spec file",
            )
        return self.peak_flops[key]


def device_kinds(spec_file: str | os.PathLike | None = None) -> dict[str, DeviceKind]:
    """The catalog's kinds, with `spec_file`'s added or replacing those of the same name."""
    kinds = _read(CATALOG)
    if spec_file is not None:
        kinds |= _read(spec_file, hint="check the path of --device-spec")
    return kinds


def parse_devices(text: str, kinds: dict[str, DeviceKind]) -> tuple[DeviceKind, int]:
    """`KIND:N` (`h200:8`) -> (the kind, N devices)."""
    kind, sep, count = text.partition(":")
    if not sep or not count.isdigit() or int(count) < 1:
        raise ShardspecError(f"{text!r} is not KIND:N", path="--devices", hint="e.g. --devices h200:8")
    if kind not in kinds:
        close = did_you_mean(kind, kinds)
        raise ShardspecError(
            f"unknown device kind {kind!r}" + (f" ({close})" if close else ""),
            path="--devices",
            hint=f"one of {one_of(sorted(kinds))}, or describe it in a --device-spec file",
        )
    return kinds[kind], int(count)


def _read(path: str | os.PathLike, hint: str | None = None) -> dict[str, DeviceKind]:
    file = os.fspath(path)
    data, lines = _yaml.parse_document(read_bytes(file, MAX_SPEC_BYTES, hint), file)
    raise_all(schema_problems(data, Source(file, lines), json.loads(SCHEMA.read_text(encoding="utf-8"))))
    return {name: _kind(name, entry) for name, entry in data.items()}


def _kind(name: str, entry: dict) -> DeviceKind:
    links = entry["links"]
    return DeviceKind(
        name=name,
        description=entry.get("description", name),
        hbm_bytes=entry["hbm_gb"] * GIGA,
        hbm_bandwidth=entry["hbm_bandwidth_gb_s"] * GIGA,
        peak_flops={dtype: tflops * TERA for dtype, tflops in entry["tflops"].items()},
        devices_per_host=entry["devices_per_host"],
        inside_host_bandwidth=links["inside_host"] * GIGA,
        across_hosts_bandwidth=links["across_hosts"] * GIGA,
        collective_latency=links["latency_us"] * 1e-6,
    )
