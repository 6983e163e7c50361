"""Small builders shared by tests."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from shardspec import load
from shardspec.protocol import UNSHARDED, Layout, dense_logits

# The runtime every serving test uses unless it tests another setting. Equal plans compile
# to one program, shared in the process (`step.shared_step`) and on disk (the persistent
# compilation cache), so each strategy's step compiles once for the whole run, in every
# file, sync and async alike. A 64-token budget keeps the buckets few (8, 16, 32, 64);
# float32 pages keep comparisons exact (bf16 pages round differently when the reduction
# order differs); 10 pages of 16 tokens a rank hold any one test request (160 tokens) while
# several at once press the pool, so preemption and recompute run under every strategy.
SERVING = {
    "runtime.max_num_batched_tokens": "64",
    "runtime.max_num_seqs": "8",
    "kv_cache.dtype": "float32",
    "kv_cache.num_pages": "10",
}
# The reference those runs are compared with: the same model on one device, its pool never short.
ONE_DEVICE = {"parallelism.tensor": "1", "parallelism.expert": "1", "devices": "1", "kv_cache.num_pages": "auto"}

_dense_logits = jax.jit(dense_logits, static_argnums=2)


def dense_forward(model, tokens, layout: Layout = UNSHARDED) -> np.ndarray:
    """A servable model's logits [B, T, V] for tokens [B, T], as one jitted program per shape
    and layout: the reference tests compare with (an eager forward compiles every operation
    apart, hundreds of small programs)."""
    return np.asarray(_dense_logits(model, jnp.asarray(tokens), layout))


def strategy(text: str = "", **sections):
    """A strategy from YAML text plus keyword sections, llama3-tiny by default."""
    data = yaml.safe_load(text) or {}
    data.setdefault("model", "llama3-tiny")
    for key, value in sections.items():
        data[key] = value
    return load(data)


def example(name: str):
    """A module of `examples/` (not a package: imported by path)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# The HTTP tests' strategy: one device, a 64-token budget, a short waiting queue.
SERVE_STRATEGY = {"devices": 1, "runtime": {"max_num_seqs": 8, "max_num_batched_tokens": 64, "max_waiting": 16}}
CHAT_TEMPLATE = (
    "{% if tools %}<|tools|>{% for t in tools %}{{ t.function.name }} {% endfor %}\n{% endif %}"
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def chat_checkpoint(tmp: Path) -> Path:
    """The tiny llama checkpoint (it has a tokenizer) plus a chat template."""
    import json

    llama = Path(__file__).resolve().parent / "fixtures" / "hf" / "llama"
    ck = tmp / "llama-chat"
    ck.mkdir()
    for f in llama.iterdir():
        (ck / f.name).symlink_to(f)
    (ck / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "chat_template": CHAT_TEMPLATE}))
    return ck


@contextlib.contextmanager
def serving(args: list[str], log_path, timeout: float = 240.0):
    """`shardspec ARGS --port P` (a `serve`, or a `launch ... -- serve`) up and healthy on a
    free port: yields (its base URL, the process); killed at the end if still running."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        cmd = [sys.executable, "-m", "shardspec.cli.main", *args, "--port", str(port)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while not _healthy(base):
                assert proc.poll() is None, Path(log_path).read_text()
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.5)
            yield base, proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _healthy(base: str) -> bool:
    import httpx

    try:
        return httpx.get(base + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
