"""`hlo_report()`: the collectives and memory of the compiled serving step.

One decode step (the smallest token bucket) and one prefill step (the largest,
every DP rank full) of the runtime's `Step` are lowered and compiled ahead of
time on the plan's mesh from `ShapeDtypeStruct`s: nothing is allocated, so a
shape-only preset (llama3-70b) is measured too. The optimized HLO is read for
collectives; each op counts once (an async `-start`/`-done` pair once, as its
`-done`), its bytes are its result's (shape × dtype size).

Per decoder layer = (the step − the same step of the model with 0 layers) ÷
layers: what the layers add, averaged (exact when all layers are alike; a
fraction when some differ, e.g. MoE models with dense layers). Metadata
cannot attribute collectives to layers: GSPMD-inserted ones carry the
`op_name` of the op they serve ("mul", "dot_general"), and the model's layer
loop is plain Python, so no name holds a layer index. The difference of two
compiles does not depend on metadata; the counts of tp, attention_dp and
moe_attention_dp_ep are exactly linear in the layer count (0 to 3 measured).

`expect:` budgets both steps: each kind's count, per layer or in total, must
stay within the budget in the decode step *and* in the prefill step (GSPMD
may choose differently for many tokens than for few).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from .errors import Problem, ShardspecError, raise_all
from .flops import moe_layers, step_flops
from .model_info import own_model
from .models.config import MoEConfig
from .models.moe_dispatch import tile_rows
from .per_shard import local_shape
from .plan import ShardingPlan, build_plan
from .runtime.paged_attention import BLOCK_TOKENS, TILE_TOKENS
from .runtime.step import padding_batch, shared_step

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
STEPS = ("decode", "prefill")

# `%name = <result shape> <kind>[-start|-done](`: the shape may be a tuple (combined ops).
_OP = re.compile(r"=\s*(?P<shape>.*?)\s(?P<kind>" + "|".join(KINDS) + r")(?P<async>-start|-done)?\(")
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")


def collectives(hlo_text: str) -> tuple[dict[str, int], dict[str, int]]:
    """(count, bytes) of each collective kind in optimized HLO text."""
    counts, nbytes = dict.fromkeys(KINDS, 0), dict.fromkeys(KINDS, 0)
    for line in hlo_text.splitlines():
        m = _OP.search(line)
        if m is None or m["async"] == "-start":  # a -start's tuple holds operands too
            continue
        counts[m["kind"]] += 1
        nbytes[m["kind"]] += _shape_bytes(m["shape"])
    return counts, nbytes


def _shape_bytes(shape: str) -> int:
    """'(f32[16,128]{1,0}, bf16[8])' -> 16*128*4 + 8*2."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        total += math.prod(int(d) for d in dims.split(",") if d) * _bits(dtype) // 8
    return total


def _bits(dtype: str) -> int:
    """HLO element type -> bits: f32 32, bf16 16, f8e4m3fn 8, c64 64, pred 8; token[] 0."""
    if dtype == "pred":
        return 8
    digits = re.search(r"\d+", dtype)
    return int(digits[0]) if digits else 0


def hlo_report(plan: ShardingPlan, fn=None, *args, **kwargs) -> dict[str, Any]:
    """The decode step's collectives, bytes, per layer and memory, and the same under "prefill".

    Only shapes matter to the compiler: the prefill step is every rank's largest
    stride (all ranks full), the decode step the smallest. A servable outside
    model's step is measured as shardspec's own are; its "per layer" is the
    step's count ÷ its layers (`per_layer_basis` "step": no copy of it without
    layers can be built), and it has no analytic ideal FLOPs.

    With `fn`: any program an engine runs under the plan (`program_report`).
    """
    if fn is not None:
        return program_report(plan, fn, *args, **kwargs)
    if plan.is_abstract:
        raise ShardspecError(
            "the HLO report needs a plan compiled on devices", hint="compile(strategy) without abstract_mesh=True"
        )
    if plan.model.geometry is None or plan.model.tree.graphdef is None:
        raise ShardspecError(
            f"the HLO report compiles a servable model's step, and {plan.model.name} is not one",
            path="model",
            hint="compile the plan from an nnx.Module implementing shardspec.protocol.ServableModel, "
            "or measure any program with hlo_report(plan, fn, *args)",
        )
    sizes, own = plan.runtime, plan.model.config is not None
    strides = {"decode": sizes.token_buckets[0], "prefill": sizes.token_buckets[-1]}
    layers = plan.model.geometry.num_layers
    bare = _with_layers(plan, 0) if own else None
    steps = {}
    for step, stride in strides.items():
        counts, nbytes, memory, flops = _measure(plan, stride)
        counts0, nbytes0, _, _ = _measure(bare, stride) if own else (dict.fromkeys(KINDS, 0),) * 2 + (None, None)
        ideal = ideal_flops(plan, stride) if own else None
        steps[step] = {
            "tokens_per_rank": stride,
            "tokens": sizes.dp_ranks * stride,
            "collectives": counts,
            "bytes": nbytes,
            "per_layer": _per_layer(counts, counts0, layers),
            "per_layer_bytes": _per_layer(nbytes, nbytes0, layers),
            "per_layer_basis": "layers" if own else "step",
            "memory": memory,
            "flops": flops,
            "flops_ideal": ideal,
            "flops_over_ideal": round(flops / ideal, 3) if ideal else None,
        }
    return {**steps["decode"], "prefill": steps["prefill"]}


