"""`explain()`: the whole layout of a plan as text or JSON, from shapes alone.

One line per parameter; every derived size with its derivation; every policy
fallback and every large replicated tensor as a warning. Uses no device memory.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from . import mesh as mesh_lib
from .plan import ShardingPlan
from .rules import shard_count
from .runtime import step_costs
from .runtime.paged_attention import IMPLEMENTATION as ATTENTION
from .strategy import MESH_AXES

LARGE_REPLICATED = 1 << 20  # warn about replicated tensors above 1 MiB
NO_KV_CACHE = "no KV cache: the model declares no decoder geometry (shardspec.protocol.DecoderGeometry)"


def explain(plan: ShardingPlan, format: str = "text", hlo: dict[str, Any] | None = None) -> str:
    """`hlo`: a `shardspec.hlo.hlo_report()` to add (text: a table at the end; JSON: key "hlo")."""
    if format == "json":
        out = explain_dict(plan)
        if hlo is not None:
            out["hlo"] = hlo
        return json.dumps(out, indent=2)
    return "\n".join(_text_lines(plan) + (hlo_lines(hlo) if hlo is not None else [])) + "\n"


def hlo_lines(hlo: dict[str, Any]) -> list[str]:
    """The collectives of each compiled step, one line per kind that occurs, then memory."""
    steps = {"decode": hlo, "prefill": hlo["prefill"]}
    rows = [("step", "tokens", "collective", "count", "bytes", "per layer")]
    for name, step in steps.items():
        tokens = f"{step['tokens'] // step['tokens_per_rank']}×{step['tokens_per_rank']}"
        kinds = [k for k, n in step["collectives"].items() if n or step["per_layer"][k]]
        rows += [
            (name, tokens, k, str(step["collectives"][k]), fmt_bytes(step["bytes"][k]), str(step["per_layer"][k]))
            for k in kinds
        ] or [(name, tokens, "none", "", "", "")]
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    per_layer = (
        "what the decoder layers add, ÷ layers"
        if hlo.get("per_layer_basis", "layers") == "layers"
        else "the whole step ÷ layers (an outside model has no copy without layers to subtract)"
    )
    lines = ["", f"collectives (compiled serving step; tokens = ranks × tokens a rank; per layer = {per_layer}):"]
    lines += [
        "  "
        + "  ".join(
            [*(r[i].ljust(widths[i]) for i in range(3)), *(r[i].rjust(widths[i]) for i in range(3, 6))]
        ).rstrip()
        for r in rows
    ]
    lines += ["", "compiled memory per device:"]
    for name, step in steps.items():
        memory = (f"{k.replace('_', ' ')} {fmt_bytes(v)}" for k, v in step["memory"].items())
        lines.append(f"  {name:<7}  " + " · ".join(memory))
    lines += [
        "",
        "FLOPs per device (XLA's cost analysis, which counts a loop's body once: the paged attention's "
        "block for one tile of tokens, the sparse MoE's tile; ideal = 2 × parameters touched × tokens "
        "+ one tile's attention over one block of context, shardspec/flops.py):",
    ]
    for name, step in steps.items():
        ideal = (
            f" · ideal {fmt_count(step['flops_ideal'])} · {step['flops_over_ideal']}× the ideal"
            if step["flops_ideal"]
            else " (no analytic ideal for an outside model)"
        )
        lines.append(f"  {name:<7}  {fmt_count(step['flops'])}{ideal}")
    return lines


def fmt_count(n: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f}"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def spec_str(spec) -> str:
    """P('model', None) printed without the noise: (model, -)."""
    parts = ["-" if e is None else e if isinstance(e, str) else "×".join(e) for e in spec]
    return "(" + ", ".join(parts) + ")"


def _spec_json(spec) -> list:
    return [e if e is None or isinstance(e, str) else list(e) for e in spec]


def derivations(plan: ShardingPlan) -> list[str]:
    s, kv = plan.mesh_shape, plan.kv_cache
    tensor = plan.strategy.parallelism.tensor
    return [
        plan.attention_data_why,
        f"model (attention TP) = tensor {tensor} / attention_data {plan.attention_data} = {s['model']}",
        f"DP ranks = data {s['data']} × attn_dp {s['attn_dp']} = {plan.dp_ranks}",
        NO_KV_CACHE if kv is None else _replication_why(kv, s["model"]),
    ]


def _replication_why(kv, model: int) -> str:
    if kv.is_latent and model == 1:
        return "latent replication = 1: one latent a token, on its rank's one device (model 1)"
    if kv.is_latent:
        return (
            f"latent replication = {kv.replication}: one latent a token and no head axis to split, "
            f"so each of model {model} devices holds its rank's whole cache"
        )
    return (
        f"KV-head replication = {kv.replication}: kv_heads {kv.kv_heads} stored as {kv.slots} slots over model {model}"
    )


def totals(plan: ShardingPlan) -> dict[str, int]:
    devices = plan.device_count
    params = sum(p.bytes_per_device for p in plan.params)
    ideal = sum(math.prod(p.shape) * p.itemsize for p in plan.params) / devices
    kv = 0 if plan.kv_cache is None else plan.kv_cache.bytes_per_device()
    return {
        "params_bytes_per_device": params,
        "params_ideal_bytes_per_device": int(ideal),
        "kv_cache_bytes_per_device": kv,
        "bytes_per_device": params + kv,
    }


def warnings(plan: ShardingPlan) -> list[str]:
    out = _model_notes(plan)
    out += [f"rules.{name}: {plan.model.name} does not use this logical axis (ignored)" for name in plan.unused_rules]
    for p in filter(lambda p: p.is_param, plan.params):
        out += [f"{p.path}: {note}" for note in p.notes]
        if (
            all(e is None for e in p.spec)
            and p.bytes_per_device > LARGE_REPLICATED
            and plan.dp_ranks * plan.attn_tp > 1
        ):
            out.append(f"{p.path}: {fmt_bytes(p.bytes_per_device)} replicated on every device")
    return out


def _model_notes(plan: ShardingPlan) -> list[str]:
    """What of the model the plan leaves out."""
    config = plan.model.config
    mtp = getattr(config, "mtp_layers", 0)
    if not mtp:
        return []
    return [
        f"model: the checkpoint's {mtp} multi-token-prediction layer(s) past layer {config.num_layers - 1} "
        "are not loaded (they only serve speculative decoding)"
    ]


def _state_lines(plan: ShardingPlan) -> list[str]:
    """The model's other variables (RNG keys and counts, batch statistics): listed apart, replicated."""
    state = [p for p in plan.params if not p.is_param]
    if not state:
        return []
    lines = ["", "other variables (not parameters: replicated, never split):"]
    return lines + [
        f"  {p.path}  {'×'.join(map(str, p.shape)) or 'scalar'}  {fmt_bytes(p.bytes_per_device)}" for p in state
    ]


