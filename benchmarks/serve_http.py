"""The HTTP path's cost: `shardspec serve` driven by N concurrent streaming clients against
the engine serving the same requests offline (what `shardspec run` does).

llama3-tiny on one simulated CPU device (max_num_seqs 64, max_num_batched_tokens
256), 128 requests of 16 prompt tokens and 32 tokens out (EOS ignored). The
server runs in its own process on 127.0.0.1; clients are threads of the real
load generator (`httpx` streams, one connection a client), each streaming its
requests one after another. Reported per
client count: throughput (generated tokens/s over the whole run), time to first
token p50/p99 and time per output token p50 as the clients saw them; and the
offline engine's tokens/s on the same requests, measured in the same run. The
ratio is the HTTP path's overhead.

    python benchmarks/serve_http.py
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

STRATEGY = {
    "name": "serve-bench",
    "model": "llama3-tiny",
    "devices": 1,
    "runtime": {"max_num_seqs": 64, "max_num_batched_tokens": 256},
}
REQUESTS, PROMPT, OUT = 128, 16, 32
CLIENTS = (1, 8, 32, 64)


def prompts() -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 512, PROMPT).tolist() for _ in range(REQUESTS)]


def offline() -> float:
    import jax

    jax.config.update("jax_num_cpu_devices", 1)
    from shardspec import compile, load
    from shardspec.runtime.engine import Engine

    engine = Engine(compile(load(STRATEGY)))
    engine.warmup()
    requests = [{"prompt_token_ids": p, "max_tokens": OUT, "ignore_eos": True} for p in prompts()]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        engine.generate(requests)
        best = min(best, time.perf_counter() - start)
    return REQUESTS * OUT / best


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


def drive(base: str, clients: int) -> dict:
    """N client threads, each streaming its share of the requests over one keep-alive
    connection and reading the SSE lines with `httpx` (json.loads a chunk): a load
    generator light enough to leave the two cores to the server."""
    import httpx

    work = prompts()
    local = threading.local()

    def one(prompt):
        client = getattr(local, "client", None) or setattr(local, "client", httpx.Client(timeout=300)) or local.client
        body = {
            "model": "llama3-tiny",
            "prompt": prompt,
            "max_tokens": OUT,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
        }
        sent = time.perf_counter()
        stamps = []
        while True:
            with client.stream("POST", base + "/v1/completions", json=body) as response:
                if response.status_code == 429:  # the queue is full: back off as Retry-After says
                    time.sleep(float(response.headers["retry-after"]))
                    continue
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        n = len(json.loads(line[6:])["choices"][0]["token_ids"])
                        stamps += [time.perf_counter()] * n
                break
        return stamps[0] - sent, (stamps[-1] - stamps[0]) / (len(stamps) - 1), len(stamps)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, work))
    wall = time.perf_counter() - start
    ttft, tpot, tokens = (np.array(x) for x in zip(*results))
    assert (tokens == OUT).all()
    return {
        "tokens_per_s": round(float(tokens.sum() / wall), 1),
        "ttft_p50_ms": round(float(np.percentile(ttft, 50)) * 1e3, 1),
        "ttft_p99_ms": round(float(np.percentile(ttft, 99)) * 1e3, 1),
        "tpot_p50_ms": round(float(np.percentile(tpot, 50)) * 1e3, 2),
    }


def main() -> dict:
    out = {"benchmark": "serve_http", "requests": REQUESTS, "prompt_tokens": PROMPT, "output_tokens": OUT}
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start_server(Path(tmp))
        try:
            drive(base, 8)  # warm the client path
            out["offline_tokens_per_s"] = round(offline(), 1)
            out["clients"] = {}
            for n in CLIENTS:
                r = out["clients"][str(n)] = drive(base, n)
                r["http_over_offline"] = round(r["tokens_per_s"] / out["offline_tokens_per_s"], 2)
                print(f"{n} clients: {r}", file=sys.stderr)
        finally:
            proc.terminate()
            proc.wait(30)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