def program_report(plan: ShardingPlan, fn, *args, **kwargs) -> dict[str, Any]:
    """The collectives (count and bytes of each kind), memory and FLOPs per device of `fn`
    compiled for `args` (arrays, or ShapeDtypeStructs with the plan's shardings): a forward an
    engine runs, with its own sharding constraints, traced in `plan.context()` (its logical
    names and its own mesh axis names resolve as they do when it runs). `fn` may be jitted already."""
    program = fn if hasattr(fn, "lower") else jax.jit(fn)
    with plan.context():
        compiled = program.lower(*args, **kwargs).compile()
    counts, nbytes = collectives(compiled.as_text())
    return {"collectives": counts, "bytes": nbytes, "memory": _memory(compiled), "flops": _flops(compiled)}


def ideal_flops(plan: ShardingPlan, stride: int) -> float:
    """The analytic FLOPs per device of a step of `stride` tokens a rank (`shardspec.flops`).

    Loops count as XLA's cost analysis counts them, their body once (their trip
    counts are the step's data): attention is one tile of tokens a rank reading
    one block of context, and a sparse MoE layer runs one tile on each device
    (`benchmarks/moe_flops.py` counts the tiles a routing runs).
    """
    sizes, page = plan.runtime, plan.kv_cache.page_size
    context = max(1, BLOCK_TOKENS // page) * page
    tokens = sizes.dp_ranks * stride
    total = step_flops(
        plan.model.config,
        tokens,
        sizes.dp_ranks * sizes.request_stride(stride),
        context,
        expert_rows=_one_tile_rows(plan, tokens),
        attending=sizes.dp_ranks * min(stride, TILE_TOKENS),
    )
    return total / plan.device_count


def _one_tile_rows(plan: ShardingPlan, tokens: int) -> float | None:
    """Expert rows a MoE layer's step costs, in the ideal's units (the whole mesh's rows of
    a full expert hidden), when every device runs one tile; None unless dispatch is sparse."""
    cfg = plan.model.config
    if not isinstance(cfg, MoEConfig) or plan.strategy.runtime.moe_dispatch != "sparse":
        return None
    layers = moe_layers(cfg)
    if not layers:
        return None
    gate = next(p for p in plan.params if p.path == f"layers.{layers[0]}.mlp.gate_proj")
    experts_local, _, f_local = local_shape(gate.stored_shape, gate.spec, plan.mesh_shape)
    (tokens_local,) = local_shape((tokens,), P(plan.activations["mlp_in"][0]), plan.mesh_shape)
    tile = tile_rows(tokens_local, cfg.experts_per_token, cfg.num_experts)
    return tile * plan.device_count * f_local / cfg.expert_mlp_size


def _per_layer(full: dict[str, int], bare: dict[str, int], layers: int) -> dict[str, int | float]:
    """What the layers add, ÷ layers: an int when it divides evenly."""
    out = {}
    for k in KINDS:
        added = full[k] - bare[k]
        out[k] = added // layers if layers and added % layers == 0 else round(added / max(layers, 1), 2)
    return out


def _with_layers(plan: ShardingPlan, num_layers: int) -> ShardingPlan:
    """The same strategy on the same devices for the model with `num_layers` layers."""
    info = own_model(dataclasses.replace(plan.model.config, num_layers=num_layers), plan.dtype)
    # `params:` entries that name only layers match nothing in a model without them.
    return build_plan(plan.strategy, info, devices=list(plan.mesh.devices.flat), check_overrides=False)


def _measure(plan: ShardingPlan, stride: int):
    """Compile one step at `stride` tokens per rank -> (counts, bytes, memory, flops per device)."""
    step = shared_step(plan, plan.model.tree.graphdef)  # the program warm-up and serving run
    caches = jax.eval_shape(step.new_kv_cache)
    prev = jax.ShapeDtypeStruct((plan.runtime.sampled_rows,), jnp.int32)
    compiled = step.lower(_stored_state(plan), caches, batch_structs(plan, stride), prev).compile()
    return (*collectives(compiled.as_text()), _memory(compiled), _flops(compiled))


def _flops(compiled) -> float:
    """XLA's cost analysis of the compiled (per-device) program."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
        analysis = analysis[0]
    return float(analysis.get("flops", 0.0))


def _stored_state(plan: ShardingPlan) -> nnx.State:
    """Abstract parameters as stored: padded where the plan pads."""
    return plan.model.tree.rebuild(
        [jax.ShapeDtypeStruct(p.stored_shape, leaf.dtype) for p, leaf in zip(plan.params, plan.model.tree.leaves)]
    )


def batch_structs(plan: ShardingPlan, stride: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes of the packer's device arrays for a step of `stride` tokens a rank."""
    return {f: jax.ShapeDtypeStruct(x.shape, x.dtype) for f, x in padding_batch(plan.runtime, stride).items()}


_MEMORY_FIELDS = {
    "argument": "argument_size_in_bytes",
    "output": "output_size_in_bytes",
    "alias": "alias_size_in_bytes",
    "temp": "temp_size_in_bytes",
    "generated_code": "generated_code_size_in_bytes",
}


def _memory(compiled) -> dict[str, int]:
    """Bytes per device by kind, those this backend reports ("alias": outputs that reuse arguments)."""
    stats = compiled.memory_analysis()
    return {k: int(getattr(stats, f)) for k, f in _MEMORY_FIELDS.items() if hasattr(stats, f)}


# expect: section -> (report key, words after the kind)
_SCOPES = {"per_layer": ("per_layer", " per decoder layer"), "total": ("collectives", " in a step")}


def _budgets(plan: ShardingPlan, report: Mapping[str, Any]):
    """(scope, kind, words, budget, {step: measured}) for each `expect:` entry."""
    steps = {"decode": report, "prefill": report["prefill"]}
    for scope, (key, words) in _SCOPES.items():
        for kind, budget in plan.strategy.expect.get(scope, {}).items():
            yield scope, kind, words, budget, {s: r[key][kind] for s, r in steps.items()}


def budget_problems(plan: ShardingPlan, report: Mapping[str, Any]) -> list[Problem]:
    """One problem per `expect:` entry that the decode or the prefill step exceeds."""
    problems = []
    for scope, kind, words, budget, measured in _budgets(plan, report):
        over = [s for s in STEPS if measured[s] > budget]
        if over:
            found = " and ".join(f"{measured[s]} in the {s} step" for s in over)
            each = "per layer = what the decoder layers add to the step, ÷ layers; " if scope == "per_layer" else ""
            problems.append(
                plan.strategy.source.problem(
                    f"expect.{scope}.{kind}",
                    f"{kind}{words}: {found}, over the budget of {budget}",
                    f"{each}raise the budget or change the sharding; `shardspec explain --hlo` shows every count",
                )
            )
    return problems


def check_budget(plan: ShardingPlan, report: Mapping[str, Any]) -> None:
    """Raise a ShardspecError naming each exceeded budget."""
    raise_all(budget_problems(plan, report))


def budget_summary(plan: ShardingPlan, report: Mapping[str, Any]) -> str:
    """'collectives within budget: all-reduce per decoder layer 2 ≤ 2; ...' (the larger step's count)."""
    parts = [
        f"{kind}{words} {max(measured.values())} ≤ {budget}"
        for _, kind, words, budget, measured in _budgets(plan, report)
    ]
    return "collectives within budget (decode and prefill steps): " + ("; ".join(parts) or "no budget set")