def mesh_picture(plan: ShardingPlan) -> list[str]:
    """Device ids on the mesh, size-1 axes hidden: rows = leading axes, columns = last."""
    return _grid(plan, mesh_lib.device_ids(plan.mesh_shape, plan.mesh))


def process_picture(plan: ShardingPlan) -> list[str]:
    """The process (host) of each device, laid out as in `mesh_picture`; [] in one process."""
    ids = mesh_lib.process_ids(plan.mesh_shape, plan.strategy, plan.mesh)
    if ids is None:
        return []
    factors = " × ".join(f"{a} {f}" for a, f in mesh_lib.cross_host(plan.mesh_shape, plan.strategy).items() if f > 1)
    return ["", f"processes: {int(ids.max()) + 1}, one per host (multihost: {factors or 'none'})"] + _grid(plan, ids)


def _grid(plan: ShardingPlan, ids: np.ndarray) -> list[str]:
    axes = [a for a in MESH_AXES if plan.mesh_shape[a] > 1]
    grid = ids.reshape([plan.mesh_shape[a] for a in axes]) if axes else ids.reshape(1)
    if len(axes) <= 1:
        name = axes[0] if axes else "devices"
        return [f"  {name}: " + " ".join(str(i) for i in grid.reshape(-1))]
    *rows, col = axes
    width = max(len(str(ids.max())), len(f"{col} {plan.mesh_shape[col] - 1}"))
    labels = [" · ".join(f"{a} {i}" for a, i in zip(rows, idx)) for idx in np.ndindex(*grid.shape[:-1])]
    pad = max(map(len, labels))
    lines = ["  " + " " * pad + "  " + "  ".join(f"{col} {j}".rjust(width) for j in range(grid.shape[-1]))]
    for label, row in zip(labels, grid.reshape(-1, grid.shape[-1])):
        lines.append("  " + label.ljust(pad) + "  " + "  ".join(str(i).rjust(width) for i in row))
    return lines


