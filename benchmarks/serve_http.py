"""The HTTP path as users measure it: `shardspec serve` under a separate-process load
generator (benchmarks/loadgen.py) against the engine serving the same requests offline.

llama3-tiny on one simulated CPU device (the default runtime: max_num_seqs 64,
max_num_batched_tokens 512). Two workloads: 128 requests of 16 prompt + 32 output
tokens, and of 64 + 64 (EOS ignored). The server runs in its own process on 127.0.0.1;
the load generator in another (asyncio, `aiohttp` streams), closed loop at 1, 8, 32
and 64 clients and open loop at two request rates. Reported per run: output tokens/s,
TTFT, TPOT and inter-token latency p50/p90/p99 as the client saw them, and where the
first token's time went (the server's /metrics histograms, before and after the run:
mean ms in the inbox, waiting for admission, in prefill, and handed over to the
handler), the tokens a step ran, and the CPU µs an output token cost the server (its
`process_cpu_seconds_total`, and on Linux thread by thread: `thread_cpu`) and the load
generator. The offline engine runs the same requests closed loop at the same
concurrency (N in flight, the next added as one finishes), in this process, with its
own tokens a step and CPU a token: the ratios are the HTTP path's cost. Each figure is
the median of 3 runs.

    pip install -e '.[bench]' && python benchmarks/serve_http.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
STRATEGY = {
    "name": "serve-bench",
    "model": "llama3-tiny",
    "devices": 1,
    "runtime": {"max_num_seqs": 64, "max_num_batched_tokens": 512},  # the defaults
}
REQUESTS = 128
RUNS = 3  # served runs a load, the median kept
WORKLOADS = ((16, 32), (64, 64))  # (prompt, output) tokens
CLIENTS = (1, 8, 32, 64)
RATES = (50.0, 200.0)  # requests a second, open loop
PARTS = ("inbox_time", "queue_time", "prefill_time", "first_token_handover")
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc's CPU times count these a second


def prompts(prompt: int) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(1, 512, prompt).tolist() for _ in range(REQUESTS)]


def offline(engine, prompt: int, output: int, clients: int) -> dict:
    """The engine with `clients` requests in flight (closed loop), the median of RUNS runs:
    output tokens/s, and over that run the tokens a step ran and the process's CPU µs an
    output token, in all and thread by thread (`main`: the engine's Python)."""
    runs = []
    for _ in range(RUNS):
        work = iter({"prompt_token_ids": p, "max_tokens": output, "ignore_eos": True} for p in prompts(prompt))
        before, start, cpu = engine.metrics, time.perf_counter(), time.process_time()
        threads_before = thread_cpu(os.getpid())
        for request in [next(work) for _ in range(clients)]:
            engine.add_request(**request)
        while engine.has_unfinished():
            for _ in engine.step():
                request = next(work, None)
                if request is not None:
                    engine.add_request(**request)
        wall, cpu, after = time.perf_counter() - start, time.process_time() - cpu, engine.metrics
        threads = per_token(threads_before, thread_cpu(os.getpid()), REQUESTS * output)
        runs.append((wall, cpu, (after.real_tokens - before.real_tokens) / (after.steps - before.steps), threads))
    wall, cpu, per_step, threads = sorted(runs, key=lambda run: run[0])[len(runs) // 2]
    return {
        "tokens_per_s": round(REQUESTS * output / wall, 1),
        "tokens_per_step": round(per_step, 1),
        "cpu_us_per_token": round(cpu / (REQUESTS * output) * 1e6, 1),
        "cpu_us_per_token_by_thread": threads,
    }


def thread_cpu(pid: int) -> dict[str, float] | None:
    """CPU seconds so far of process `pid`'s threads, by kind: `main` (the server's event loop;
    offline, the engine), `xla` (XLA's compute pool, the threads named tf_XLA…) and `threads`
    (every other: the server's engine thread, the runtimes' helpers). A thread's CPU includes its
    waits for each step's result. None where /proc has no threads (not Linux)."""
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return None
    kinds = dict.fromkeys(("main", "threads", "xla"), 0.0)
    for task in tasks.iterdir():
        try:
            stat = (task / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):  # the thread has ended
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        kind = "main" if int(task.name) == pid else "xla" if name.startswith("tf_XLA") else "threads"
        kinds[kind] += (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime (proc(5) fields 14, 15)
    return kinds


def per_token(before: dict | None, after: dict | None, tokens: int) -> dict | None:
    """µs a token of each kind's CPU between two `thread_cpu` readings."""
    if before is None or after is None:
        return None
    return {k: round((after[k] - before[k]) / tokens * 1e6, 1) for k in after}


def start_server(tmp: Path) -> tuple[subprocess.Popen, str]:
    (tmp / "s.yaml").write_text(json.dumps(STRATEGY))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "shardspec.cli.main", "serve", str(tmp / "s.yaml"), "--port", str(port)]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    import httpx

    for _ in range(600):
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("the server did not start")


def metrics(base: str) -> dict[str, float]:
    """The first token's parts (sum and count), the recompute and step counters and the server's
    CPU seconds, from /metrics."""
    import httpx

    wanted = [f"shardspec_request_{p}_seconds_{k}" for p in PARTS for k in ("sum", "count")]
    wanted += ["shardspec_preemptions_total", "shardspec_recomputed_tokens_total", "process_cpu_seconds_total"]
    wanted += ["shardspec_steps_total", "shardspec_step_tokens_total"]
    lines = httpx.get(base + "/metrics", timeout=10).text.splitlines()
    return {name: float(next(x.split()[-1] for x in lines if x.startswith(name + " "))) for name in wanted}


def drive(server: subprocess.Popen, base: str, prompt: int, output: int, mode: list[str]) -> dict:
    """One load-generator run in its own process; its report, with the server's side of it."""
    before, threads_before = metrics(base), thread_cpu(server.pid)
    command = [sys.executable, str(HERE / "loadgen.py"), "--base", base, "--model", "llama3-tiny"]
    command += ["--requests", str(REQUESTS), "--prompt-len", str(prompt), "--output-len", str(output), *mode]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    report = json.loads(done.stdout)
    after, threads_after = metrics(base), thread_cpu(server.pid)
    delta = {k: after[k] - before[k] for k in after}
    report["ttft_parts_mean_ms"] = {
        p: round(delta[f"shardspec_request_{p}_seconds_sum"] / delta[f"shardspec_request_{p}_seconds_count"] * 1e3, 2)
        for p in PARTS
    }
    report["preemptions"] = int(delta["shardspec_preemptions_total"])
    report["recomputed_tokens"] = int(delta["shardspec_recomputed_tokens_total"])
    report["tokens_per_step"] = round(delta["shardspec_step_tokens_total"] / delta["shardspec_steps_total"], 1)
    tokens = REQUESTS * output
    report["server_cpu_us_per_token"] = round(delta["process_cpu_seconds_total"] / tokens * 1e6, 1)
    report["server_cpu_us_per_token_by_thread"] = per_token(threads_before, threads_after, tokens)
    report["loadgen_cpu_us_per_token"] = round(report["cpu_s"] / tokens * 1e6, 1)
    return report


def median_run(server: subprocess.Popen, base: str, prompt: int, output: int, mode: list[str]) -> dict:
    """Of RUNS load-generator runs, the one with the median output tokens/s (whole, so its
    percentiles and parts belong together): one run of 128 requests moves with the machine's noise."""
    runs = sorted(
        (drive(server, base, prompt, output, mode) for _ in range(RUNS)), key=lambda r: r["output_tokens_per_s"]
    )
    return runs[len(runs) // 2]


def main() -> dict:
    import jax

    jax.config.update("jax_num_cpu_devices", 1)
    from shardspec import compile, load
    from shardspec.runtime.engine import Engine

    engine = Engine(compile(load(STRATEGY)))
    engine.warmup()
    out = {"benchmark": "serve_http", "requests": REQUESTS, "cpus": os.cpu_count(), "workloads": []}
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start_server(Path(tmp))
        try:
            drive(proc, base, 16, 8, ["--clients", "8"])  # the server's programs and the client path warm
            for prompt, output in WORKLOADS:
                runs = []
                for n in CLIENTS:
                    r = median_run(proc, base, prompt, output, ["--clients", str(n)])
                    r["offline"] = offline(engine, prompt, output, n)
                    r["http_over_offline"] = round(r["output_tokens_per_s"] / r["offline"]["tokens_per_s"], 2)
                    runs.append(r)
                    print(f"{prompt}+{output}, {n} clients: {r}", file=sys.stderr)
                for rate in RATES:
                    runs.append(median_run(proc, base, prompt, output, ["--rate", str(rate)]))
                out["workloads"].append({"prompt": prompt, "output": output, "runs": runs})
        finally:
            proc.terminate()
            proc.wait(30)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
