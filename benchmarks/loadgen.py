"""A load generator for an OpenAI-compatible completions server, in its own process.

asyncio and `aiohttp` streams (what vLLM's own `bench serve` uses: the lightest client
loop there is in Python, so the figures are the server's): closed loop (`--clients N`: N requests in flight, each
client sending its next as its last finishes) or open loop (`--rate R`: requests
arrive as a Poisson process of R a second, however many are in flight). Prompts are
random token ids (`--prompt-len`), outputs `--output-len` tokens with EOS ignored, so
every response's length is known and checked. Reports output tokens/s over the run,
time to first token (TTFT), time per output token after the first (TPOT, a request's
mean) and inter-token latency (ITL, every gap between chunks) at p50/p90/p99, as one
JSON object on stdout; a response that fails or comes back short is an error (exit 1).

    python benchmarks/loadgen.py --base http://127.0.0.1:8000 --model tiny --clients 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiohttp
import numpy as np

PERCENTILES = (50, 90, 99)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", required=True)
    p.add_argument("--requests", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--vocab", type=int, default=512, help="prompt ids are drawn below this")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--clients", type=int, help="closed loop: requests in flight")
    mode.add_argument("--rate", type=float, help="open loop: requests a second (Poisson arrivals)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


async def one(session: aiohttp.ClientSession, args, prompt: list[int]) -> dict:
    """Stream one completion: the time of every chunk's tokens, from sending it."""
    body = {
        "model": args.model,
        "prompt": prompt,
        "max_tokens": args.output_len,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    sent = time.perf_counter()
    chunks: list[tuple[float, int]] = []
    while True:
        async with session.post(args.base + "/v1/completions", json=body) as response:
            if response.status == 429:  # the server's queue is full: back off as it says
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                continue
            response.raise_for_status()
            async for line in response.content:
                if line.startswith(b"data: {"):
                    n = len(json.loads(line[6:])["choices"][0]["token_ids"])
                    if n:
                        chunks.append((time.perf_counter(), n))
        break
    tokens = sum(n for _, n in chunks)
    if tokens != args.output_len:
        raise RuntimeError(f"a response had {tokens} tokens, not {args.output_len}")
    times = [t for t, _ in chunks]
    return {
        "ttft": times[0] - sent,
        "tpot": (times[-1] - times[0]) / (tokens - 1) if tokens > 1 else None,
        "itl": np.diff(times).tolist(),
        "tokens": tokens,
        "chunks": len(chunks),
    }


async def run(args) -> dict:
    rng = np.random.default_rng(args.seed)
    prompts = [rng.integers(1, args.vocab, args.prompt_len).tolist() for _ in range(args.requests)]
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        start, cpu = time.perf_counter(), time.process_time()
        if args.clients:
            queue = iter(prompts)

            async def closed_loop_client():
                return [await one(session, args, p) for p in queue]

            per_client = await asyncio.gather(*(closed_loop_client() for _ in range(args.clients)))
            results = [r for rs in per_client for r in rs]
        else:
            gaps = rng.exponential(1 / args.rate, args.requests)
            tasks = []
            for prompt, gap in zip(prompts, gaps):
                tasks.append(asyncio.create_task(one(session, args, prompt)))
                await asyncio.sleep(gap)
            results = await asyncio.gather(*tasks)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return summary(results, wall, cpu, args)


def summary(results: list[dict], wall: float, cpu: float, args) -> dict:
    def pct(values, scale=1e3) -> dict | None:
        values = np.asarray([v for v in values if v is not None])
        if not values.size:  # one output token: no time per token, no gaps
            return None
        return {f"p{q}": round(float(np.percentile(values, q)) * scale, 2) for q in PERCENTILES}

    return {
        "mode": {"clients": args.clients} if args.clients else {"rate": args.rate},
        "requests": len(results),
        "completed": sum(r["tokens"] == args.output_len for r in results),
        "output_tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 1),
        "tokens_per_chunk": round(sum(r["tokens"] for r in results) / sum(r["chunks"] for r in results), 2),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),  # this process's CPU over the run (start-up left out): what measuring cost
        "ttft_ms": pct(r["ttft"] for r in results),
        "tpot_ms": pct(r["tpot"] for r in results),
        "itl_ms": pct(gap for r in results for gap in r["itl"]),
    }


def main(argv=None) -> int:
    args = parse(argv)
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