def _text_lines(plan: ShardingPlan) -> list[str]:
    st, s = plan.strategy, plan.mesh_shape
    devices = plan.device_count
    lines = [f"strategy {st.name} · model {plan.model.name} · {devices} devices", ""]
    lines.append("mesh: " + " × ".join(f"{a} {s[a]}" for a in MESH_AXES) + "   (size-1 axes hidden below)")
    lines += mesh_picture(plan) + process_picture(plan) + ["", "derived:"]
    lines += [f"  {d}" for d in derivations(plan)] + ["", "rules:"]
    for name, rule in plan.rules.items():
        mesh = [a for a in rule.mesh_axes if s[a] > 1]
        lines.append(f"  {name:<11} → {'×'.join(mesh) or 'replicated':<14} ({rule.why})")
    lines += ["", "params:"]
    rows = [
        (
            p.path,
            "×".join(map(str, p.stored_shape)),
            "(" + ", ".join(a or "-" for a in p.axes) + ")",
            spec_str(p.spec),
            fmt_bytes(p.bytes_per_device),
        )
        for p in plan.params
        if p.is_param
    ]
    rows.insert(0, ("path", "shape", "logical axes", "spec", "per device"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines += ["  " + "  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4].rjust(10) for r in rows]
    lines += _state_lines(plan)
    lines += expert_lines(plan)
    lines += ["", "kv cache:"] + _kv_lines(plan)
    if plan.kv_cache is not None:
        lines += ["", "serving:"] + _serving_lines(plan)
    t = totals(plan)
    lines += [
        "",
        "totals per device:",
        f"  params {fmt_bytes(t['params_bytes_per_device'])} "
        f"(ideal {fmt_bytes(t['params_ideal_bytes_per_device'])} = total / {devices})",
        f"  kv cache {fmt_bytes(t['kv_cache_bytes_per_device'])}",
        f"  total {fmt_bytes(t['bytes_per_device'])}",
    ]
    warns = warnings(plan)
    if warns:
        lines += ["", "warnings:"] + [f"  {w}" for w in warns]
    return lines


PREFIX_CACHING = "on: full pages shared by prefix per DP rank, least recently used reclaimed first"


def _kv_lines(plan: ShardingPlan) -> list[str]:
    kv = plan.kv_cache
    if kv is None:
        return [f"  {NO_KV_CACHE}"]
    auto = " (auto)" if plan.strategy.kv_cache.num_pages == "auto" else ""
    dtype_auto = " (auto: the runtime dtype)" if plan.strategy.kv_cache.dtype == "auto" else ""
    longest = plan.runtime.max_model_len
    if plan.strategy.runtime.max_model_len:
        whose = "runtime.max_model_len"
    elif longest == plan.runtime.model_max_len:
        whose = "the model's maximum"
    else:  # the model allows more than a rank holds
        whose = plan.runtime.limit_reason()
    shape = f"[pages, {kv.page_size}, {kv.slots}, {kv.head_dim}] {kv.dtype}{dtype_auto}, spec {spec_str(kv.spec)}"
    if kv.is_latent:
        what = (
            f"  latent per layer (multi-head latent attention): {shape}",
            f"    a token: {kv.latent_dim} latent + {kv.head_dim - kv.latent_dim} rope key channels, "
            f"{fmt_bytes(kv.bytes_per_token_per_layer)} a layer; the latent channels are also the values",
        )
    else:
        what = (f"  K and V per layer: {shape}",)
    label = "latent replication" if kv.is_latent else "KV-head replication"
    return [
        *what,
        f"  pages per DP rank: {kv.pages_per_rank}{auto}, {kv.tokens_per_rank:,} tokens · {label}: {kv.replication}",
        f"  per device: {fmt_bytes(kv.bytes_per_page_per_device)} a page, "
        f"{fmt_bytes(kv.bytes_per_device(1000))} per 1,000 pages, "
        f"{fmt_bytes(kv.bytes_per_device())} for {kv.pages_per_rank} pages",
        f"  max_model_len: {longest} ({whose}) · attention: {ATTENTION}",
        "  prefix caching: "
        + (PREFIX_CACHING if plan.strategy.kv_cache.prefix_caching else "off (kv_cache.prefix_caching: false)"),
    ]


def _serving_lines(plan: ShardingPlan) -> list[str]:
    rt, serving = plan.strategy.runtime, _serving_json(plan)
    if serving["step_costs_ms"] is None:
        costs = "auto: measured at warm-up (`run --json` reports them)"
    else:
        costs = "from the strategy: " + ", ".join(f"{b} {ms:g}" for b, ms in serving["step_costs_ms"].items())
    return [
        f"  routing: {rt.routing} · async scheduling: {'on' if rt.async_scheduling else 'off'}",
        f"  token buckets per DP rank: {' '.join(map(str, plan.runtime.token_buckets))}",
        f"  step costs (ms per step by bucket): {costs}",
        f"  admission keeps pages for {serving['kv_growth_reserve_tokens']} output tokens of each running "
        f"sequence ({_reserve_why(rt)})",
    ]


def _reserve_why(rt) -> str:
    if rt.kv_growth_reserve == "auto":
        return "auto: one seat's share of a rank's pages"
    return "set in the strategy" + (
        "; 0: it preempts when decodes outgrow the pages" if not rt.kv_growth_reserve else ""
    )


def _serving_json(plan: ShardingPlan) -> dict[str, Any]:
    rt, buckets = plan.strategy.runtime, plan.runtime.token_buckets
    given = rt.step_costs != "auto"
    return {
        "routing": rt.routing,
        "async_scheduling": rt.async_scheduling,
        "token_buckets": list(buckets),
        "step_costs": "strategy" if given else "auto",
        "step_costs_ms": step_costs.interpolated(rt.step_costs, buckets) if given else None,
        "kv_growth_reserve": rt.kv_growth_reserve,
        "kv_growth_reserve_tokens": plan.runtime.growth_reserve_tokens,
    }


def _kv_json(plan: ShardingPlan) -> dict[str, Any] | None:
    kv = plan.kv_cache
    if kv is None:
        return None
    return {
        "spec": _spec_json(kv.spec),
        "bytes_per_device": kv.bytes_per_device(),
        "bytes_per_page_per_device": kv.bytes_per_page_per_device,
        "pages_per_rank": kv.pages_per_rank,
        "page_size": kv.page_size,
        "kv_head_replication": kv.replication,
        "kv_slots": kv.slots,
        "kind": "latent" if kv.is_latent else "per_head",
        "latent_dim": kv.latent_dim,
        "bytes_per_token_per_layer": kv.bytes_per_token_per_layer,
        "tokens_per_rank": kv.tokens_per_rank,
        "dtype": kv.dtype,
        "max_model_len": plan.runtime.max_model_len,
        "attention": ATTENTION,
        "prefix_caching": plan.strategy.kv_cache.prefix_caching,
    }


def explain_dict(plan: ShardingPlan) -> dict[str, Any]:
    """The JSON form (DESIGN §5)."""
    kv = plan.kv_cache
    return {
        "strategy": plan.strategy.name,
        "model": plan.model.name,
        "mesh": _mesh_json(plan),
        "attention_data": plan.attention_data,
        "derived": {
            "dp_ranks": plan.dp_ranks,
            "attn_tp": plan.attn_tp,
            "kv_head_replication": None if kv is None else kv.replication,
            "why": derivations(plan),
        },
        "rules": {name: [a for a in r.mesh_axes if plan.mesh_shape[a] > 1] for name, r in plan.rules.items()},
        "params": [
            {
                "path": p.path,
                "shape": list(p.stored_shape),
                "axes": list(p.axes),
                "spec": _spec_json(p.spec),
                "bytes_per_device": p.bytes_per_device,
                "notes": list(p.notes),
            }
            for p in plan.params
            if p.is_param
        ],
        "variables": [
            {"path": p.path, "shape": list(p.shape), "dtype": p.dtype, "bytes_per_device": p.bytes_per_device}
            for p in plan.params
            if not p.is_param
        ],
        "kv_cache": _kv_json(plan),
        "serving": _serving_json(plan) if kv is not None else None,
        "totals": totals(plan),
        "warnings": warnings(plan),
        **({"experts": e} if (e := experts(plan)) else {}),
    }


def experts(plan: ShardingPlan) -> dict[str, Any] | None:
    """Which experts live on which devices (one entry per expert shard); None for a dense model.

    Read from the planned spec of the first stacked expert weight, so `rules:`
    and `params:` overrides show as they take effect.
    """
    if plan.model.experts_per_token is None:
        return None
    layout = next((p for p in plan.params if p.path.endswith("mlp.gate_proj") and len(p.shape) == 3), None)
    if layout is None:
        return None
    entry = layout.spec[0] if len(layout.spec) else None
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    shape = plan.mesh_shape
    ids = mesh_lib.device_ids(shape, plan.mesh)
    per = layout.shape[0] // shard_count(axes, shape)
    groups: dict[int, list[int]] = {}
    for coord in np.ndindex(ids.shape):
        at, shard = dict(zip(MESH_AXES, coord)), 0
        for a in axes:  # a spec entry of several axes: the first is the major one
            shard = shard * shape[a] + at[a]
        groups.setdefault(shard, []).append(int(ids[coord]))
    return {
        "num_experts": layout.shape[0],
        "experts_per_token": plan.model.experts_per_token,
        "dispatch": plan.strategy.runtime.moe_dispatch,
        "mesh_axes": list(axes),
        "per_device": per,
        "placement": [
            {"experts": list(range(k * per, (k + 1) * per)), "devices": sorted(d)} for k, d in sorted(groups.items())
        ],
    }


MOE_DISPATCH = {
    "sparse": "sparse, each token through its chosen experts only (sorted by expert, tiled grouped matmul)",
    "dense": "dense, every expert on every token, masked by the routing weights (the reference)",
}


def expert_lines(plan: ShardingPlan) -> list[str]:
    e = experts(plan)
    if e is None:
        return []
    over = " × ".join(f"{a} {plan.mesh_shape[a]}" for a in e["mesh_axes"]) or "no axis (replicated)"
    lines = [
        "",
        f"experts: {e['num_experts']} a MoE layer (top {e['experts_per_token']} a token), "
        f"split over {over}: {e['per_device']} a device",
        f"  dispatch: {MOE_DISPATCH[e['dispatch']]} (runtime.moe_dispatch)",
    ]
    for group in e["placement"]:
        first, last = group["experts"][0], group["experts"][-1]
        name = f"expert {first}" if first == last else f"experts {first}-{last}"
        lines.append(f"  {name:<13} devices " + " ".join(map(str, group["devices"])))
    return lines


def _mesh_json(plan: ShardingPlan) -> dict[str, Any]:
    out = {
        "axes": dict(plan.mesh_shape),
        "devices": plan.device_count,
        "device_ids": mesh_lib.device_ids(plan.mesh_shape, plan.mesh).tolist(),
    }
    processes = mesh_lib.process_ids(plan.mesh_shape, plan.strategy, plan.mesh)
    if processes is not None:  # only where the mesh spans processes
        out["process_ids"] = processes.tolist()
    return out
