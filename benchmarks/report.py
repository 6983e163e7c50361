"""BENCHMARKS.md and its plot, from the JSON results in benchmarks/results/."""

from __future__ import annotations

import json
from pathlib import Path

CMD = "python benchmarks/run_all.py"


def _load(results: Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _host_cost(r: dict) -> list[str]:
    rows = [
        [
            n,
            v["schedule"],
            v["pack"],
            v["update"],
            v["host_total"],
            v.get("host_total_best", "–"),
            v.get("us_per_request", "–"),
            v.get("host_total_no_prefix_cache", "–"),
            v["pack_naive"],
            f"{v['naive_over_pack']}×",
        ]
        for n, v in r["results"].items()
    ]
    goal = r.get("goal", {"4096": 2.0, "1024": 0.5})
    verdict = []
    for n, limit in goal.items():
        v = r["results"].get(n)
        if v:
            met = "met" if v["host_total"] < limit else "not met"
            verdict.append(
                f"At {int(n):,} running requests the host path takes {v['host_total']} ms a step "
                f"(fastest step {v.get('host_total_best', '–')} ms): goal under {limit} ms {met}."
            )
    return [
        "## 1–2. Host cost per decode step (scheduler, packer)",
        "",
        f"Median ms per decode step, {r['dp_ranks']} DP ranks, every request in decode. The host path is "
        "`schedule()` + `pack()` + `update()`. Goal for it: under 2 ms at 4,096 running requests and under "
        "0.5 ms at 1,024, growing linearly (µs per request flat); the reference system's host step is ~25 ms at "
        "DP 4 after its own optimisation.",
        "",
        *_table(
            [
                "running",
                "schedule()",
                "pack()",
                "update()",
                "host total",
                "fastest step",
                "µs / request",
                "host total, no prefix cache",
                "naive packer",
                "naive ÷ pack",
            ],
            rows,
        ),
        "",
        *verdict,
        "",
        "Command: `python benchmarks/host_cost.py`",
        "",
    ]


def _request_check(r: dict) -> list[str]:
    rows = [
        [f"{int(n):,}", f"{v['make_request']:,}", f"{v['full_schema']:,}", f"{v['ratio']}×"]
        for n, v in r["checks"].items()
    ]
    limit = r["goal"]["refuse_10mb_s"]
    refusals = [
        [name, v["mb"], v["seconds"], "met" if v["seconds"] < limit else "not met", v["first_problem"]]
        for name, v in r["refuse_10mb"].items()
    ]
    verdict = []
    if at_100 := r["checks"].get("100"):
        met = "met" if at_100["ratio"] >= r["goal"]["ratio_at_100"] else "not met"
        verdict = [f"At 100 tokens: {at_100['ratio']}× (goal ≥ {r['goal']['ratio_at_100']}×: {met}).", ""]
    return [
        "## Checking a request: token ids apart from the schema's walk",
        "",
        "µs per `make_request`, the median over rounds of 10 requests checked in a row (an id, 64 new tokens, "
        "temperature, top_p, seed; each its own ids), against the check it replaced (jsonschema over every field "
        "and every token id) on the same requests, the two alternating in the same run; the ratio is the median "
        "over rounds of the two times' ratio in a round. The reference times the schema check alone, "
        "`make_request` the whole of it. Goal: ≥ 20× at 100 tokens.",
        "",
        *_table(["prompt tokens", "make_request µs", "full schema µs", "full schema ÷ make_request"], rows),
        "",
        *verdict,
        f"Seconds to refuse one line of 10 MiB through `read_requests` (read, parse, check, the line freed), "
        f"median of {r.get('runs', 3)} runs; goal under {limit:g} s each.",
        "",
        *_table(["line", "MB", "seconds", "goal", "first problem"], refusals),
        "",
        "Command: `python benchmarks/request_check.py`",
        "",
    ]


def _compile_once(r: dict) -> list[str]:
    engines = [
        [name, v["ready_s"], f"{v['of_first']:.1%}", v["xla_compiles"], v["step_programs"]]
        for name, v in r["engines"].items()
    ]
    cmd = r["command"]
    runs = [
        [label, i + 1, v["wall_s"], v["start_s"], v["serve_s"]]
        for label in ("cache off", "cache on")
        for i, v in enumerate(cmd[label])
    ]
    second = r["engines"]["second (same strategy)"]
    second_met = "met" if not second["xla_compiles"] and second["of_first"] < 0.1 else "not met"
    ratio = cmd["start, cache off ÷ second run with the cache"]
    return [
        "## Compile once: a second engine, a second run",
        "",
        f"`{r['strategy']}` on 8 simulated devices. In one process, with the persistent cache off: each "
        "engine timed from construction to the end of its warm-up (every token bucket compiled), XLA backend "
        "compiles counted from `jax.monitoring` events. The third engine's strategy differs only in what the "
        "host reads (synchronous steps, round-robin routing): the same program. Goal: a second engine "
        "compiles nothing and is ready in under 10% of the first one's time.",
        "",
        *_table(["engine", "ready s", "of the first", "XLA compiles", "step programs"], engines),
        "",
        f"Second engine: {second['xla_compiles']} XLA compiles, ready in {second['of_first']:.1%} of the first's "
        f"time (goal 0 and under 10%: {second_met}).",
        "",
        f"`shardspec run --json -n 16` in a fresh process each time: {len(cmd['cache off'])} runs with the "
        f"persistent compilation cache off, then {len(cmd['cache on'])} with an empty cache directory (the first "
        "run fills it). Start = the command's wall time less the serving it reports: Python and its imports, the "
        "plan, the parameters, and the warm-up (every bucket compiled or read from the cache, then timed). Goal: "
        "a run with a filled cache starts ≥ 3× faster than one without (the fastest of each).",
        "",
        *_table(["cache", "run", "wall s", "start s", "serving s"], runs),
        "",
        f"Start without the cache ÷ second run with it: {ratio}× (goal ≥ 3×: {'met' if ratio >= 3 else 'not met'}); "
        f"{cmd['cache entries']} programs in the cache.",
        "",
        "Command: `python benchmarks/compile_once.py`",
        "",
    ]


def _routing(r: dict, plot: str | None) -> list[str]:
    rows = [
        [name, " / ".join(f"{e:.3f}" for e in v["padding_efficiency"]), " / ".join(map(str, v["steps"]))]
        for name, v in r["results"].items()
    ]
    lines = [
        "## 3. Routing on a lockstep-hostile trace",
        "",
        f"DP = {r['dp_ranks']}; {r['long']} long prompts (1,500–3,000 tokens) among {r['short']} short "
        "requests, 8 arriving per step; scheduler and packer run for real, the model is replaced by a "
        "fixed token (deterministic counts). One column entry per trace seed. Goal: balanced ≥ 0.85 "
        "and ≥ 1.10× the better baseline.",
        "",
        *_table(["policy", "padding efficiency", "steps"], rows),
        "",
        "balanced ÷ better baseline: " + " / ".join(f"{x}×" for x in r["balanced_vs_best_baseline"]),
        "",
    ]
    if plot:
        lines += [f"![padding efficiency per policy]({plot})", ""]
    return lines + ["Command: `python benchmarks/routing_trace.py`", ""]


def _seeds(values) -> str:
    return " / ".join(f"{v:g}" for v in values)


def _costs_line(name: str, table: dict) -> str:
    costs = ", ".join(f"{b} {ms:g}" for b, ms in table["step_costs_ms"].items())
    return f"Step-cost table `{name}` (ms per step at each per-rank bucket, measured at warm-up): {costs}."


def _per_table(r: dict, title: str, intro: str, trace_lines, command: str) -> list[str]:
    """A benchmark run under several step-cost tables: per table, per trace, `trace_lines`."""
    lines = [title, "", intro, ""]
    for name, table in r["tables"].items():
        lines += [f"### Table `{name}`", "", _costs_line(name, table), ""]
        for trace, runs in table["results"].items():
            lines += trace_lines(table, trace, runs)
    return lines + [f"Command: `{command}`", ""]


def _routing_time(r: dict) -> list[str]:
    def trace_lines(table: dict, trace: str, runs: dict) -> list[str]:
        speed = table["balanced_speedup_vs_best_baseline"][trace]
        ttft = "mean_ttft_s" in speed  # results from before the simulator timed first tokens have none
        rows = [
            [
                policy,
                _seeds(v["modelled_s"]),
                _seeds(v["mean_latency_s"]),
                *([_seeds(v["mean_ttft_s"])] if ttft else []),
                _seeds(v["steps"]),
                _seeds(v["padding_efficiency"]),
                _seeds(v["replayed_s"]) if "replayed_s" in v else "-",
            ]
            for policy, v in runs.items()
        ]
        head = ["policy", "modelled s", "mean latency s", *(["mean TTFT s"] if ttft else []), "steps"]
        return [
            f"{trace}:",
            "",
            *_table([*head, "padding efficiency", "replayed s"], rows),
            "",
            f"balanced vs the best baseline: modelled time {_seeds(speed['modelled_s'])}×, "
            f"mean latency {_seeds(speed['mean_latency_s'])}×"
            + (f", mean TTFT {_seeds(speed['mean_ttft_s'])}×" if ttft else ""),
            "",
        ]

    intro = (
        f"DP = {r['dp_ranks']}. Two traces: lockstep-hostile (8 prompts of 1,500–3,000 tokens among 1,016 short "
        "requests, 8 arriving in the time of the cheapest step) and a steady stream (800 requests, 1 in 16 prompts "
        "of 1,000–2,000 tokens, 8 arriving in the time of a full step). The scheduler and packer run for real on a "
        "clock of modelled step times (`benchmarks/serving_sim.py`: each step costs what the table says its "
        "stride costs); the model is a deterministic token. Modelled s: the time to serve the whole trace; "
        "latency: arrival to last token, mean over requests; replayed s: every step of the schedule (seed 0) run "
        "as the real compiled step of its stride on the first table's engine, the policies in turn, median of 3 "
        "rounds. One entry per trace seed. Baselines keep the reference system's full-budget lockstep steps. "
        "Goal: balanced never slower in modelled time than the best baseline, ≥ 1.15× faster on the "
        "lockstep-hostile trace."
    )
    title = "## 3b. Routing for throughput: modelled time per policy"
    return _per_table(r, title, intro, trace_lines, "python benchmarks/routing_time.py")


def _prefix_cache(r: dict) -> list[str]:
    header = [
        "policy",
        "computed prompt tokens",
        "cached prompt tokens",
        "steps",
        "padding efficiency",
        "modelled s",
        "mean latency s",
        "preemptions",
    ]

    def trace_lines(table: dict, trace: str, runs: dict) -> list[str]:
        rows = [
            [
                policy,
                f"{v['computed_prompt_tokens']:,}",
                f"{v['cached_prompt_tokens']:,}",
                v["steps"],
                f"{v['padding_efficiency']:.3f}",
                f"{v['modelled_s']:g}",
                f"{v['mean_latency_s']:g}",
                v["preemptions"],
            ]
            for policy, v in runs.items()
        ]
        ratio = table["computed_prompt_tokens_no_cache_over_balanced"][trace]
        return [f"{trace} (no cache ÷ balanced computed prompt tokens: {ratio}×):", "", *_table(header, rows), ""]

    intro = (
        f"DP = {r['dp_ranks']}, three traces: a shared 1,024-token system prompt (640 requests); multi-turn "
        "chats (96 chats × 4 turns, each turn resending the conversation and its answers, a little after the "
        "last one finished); GRPO groups (48 prompts of 256–1,024 tokens, 8–16 samples each arriving together, a "
        "group every two full steps). Same simulation as 3b. Goals: on the shared-prefix traces ≥ 2× fewer "
        "computed prompt tokens than no cache; on the GRPO trace no more steps than without a cache and fewer "
        "than cache_first."
    )
    title = "## 3c. Prefix caching: computed prompt tokens per policy"
    return _per_table(r, title, intro, trace_lines, "python benchmarks/prefix_cache.py")


def _explain(r: dict) -> list[str]:
    return [
        "## 4. `explain` latency, llama3-70b shapes",
        "",
        f"Whole command in a fresh process: best {r['command_s']['best']} s, median "
        f"{r['command_s']['median']} s (goal: under 2 s). Compile + explain in process: best "
        f"{r['compile_and_explain_s']['best']} s.",
        "",
        "Command: `python benchmarks/explain_latency.py`",
        "",
    ]


def _serve(r: dict) -> list[str]:
    rows = [
        [
            name,
            v["tokens_per_s"],
            f"{v['tokens_per_s_vs_1_device']}×",
            v["padding_efficiency"],
            v["steps"],
            v["compiles"],
        ]
        for name, v in r["results"].items()
    ]
    return [
        "## 5. End-to-end serving per strategy",
        "",
        f"{r['model']}, {r['requests']} synthetic requests (prompt {r['input_len']}, output "
        f"{r['output_len']} tokens), 8 simulated CPU devices on a 2-core machine: simulated devices share "
        "the two cores, so more devices cannot be faster here; the ratios show the cost of each layout's "
        "collectives and padding on one machine, not accelerator speed-ups.",
        "",
        *_table(["configuration", "tokens/s", "vs 1 device", "padding efficiency", "steps", "compiles"], rows),
        "",
        "Command: `python benchmarks/serve_strategies.py`",
        "",
    ]


def _memory(r: dict) -> list[str]:
    rows = []
    for name, per_model in r["results"].items():
        for model, v in per_model.items():
            rows.append(
                [
                    name,
                    model,
                    "×".join(str(n) for n in v["mesh"].values()),
                    f"{v['params_ratio']}×",
                    f"{v['kv_ratio']}×",
                    v["kv_head_replication"],
                ]
            )
    return [
        "## 6. Bytes per device against the ideal (total ÷ devices)",
        "",
        "Mesh is data×attn_dp×expert×model. Parameters above 1× are replication by design (attention "
        "weights over data and attn_dp; everything over data); KV above 1× is KV-head replication.",
        "",
        *_table(["strategy", "model", "mesh", "params ÷ ideal", "KV ÷ ideal", "KV-head replication"], rows),
        "",
        "Command: `python benchmarks/memory_per_device.py`",
        "",
    ]


def _checkpoint(r: dict) -> list[str]:
    rows = []
    for name, runs in r.get("results", r).items():
        if not isinstance(runs, dict):
            continue
        for layout, v in runs.items():
            if isinstance(v, dict) and "seconds" in v:
                rows.append(
                    [
                        name,
                        runs.get("checkpoint_bytes", ""),
                        layout,
                        v["seconds"],
                        v["staging_peak"],
                        v["largest_tensor"],
                        v["anon_growth"],
                    ]
                )
    return [
        "## Checkpoint loading",
        "",
        "Load time and host memory: `staging_peak` is host memory beyond what the devices keep (compare "
        "the largest tensor); `anon_growth` is the process's anonymous memory growth, which on CPU "
        "includes the parameters themselves (the devices' memory is host memory).",
        "",
        *_table(["checkpoint", "bytes", "layout", "seconds", "staging peak", "largest tensor", "anon growth"], rows),
        "",
        "Command: `python benchmarks/load_checkpoint.py`",
        "",
    ]


def _plot_routing(r: dict, out: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the plot the last run with matplotlib drew, if any, from the same results
        return f"benchmarks/results/{out.name}" if out.exists() else None
    names = list(r["results"])
    values = [r["results"][n]["padding_efficiency"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(values[0])
    for seed in range(len(values[0])):
        ax.barh(
            [i + seed * width for i in range(len(names))],
            [v[seed] for v in values],
            height=width,
            label=f"trace seed {seed}",
        )
    ax.axvline(0.85, color="black", linestyle="--", linewidth=1, label="goal 0.85")
    ax.set_yticks([i + width for i in range(len(names))], names)
    ax.set_xlim(0, 1)
    ax.set_xlabel("padding efficiency (real ÷ computed tokens)")
    ax.set_title(f"DP = {r['dp_ranks']}: {r['long']} long prompts among {r['short']} short requests")
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return f"benchmarks/results/{out.name}"


def _attention(r: dict) -> list[str]:
    rows = [
        [name, v["512"]["tokens_per_s"], v["16384"]["tokens_per_s"], f"{v['slowdown_16384_vs_512']}×"]
        for name, v in r["decode"].items()
    ]
    lines = [
        "## Attention as max_model_len grows",
        "",
        "Decode: the same 32 short requests (8–15-token prompts, 32 tokens out) on llama3-tiny (max_seq_len "
        "raised to 16,384), one device, tokens/s after warm-up, best of 3 alternating runs. Goal: at most 1.2× "
        "slower at 16,384 than at 512.",
        "",
        *_table(["attention", "tokens/s at 512", "tokens/s at 16,384", "slowdown"], rows),
        "",
    ]
    if r.get("prefill_ms"):
        lengths = next(iter(r["prefill_ms"].values()))
        rows = [[name, *(f"{by[n]:.2f}" for n in lengths)] for name, by in r["prefill_ms"].items()]
        lines += [
            "Prefill: a lone prompt on llama3-tiny (max_model_len 512), ms to its first token, best of 3. "
            "The blockwise attention runs the step's tokens 64 at a time, each tile reading the blocks of "
            "context its own tokens need, so a causal prompt's tiles read about half of what every token "
            "reading the whole prompt would.",
            "",
            *_table(["attention", *(f"{int(n):,} tokens" for n in lengths)], rows),
            "",
        ]
    if r.get("prefill_temp"):
        gib = 2**30
        rows = [
            [
                model,
                name,
                f"{v['2048']['temp_bytes'] / gib:.2f}",
                f"{v['8192']['temp_bytes'] / gib:.2f}",
                f"{v['8192']['param_bytes'] / gib:.2f}",
            ]
            for model, by in r["prefill_temp"].items()
            for name, v in by.items()
        ]
        lines += [
            "Compiled prefill step (512 tokens a rank) under strategies/tp.yaml: temp GiB per device against "
            "max_model_len. Goal: flat, and below the parameters' bytes.",
            "",
            *_table(["model", "attention", "temp at 2,048", "temp at 8,192", "params per device"], rows),
            "",
        ]
    return lines + ["Command: `python benchmarks/attention_scale.py`", ""]


def _sampling_features(r: dict) -> list[str]:
    rows = [
        [x["feature"], f"{x['asking']} of {r['requests']}", x["tokens_per_s"], f"{x['vs_off']}×", x["steps"]]
        for x in r["results"]
    ]
    compiled = r["programs_compiled"]
    return [
        "## What each sampling feature costs",
        "",
        f"{r['requests']} requests (prompts of 48–96 tokens, {r['output_tokens']} tokens out, greedy) under "
        "strategies/attention_dp.yaml (8 CPU devices, 4 DP ranks), the tiny Llama checkpoint of the tests. A "
        "feature is asked by some requests; a step where any row asks runs that feature's program (penalties "
        "and logit_bias: a dense [rows, vocab] rewrite of the logits; prompt logprobs: the logits of every "
        "token of the step; structured output: a mask per constrained row from llguidance, and, under async "
        "scheduling, such a step is collected before the next is planned). Tokens/s best of 3 alternating runs "
        "after an untimed one; ratio against no feature, in the same run; steps are exact.",
        "",
        *_table(["feature", "requests asking", "tokens/s", "vs off", "steps"], rows),
        "",
        f"Programs compiled: {compiled['warm_up']} by the warm-up (one per token bucket), {compiled['all']} "
        "after every variant ran (each feature's programs on first use, in the buckets its steps used). A tiny "
        "model on CPU makes the features' per-row host work and [rows, vocab] device work large beside its "
        "step; a large model's step is mostly the model itself, so its ratios are nearer 1.",
        "",
        "Command: `python benchmarks/sampling_features.py`",
        "",
    ]


def _admission(r: dict) -> list[str]:
    rows = []
    for name, v in r["layouts"].items():
        for reserve in ("auto", "0"):
            x = v[f"reserve_{reserve}"]
            rows.append(
                [
                    name,
                    reserve,
                    x["preemptions"],
                    f"{x['recomputed_tokens']} ({x['recomputed_fraction']:.1%})",
                    x["steps"],
                    x["tokens_per_s"],
                    f"{v['auto_over_0']}×" if reserve == "auto" else "1.0×",
                ]
            )
    first = next(iter(r["layouts"].values()))
    return [
        "## Admission without preemption thrash",
        "",
        f"{r['requests']} requests of {r['prompt']} prompt + {r['output']} output tokens (EOS ignored), offline, "
        f"on the default KV size: {first['pages_per_rank']} pages of 16 tokens a rank, "
        f"{first['pages_a_request_needs']} pages a request at its longest, 64 seats a rank. "
        "`runtime.kv_growth_reserve: auto` keeps pages for a seat's "
        f"share ({first['reserve_tokens']} tokens) of each running sequence's growth; `0` admits on the first chunk's "
        "pages alone (the behaviour before): the pages fill with prompts and the decodes preempt each other. "
        "Recomputed: tokens a preempted sequence had computed and computed again (share of all computed). "
        "Tokens/s best of 3 alternating runs after an untimed one; the ratio in the same run.",
        "",
        *_table(["layout", "kv_growth_reserve", "preemptions", "recomputed", "steps", "tokens/s", "vs 0"], rows),
        "",
        "Command: `python benchmarks/admission.py`",
        "",
    ]


def _suggest(r: dict) -> list[str]:
    wl = r["workload"]
    times = [
        [kind, v["candidates"], v["fit"], v["first_s"], v["best_of_3_s"], v["command_s"]]
        for kind, v in r["run_time"].items()
    ]
    order = r["ordering"]
    rows = [
        [x["strategy"], x["bucket"], x["predicted_ms_h100"], x["predicted_ms_cpu_sim"], x["measured_cpu_ms"]]
        for x in order["rows"]
    ]
    cpu, rho, sim = r["cpu_workload"], order["spearman"], order["cpu_sim"]
    return [
        "## `shardspec suggest`: run time, and its ordering against measured steps",
        "",
        f"Every strategy of llama3-70b on 64 devices (prompt {wl['prompt_len'][1]}, output {wl['output_len'][1]}, "
        f"{wl['concurrency']} in flight), shapes only. In process after the imports (the first call, then the "
        "best of 3), and the whole command (`--format json`) in a fresh process. Goal: under 10 s.",
        "",
        *_table(["devices", "candidates", "fit", "first call s", "best of 3 s", "command s"], times),
        "",
        f"Predicted against measured decode steps: every dense parallelism of llama3-small (float32) on the 8 "
        f"simulated CPU devices, {cpu['concurrency']} requests in flight (each strategy's bucket is its busiest "
        "rank's batch). Measured: the warm-up's median padding-only step at that bucket on this CPU. Predicted: "
        "suggest's decode step for the h100 catalog entry, and for this machine described as a device kind "
        f"(`cpu_sim`, measured by the benchmark: {sim['peak_flops']['float32'] / 1e9:.1f} GFLOP/s and "
        f"{sim['hbm_bandwidth'] / 1e9:.2f} GB/s a device, one collective {sim['collective_latency'] * 1e3:.2f} ms). "
        "Absolute CPU times mean nothing for an accelerator (the 8 simulated devices share 2 cores, and a "
        "collective is a memory copy), so only the ordering is compared, as Spearman's rank correlation: "
        f"h100's prediction {rho['h100']}, cpu_sim's {rho['cpu_sim']}.",
        "",
        *_table(["strategy", "bucket", "predicted ms (h100)", "predicted ms (cpu_sim)", "measured ms (CPU)"], rows),
        "",
        "Reading it: on an h100 the pure-DP layout reads the fewest bytes a token and ranks first; on the "
        "simulated mesh it runs 8 whole copies of the model on 2 cores and is the slowest, so the accelerator's "
        "ordering is not this CPU's (a negative correlation is the expected answer, not a check). Described "
        "as the CPU it runs on, the roofline orders the strategies with a positive correlation; what it misses "
        "there is XLA's per-operation cost on CPU, which no roofline term holds. The collective model itself "
        "is checked exactly, per layer against the compiled step of every strategy file "
        "(tests/test_hlo.py), and the step time against arithmetic written out (tests/test_suggest.py).",
        "",
        "Command: `python benchmarks/suggest.py`",
        "",
    ]


def _mla(r: dict) -> list[str]:
    gib = 2**30
    names = {"tp": "attention_data 1", "attention_dp": "attention_data auto"}
    memory = [
        [
            m["devices"],
            f"tensor {m['devices']}, {names[m['strategy']]}",
            m["dp_ranks"],
            m["latent_replication"],
            f"{m['kv_bytes_per_device'] / gib:.2f} GiB",
            f"{m['tokens_per_device']:,}",
            f"{m['tokens_held']:,}",
        ]
        for m in r["kv_memory"]
    ]
    decode = [
        [
            f"{int(context):,}",
            d["absorbed"]["decode_tokens_per_s"],
            d["expanded"]["decode_tokens_per_s"],
            f"{d['decode_speedup']}×",
            f"{d['absorbed']['prefill_s']} / {d['expanded']['prefill_s']}",
        ]
        for context, d in r["decode"].items()
    ]
    header = ["devices", "strategy", "DP ranks", "latent replication", "KV per device", "tokens a device stores"]
    lines = [
        "## Multi-head latent attention: TP against attention DP, absorbed against expanded",
        "",
        "KV memory, deterministic (explain's numbers): deepseek-v3 shapes (61 layers, a 512-channel latent + "
        "a 64-channel rope key a token), bfloat16 KV, 1,000 pages of 16 tokens a DP rank. Under tensor "
        "parallelism the latent has no head axis to split, so every device of the tensor group stores every "
        "token of its rank; under attention DP (`attention_data: auto`, the tensor size for a latent cache) "
        "every device is its own rank, and the same KV bytes a device hold as many times more distinct tokens.",
        "",
        *_table([*header, "distinct tokens held"], memory),
        "",
    ]
    if decode:
        first = next(iter(r["decode"].values()))
        lines += [
            "Decode on one CPU device: an MLA model with attention-heavy shapes (16 heads, a 128-channel latent "
            "+ 16 rope channels, qk 32 + 16, v 32, two dense layers), float32, 16 requests of a prompt of the "
            "context length and 32 tokens out. Absorbed is shardspec's serving (the latent cache, attention in "
            "latent space); expanded caches every head's key and value as multi-head attention would (V padded "
            "to the key's width: one cache holds both). The same weights; greedy tokens identical. Decode "
            "tokens/s = 31 × 16 tokens ÷ (the 32-token run − the 1-token run), best of 3 alternating runs in "
            "one process.",
            "",
            *_table(
                [
                    "context",
                    "absorbed tok/s",
                    "expanded tok/s",
                    "absorbed ÷ expanded",
                    "prefill s (absorbed / expanded)",
                ],
                decode,
            ),
            "",
            f"KV a token and layer: {first['absorbed']['kv_bytes_per_token_per_layer']:,} B absorbed against "
            f"{first['expanded']['kv_bytes_per_token_per_layer']:,} B expanded. Absorbing costs W_UK on the query "
            "and W_UV on the output of every token, and 144 + 128 channels per head and context position against "
            "48 + 48: at short contexts that compute can outweigh what the smaller cache saves on a CPU; as the "
            "context grows the cache reads dominate and absorbed pulls ahead.",
            "",
        ]
    return lines + ["Command: `python benchmarks/mla.py` (`--skip-decode`: the memory table alone)", ""]


def _vs_transformers(r: dict) -> list[str]:
    rate = r["tokens_per_s"]
    return [
        "## One device: shardspec against transformers' generate",
        "",
        f"The same tiny Llama checkpoint (tests/fixtures/hf/llama) and {r['requests']} requests "
        f"(8–15-token prompts, {r['max_tokens']} tokens out, greedy), float32 on one CPU device, best of 3 "
        "alternating runs after a warm-up. Goal: shardspec ≥ 1× transformers' batched greedy `generate`.",
        "",
        *_table(["", "tokens/s"], [["shardspec", rate["shardspec"]], ["transformers", rate["transformers"]]]),
        "",
        f"shardspec ÷ transformers: {r['shardspec_over_transformers']}×; {r['identical_sequences']} of "
        f"{r['requests']} sequences token for token identical.",
        "",
        "Command: `python benchmarks/vs_transformers.py` (needs `pip install -e '.[bench]'`)",
        "",
    ]


def _moe_flops(r: dict) -> list[str]:
    def g(x: float) -> str:
        return f"{x / 1e9:.2f}"

    rows = []
    for model, v in r["results"].items():
        for step in ("decode", "prefill"):
            e = v[step]
            rows.append(
                [
                    model,
                    f"{step} ({e['tokens']} tokens)",
                    g(e["ideal"]),
                    f"{g(e['dense'])} ({e['dense_over_ideal']}×)",
                    f"{g(e['sparse_balanced'])} ({e['sparse_balanced_over_ideal']}×)",
                    f"{g(e['sparse_random'])} ({e['sparse_random_over_ideal']}×)",
                    f"{e['sparse_random_busiest_over_ideal']}×",
                    f"{e['sparse_worst_busiest_over_ideal']}×",
                ]
            )
    return [
        "## MoE FFN FLOPs: dense vs sparse dispatch vs the routed ideal",
        "",
        "One MoE layer under strategies/moe_ep.yaml (tensor 2 × expert 4, 8 devices), compiled from shapes at the "
        "step's decode and prefill token counts; GFLOPs per device. Dense is XLA's count of the compiled layer. "
        "XLA counts the sparse tile loop's body once, so sparse = that count + (tiles run − 1) × one tile's "
        "matmuls, with the tiles the kernel's own `tiles_used` counts for balanced routing and for uniformly "
        "random top-k routing (the devices' mean: FLOPs spent; and the busiest device, which the step waits "
        "for), and the worst case (every token on one device's experts). Ideal = 2 × tokens × (router + top-k "
        "experts) ÷ devices. Goal: sparse within 1.3× of the ideal.",
        "",
        *_table(
            [
                "model",
                "step",
                "ideal",
                "dense",
                "sparse, balanced",
                "sparse, random",
                "random, busiest device",
                "worst case",
            ],
            rows,
        ),
        "",
        "Wall time of one MoE FFN on one device (512 tokens, hidden 512, expert hidden 256, top 2), the two "
        "kernels alternating, best of 5, as the experts grow:",
        "",
        *_table(
            ["experts", "dense ms", "sparse ms", "dense ÷ sparse"],
            [
                [n, round(v["dense_s"] * 1e3, 1), round(v["sparse_s"] * 1e3, 1), f"{v['dense_over_sparse']}×"]
                for n, v in r.get("one_device_time", {}).items()
                if isinstance(v, dict)
            ],
        ),
        "",
        "Command: `python benchmarks/moe_flops.py`",
        "",
    ]


def _e2e(r: dict) -> list[str]:
    rows = []
    for model, v in r["results"].items():
        before = v.get("before", {})
        rows.append(
            [
                model,
                before.get("tokens_per_s", "–"),
                v["after"]["tokens_per_s"],
                f"{v['after_over_before']}×" if "after_over_before" in v else "–",
            ]
        )
    commits = next(iter(r["results"].values()))
    label = (
        f" (before: {commits['before']['commit']}, after: {commits['after']['commit']})" if "before" in commits else ""
    )
    return [
        "## End to end: tokens/s before and after the attention and MoE kernels",
        "",
        "48 synthetic requests (prompts of 8–200 tokens, 8–48 out) under strategies/attention_dp.yaml on 8 "
        "simulated CPU devices, tokens/s after warm-up: the best of 3 runs in each of 2 processes a tree, the "
        f"trees alternating{label}.",
        "",
        *_table(["model", "before", "after", "after ÷ before"], rows),
        "",
        "Command: `python benchmarks/e2e_tokens.py --before OLD_VENV/bin/python` (an older checkout installed there)",
        "",
    ]


def _serve_http(r: dict) -> list[str]:
    lines = [
        "## The HTTP path: shardspec serve under a load generator, against the engine offline",
        "",
        f"llama3-tiny on one CPU device; {r['requests']} requests a run (EOS ignored). The server in its own "
        "process; the load generator (`benchmarks/loadgen.py`: asyncio, `aiohttp` streams) in another, closed "
        "loop at N clients or open loop at a request rate. Client-side percentiles; the first token's parts "
        "are the server's /metrics histograms over the run (mean ms: the inbox before the engine thread takes a "
        "request, waiting for admission, the prompt's prefill steps, the hand-over to its handler). Offline: "
        "the engine in the benchmark's process, the same requests at the same concurrency (closed loop). "
        "Every figure is the median of 3 runs. Tokens a step and CPU µs an output token (the server's and "
        "offline's thread by thread from `/proc`, the load generator's whole over its run) say where the "
        "time went.",
        "",
    ]
    header = ["load", "tok/s", "÷ offline (ceiling)", "TTFT p50/p99 ms", "TPOT p50 ms", "ITL p50/p99 ms"]
    header += ["tokens a chunk", "inbox / queue / prefill / hand-over ms", "preempted"]
    header += ["tokens a step: served / offline"]
    header += ["CPU µs a token: server (event loop + threads + XLA) / offline (engine + threads + XLA) / loadgen"]
    for w in r["workloads"]:
        rows = [_serve_http_row(x, r["cpus"]) for x in w["runs"]]
        lines += [f"### {w['prompt']} prompt + {w['output']} output tokens", "", *_table(header, rows), ""]
    return lines + [_SERVE_HTTP_READING, "", "Command: `python benchmarks/serve_http.py`", ""]


def _serve_http_row(x: dict, cpus: int) -> list:
    load = f"{x['mode']['clients']} clients" if "clients" in x["mode"] else f"{x['mode']['rate']:g} req/s"
    parts = " / ".join(str(x["ttft_parts_mean_ms"][p]) for p in ("inbox_time", "queue_time", "prefill_time"))
    parts += f" / {x['ttft_parts_mean_ms']['first_token_handover']}"
    off = x.get("offline")
    cpu = [_by_thread(x["server_cpu_us_per_token"], x["server_cpu_us_per_token_by_thread"])]
    cpu += [_by_thread(off["cpu_us_per_token"], off["cpu_us_per_token_by_thread"])] if off else []
    return [
        load,
        x["output_tokens_per_s"],
        f"{x['http_over_offline']}× (≤ {_free_http_ceiling(x, off, cpus)}×)" if off else "–",
        f"{x['ttft_ms']['p50']} / {x['ttft_ms']['p99']}",
        x["tpot_ms"]["p50"],
        f"{x['itl_ms']['p50']} / {x['itl_ms']['p99']}",
        x["tokens_per_chunk"],
        parts,
        x["preemptions"],
        f"{x['tokens_per_step']:g} / {off['tokens_per_step']:g}" if off else f"{x['tokens_per_step']:g}",
        " / ".join([*cpu, f"{x['loadgen_cpu_us_per_token']:g}"]),
    ]


def _free_http_ceiling(x: dict, off: dict, cpus: int) -> float:
    """The most of offline's tokens/s this machine could serve were the HTTP path free: its
    cores carrying the engine's offline CPU a token plus the load generator's."""
    most = cpus * 1e6 / (off["cpu_us_per_token"] + x["loadgen_cpu_us_per_token"])
    return round(min(most, off["tokens_per_s"]) / off["tokens_per_s"], 2)


def _by_thread(total: float, threads: dict | None) -> str:
    """A process's CPU a token as its threads' sum (the main thread, the other threads, XLA's pool),
    or its total where the threads were not read."""
    if threads is None:
        return f"{total:g}"
    return " + ".join(f"{threads[k]:g}" for k in ("main", "threads", "xla"))


_SERVE_HTTP_READING = (
    "Reading it: the server's four parts sum to its own time to first token; what the client sees beyond "
    "that sum is spent before a request's handler runs (accepting the connection, parsing and checking the "
    "body on the event loop, which the engine thread shares the interpreter with). `queue` grows where "
    "admission holds requests back for the pages the running ones will grow into (64 + 64 tokens: 32 of "
    "the 64 in flight fit a rank at their full length) instead of preempting (`preempted` stays 0). "
    "Served steps run as many tokens as offline ones: the engine is not starved of requests. The gap is "
    "CPU, read thread by thread (`/proc`; `threads` is every thread but the main one and XLA's pool: in "
    "the server, mostly the engine thread, its wait for each step's result included). XLA's pool costs "
    "about the same a token served and offline; the server's engine thread costs more than the offline "
    "engine (it also streams each token's text and hands it over), and its event loop, the HTTP path "
    "(parsing, checking, one chunk a step a stream), comes on top; the load generator takes its own "
    "share of the cores. The ceiling in brackets is what the cores could serve were the HTTP path free "
    "(cores ÷ (offline + load generator CPU a token), at most offline's rate): on two cores it sits near "
    "0.8× of offline for short requests, so reaching 0.8× would take an HTTP path that costs next to "
    "nothing. Below the ceiling the rest is "
    "contention: the event loop, the engine thread and XLA's pool share the cores, and the two Python "
    "threads one interpreter lock."
)


def write_report(results: Path, target: Path) -> None:
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{CMD}` (needs `pip install -e '.[bench]'` for the plot). Every figure below "
        "comes from the JSON in `benchmarks/results/`, written by that run. The machine is a shared "
        "2-core CPU: times are medians or ratios measured in one run; counts (padding, steps, "
        "compiles, bytes) are deterministic.",
        "",
    ]
    sections = [
        ("host_cost", _host_cost),
        ("request_check", _request_check),
        ("compile_once", _compile_once),
        ("attention_scale", _attention),
        ("mla", _mla),
        ("vs_transformers", _vs_transformers),
        ("moe_flops", _moe_flops),
        ("e2e_tokens", _e2e),
        ("sampling_features", _sampling_features),
        ("admission", _admission),
        ("serve_http", _serve_http),
        ("routing_trace", None),
        ("routing_time", _routing_time),
        ("prefix_cache", _prefix_cache),
        ("explain_latency", _explain),
        ("suggest", _suggest),
        ("serve_strategies", _serve),
        ("memory_per_device", _memory),
        ("load_checkpoint", _checkpoint),
    ]
    for name, render in sections:
        r = _load(results, name)
        if r is None:
            continue
        if name == "routing_trace":
            lines += _routing(r, _plot_routing(r, results / "routing.png"))
        else:
            lines += render(r)
    target.write_text("\n".join(lines))
