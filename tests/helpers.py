"""Small builders shared by tests."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from shardspec import load


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
