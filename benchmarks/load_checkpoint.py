"""Sharded checkpoint loading: load time and peak host memory.

Two checkpoints: the largest committed fixture (tests/fixtures/hf) and a
synthetic Llama of at least 1 GB (bf16 safetensors in several files, written to
a temporary directory by the test helper), each loaded as float32 on 8
simulated CPU devices (tensor parallel 8) and on 1 device. Every load runs in a
fresh process so that its memory high-water mark is its own. Memory figures:

    staging_peak   most bytes the loader held on the host beyond what the devices
                   keep (tracemalloc: numpy buffers while reading and converting)
    anon_growth    peak growth of the process's anonymous resident memory (sampled
                   from /proc every 2 ms); on CPU this includes the parameters
                   themselves, since there the devices' memory is the host's
    file_growth    peak growth of file-backed resident pages: the safetensors
                   files are memory-mapped, so pages read stay mapped (page cache,
                   reclaimable) until the files are closed
    largest_tensor the largest parameter as loaded; model = all of them

Prints one JSON object.

    python benchmarks/load_checkpoint.py [--gb 1.0]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "hf"
LAYOUTS = {"tp8": {"tensor": 8}, "1 device": {"tensor": 1}}


def load_once(directory: str, parallelism: dict) -> dict:
    """One load in this (fresh) process."""
    import gc
    import time
    import tracemalloc

    import jax

    jax.config.update("jax_num_cpu_devices", 8)
    from shardspec import apply, compile, load

    devices = parallelism.get("tensor", 1)
    plan = compile(
        load({"model": directory, "parallelism": parallelism, "devices": devices, "runtime": {"dtype": "float32"}})
    )
    gc.collect()
    sampler = _RssSampler()
    tracemalloc.start()
    start = time.perf_counter()
    model = apply(plan)
    seconds = time.perf_counter() - start
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    anon, file = sampler.stop()
    del model
    return {
        "seconds": round(seconds, 3),
        "staging_peak": peak - held,
        "anon_growth": anon,
        "file_growth": file,
        "devices": devices,
        "model": sum(p.nbytes for p in plan.params),
        "largest_tensor": max(p.nbytes for p in plan.params),
    }


class _RssSampler:
    """Peak growth of RssAnon and RssFile (Linux /proc/self/status) over a stretch of time."""

    def __init__(self):
        import threading

        self.base = self.peak = _rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._done.wait(0.002):
            now = _rss()
            self.peak = tuple(max(a, b) for a, b in zip(self.peak, now))

    def stop(self) -> tuple[int, int]:
        self._done.set()
        self._thread.join()
        return tuple(p - b for p, b in zip(self.peak, self.base))


def _rss() -> tuple[int, int]:
    """(anonymous, file-backed) resident bytes."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return tuple(int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile"))


def _child(directory: Path, parallelism: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", str(directory), json.dumps(parallelism)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _synthetic(directory: Path, gb: float) -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures.synthetic import llama_config, write_checkpoint

    # bf16: 2 bytes a parameter. Embeddings + lm_head 2 × 32000 × 2048 = 131M parameters;
    # a layer 45.1M (attention 10.5M with 4 KV heads, SwiGLU 3 × 2048 × 5632 = 34.6M).
    layers = max(1, math.ceil((gb * 1e9 / 2 - 131.1e6) / 45.1e6))
    config = llama_config(vocab=32000, hidden=2048, layers=layers, heads=16, kv_heads=4, head_dim=128, mlp=5632)
    return write_checkpoint(directory, config, dtype="bfloat16", file_bytes=256 << 20)


def _disk(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.glob("*.safetensors"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="Size of the synthetic checkpoint.")
    parser.add_argument("--one", nargs=2, metavar=("DIR", "PARALLELISM"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(load_once(args.one[0], json.loads(args.one[1]))))
        return
    largest = max(FIXTURES.iterdir(), key=_disk)
    results = {}
    results[f"fixture {largest.name}"] = {
        "checkpoint_bytes": _disk(largest),
        **{k: _child(largest, v) for k, v in LAYOUTS.items()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        written = _synthetic(Path(tmp), args.gb)
        files = len(list(Path(tmp).glob("*.safetensors")))
        results["synthetic llama"] = {
            "checkpoint_bytes": _disk(Path(tmp)),
            "tensor_bytes": written,
            "files": files,
            "dtype": "bfloat16",
            **{k: _child(Path(tmp), v) for k, v in LAYOUTS.items()},
        }
    print(json.dumps({"runtime_dtype": "float32", "results": results}))


if __name__ == "__main__":
    main()
