"""A Suggestion as a table (rich), as JSON, and its best candidate as a strategy file."""

from __future__ import annotations

import io
import json

import yaml
from rich.console import Console
from rich.table import Table

from . import Suggestion
from .roofline import UTILIZATION
from .search import Candidate

ASSUMPTIONS = (
    "roofline per device: max(FLOPs ÷ peak, HBM bytes ÷ bandwidth) + collectives (ring: latency + bytes ÷ link); "
    "compute and collectives never overlap; kernels at peak; the host's time between steps, activations' HBM "
    f"traffic and KV-head replication's repeated work ignored; memory: {UTILIZATION:.0%} of HBM; "
    "a rank prefills its requests' prompts in full chunks, then decodes them together (shardspec/suggest/roofline.py)"
)

CALIBRATED = (
    "the first {n} candidates' steps measured on this process's devices (a padding-only step at each one's decode and "
    "prefill buckets, the median of 5: the KV context's attention left out), ranked again among themselves"
)


def text(s: Suggestion, top: int | None = None) -> str:
    w = s.workload
    out = io.StringIO()
    console = Console(file=out, width=160, no_color=True, highlight=False)
    console.print(
        f"{s.model} on {s.devices} × {s.kind.name} ({s.kind.description}; {s.hosts} host{'s' * (s.hosts > 1)}), "
        f"{s.dtype}, KV {s.kv_dtype}\nworkload: prompt {w.prompt_mean:g} (max {w.prompt_max}), output "
        f"{w.output_mean:g} (max {w.output_max}), {w.concurrency} in flight" + _limits(w)
    )
    fitting = [c for c in s.candidates if c.fits][:top]
    if fitting:
        console.print(_table(fitting))
    rejected = [c for c in s.candidates if not c.fits]
    if rejected:
        console.print(f"rejected ({len(rejected)}):")
        for c in rejected:
            console.print(f"  {one_line(c)}: {c.reason}")
    console.print(f"assumptions: {ASSUMPTIONS}")
    if s.measured:
        console.print(f"calibrated: {CALIBRATED.format(n=s.measured)}")
    return out.getvalue()


def _limits(w) -> str:
    given = (("TTFT", w.max_ttft_ms), ("TPOT", w.max_tpot_ms))
    limits = [f"{name} ≤ {ms:g} ms" for name, ms in given if ms is not None]
    return f"; limits: {', '.join(limits)}" if limits else ""


def _table(candidates: list[Candidate]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    for name in ("#", "strategy", "headroom GB", "decode ms", "prefill ms", "TTFT ms", "TPOT ms", "tok/s/dev", "bound"):
        table.add_column(name, justify="left" if name in ("strategy", "bound") else "right")
    for i, c in enumerate(candidates, 1):
        missed = f" (misses {', '.join(c.missed)})" if c.missed else ""
        table.add_row(
            str(i),
            one_line(c),
            f"{c.memory.headroom / 1e9:,.1f}",
            f"{c.decode.ms:,.2f}",
            f"{c.prefill.ms:,.1f}",
            f"{c.ttft_ms:,.1f}",
            f"{c.tpot_ms:,.2f}",
            f"{c.tokens_per_s_per_device:,.1f}",
            c.decode.bound + missed,
        )
    return table


def one_line(c: Candidate) -> str:
    p = c.parallelism
    line = f"data {p['data']} × tensor {p['tensor']}"
    if p["attention_data"] > 1:
        line += f" (attention_data {p['attention_data']})"
    if p["expert"] > 1:
        line += f" × expert {p['expert']}"
    if multihost := c.strategy.get("multihost"):
        line += "; across hosts " + ", ".join(f"{a} {f}" for a, f in multihost.items())
    return line


def as_json(s: Suggestion) -> str:
    return json.dumps(
        {
            "model": s.model,
            "device": {"kind": s.kind.name, "count": s.devices, "hosts": s.hosts, "description": s.kind.description},
            "dtype": s.dtype,
            "kv_dtype": s.kv_dtype,
            "workload": s.workload.as_dict(),
            "candidates": [_candidate_json(c) for c in s.candidates],
            "best": s.best,
            "assumptions": ASSUMPTIONS,
            "measured": s.measured,
        },
        indent=2,
    )


def _candidate_json(c: Candidate) -> dict:
    timed = c.decode is not None
    return {
        "name": c.strategy["name"],
        "parallelism": c.parallelism,
        "multihost": c.strategy.get("multihost", {}),
        "fits": c.fits,
        "reason": c.reason,
        "memory_bytes_per_device": c.memory.total if c.memory else None,
        "memory_headroom_bytes": int(c.memory.headroom) if c.memory else None,
        "decode_step_ms": c.decode.ms if timed else None,
        "prefill_ms": c.prefill.ms if timed else None,
        "ttft_ms": c.ttft_ms,
        "tpot_ms": c.tpot_ms,
        "tokens_per_s_per_device": c.tokens_per_s_per_device,
        "bound": c.decode.bound if timed else None,
        "decode_parts_ms": {k: v * 1e3 for k, v in c.decode.parts.items()} if timed else None,
        "misses": list(c.missed),
    }


def strategy_yaml(s: Suggestion, index: int) -> str:
    """Candidate `index` as a commented strategy file that `shardspec validate` accepts."""
    c = s.candidates[index]
    w = s.workload
    header = (
        f"# Written by `shardspec suggest` for {s.model} on {s.devices} × {s.kind.name}: rank {index + 1} of "
        f"{len(s.candidates)}.\n"
        f"# Workload: prompt {w.prompt_mean:g} (max {w.prompt_max}), output {w.output_mean:g} (max {w.output_max}), "
        f"{w.concurrency} requests in flight.\n"
        f"# Predicted (roofline; see `shardspec suggest --help`): decode step {c.decode.ms:.2f} ms ({c.decode.bound}), "
        f"TTFT {c.ttft_ms:.1f} ms, {c.tokens_per_s_per_device:.1f} output tokens/s per device, "
        f"{c.memory.headroom / 1e9:.1f} GB a device to spare.\n"
        f"# kv_cache.num_pages holds the busiest rank's {c.strategy['runtime']['max_num_seqs']} longest requests.\n"
    )
    return header + yaml.safe_dump(c.strategy, sort_keys=False)
