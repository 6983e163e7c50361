"""A case's files, made under its temporary directory: text, bytes, big files, FIFOs, links, checkpoints."""

import base64
import os
import threading
from pathlib import Path


class FifoWriter:
    """Writes `text` into a FIFO once a reader opens it; close() unblocks a writer nobody read."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.thread = threading.Thread(target=self._write, args=(text,), daemon=True)
        self.thread.start()

    def _write(self, text: str) -> None:
        try:
            with open(self.path, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError:
            pass

    def close(self) -> None:
        if self.thread.is_alive():
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
                self.thread.join(1)
                os.close(fd)
            except OSError:
                pass
        self.thread.join(1)


def materialize(files: dict, tmp: Path, repo: Path) -> None:
    """Make a case's files under `tmp` (see the generators for the kinds)."""
    for name, spec in files.items():
        path = tmp / name
        if "text" in spec:
            path.write_text(spec["text"], encoding="utf-8", errors="surrogatepass")
        elif "b64" in spec:
            path.write_bytes(base64.b64decode(spec["b64"]))
        elif "repeat" in spec:
            chunk = spec["repeat"].encode() * (1 << 20)
            with open(path, "wb") as f:
                for _ in range(spec["bytes"] // len(chunk)):
                    f.write(chunk)
        elif spec.get("dir"):
            path.mkdir()
        elif spec.get("fifo"):
            os.mkfifo(path)
        elif "symlink" in spec:
            os.symlink(spec["symlink"], path)
        elif "copytree" in spec:
            _checkpoint_copy(repo / spec["copytree"], path, spec.get("replace", {}), spec.get("drop", []))


def _checkpoint_copy(src: Path, dst: Path, replace: dict, drop: list[str]) -> None:
    """A checkpoint directory: the fixture's files linked in, some replaced or dropped."""
    dst.mkdir()
    for f in sorted(src.iterdir()):
        if f.name in replace or f.name in drop or ("*.safetensors" in drop and f.suffix == ".safetensors"):
            continue
        os.symlink(f, dst / f.name)
    materialize({n: s for n, s in replace.items() if n not in drop}, dst, src)
