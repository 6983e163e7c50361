"""Sharded loading of Hugging Face safetensors checkpoints.

    open   index every tensor's file, shape and dtype from the file headers and
           check that each tensor the model needs is there with the shape that
           config.json implies: every problem at once, before any device memory
           is touched, so nothing is ever half-loaded
    load   per parameter, per distinct shard: read just that slice from its file
           (safetensors `get_slice` reads only those bytes), convert it to the
           runtime dtype, copy it to the devices that hold it, drop it

Host memory therefore stays near the largest single shard (the largest tensor
when one device holds it whole), never the model: each shard is read once
however many devices replicate it, and its copies finish before the next
shard is read.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy: safetensors then returns bf16 slices)
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open

from ._schema import schema_problems
from .errors import Problem, ShardspecError, Source, clip, raise_all
from .files import MAX_INDEX_BYTES, read_json, regular_file_size
from .models import hf
from .models.config import LlamaConfig

INDEX = "model.safetensors.index.json"
# What shardspec reads of the index: tensor name -> file name.
_INDEX_SCHEMA = {
    "type": "object",
    "required": ["weight_map"],
    "properties": {"weight_map": {"type": "object", "additionalProperties": {"type": "string", "minLength": 1}}},
}
DTYPES = frozenset({"BF16", "F16", "F32"})  # checkpoint dtypes, converted to the runtime dtype on reading
MAX_PROBLEMS = 12  # a wrong config.json disagrees with every tensor: show the first few
# A larger shard is read and converted in blocks of about this size, straight into
# its output: converting it costs one block beside the shard, not a second copy.
BLOCK_BYTES = 64 << 20


class Checkpoint:
    """An opened, checked checkpoint directory. Use as a context manager (it holds file handles)."""

    def __init__(self, config: LlamaConfig, params: list[tuple[str, tuple[int, ...]]]):
        self.config, self.directory = config, Path(config.checkpoint)
        self._stack = contextlib.ExitStack()
        self._handles: dict[str, object] = {}
        self.entries: dict[str, tuple[str, tuple[int, ...], str]] = {}  # name -> (file, shape, dtype)
        try:
            files, problems = self._files()
            raise_all(problems + self._open(files))
            raise_all(self._check(params))
        except BaseException:
            self._stack.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stack.close()

    def _files(self) -> tuple[list[Path], list[Problem]]:
        index = self.directory / INDEX
        if not os.path.lexists(index):
            files = sorted(self.directory.glob("*.safetensors"))
            return files, [] if files else [Problem("no *.safetensors file", file=str(self.directory))]
        data = read_json(index, MAX_INDEX_BYTES)
        raise_all(schema_problems(data, Source(str(index)), _INDEX_SCHEMA))
        names = sorted(set(data["weight_map"].values()))
        raise_all(
            [  # a file beside the index: a checkpoint cannot point outside its own directory
                Problem(f"{clip(name)} is not a file name", file=str(index), path="weight_map", hint="no directories")
                for name in names
                if Path(name).name != name or name in (".", "..")
            ]
        )
        files = [self.directory / f for f in names]
        return files, [Problem(f"missing file (listed in {INDEX})", file=str(f)) for f in files if not f.exists()]

    def _open(self, files: list[Path]) -> list[Problem]:
        problems = []
        for path in files:
            try:
                regular_file_size(path)  # never hand safetensors a FIFO or a device
                handle = self._stack.enter_context(safe_open(str(path), framework="numpy"))
            except ShardspecError as e:
                problems += e.problems
                continue
            except (SafetensorError, OSError) as e:
                problems.append(
                    Problem(f"cannot read: {e}", file=str(path), hint="the file is truncated or not safetensors")
                )
                continue
            self._handles[str(path)] = handle
            for name in handle.keys():
                piece = handle.get_slice(name)
                self.entries[name] = (str(path), tuple(piece.get_shape()), piece.get_dtype())
        return problems

    def _check(self, params) -> list[Problem]:
        problems = []
        where = str(self.directory / INDEX) if (self.directory / INDEX).exists() else str(self.directory)
        for path, shape in params:
            tmap = hf.tensor_map(self.config, path, shape)
            expected = list(tmap.hf_shape(shape))
            for name in tmap.names:
                if name not in self.entries:
                    problems.append(Problem(f"missing tensor {name}", file=where, hint=f"shardspec's {path}"))
                    continue
                file, got, dtype = self.entries[name]
                if list(got) != expected:
                    problems.append(
                        Problem(
                            f"{name}: shape {list(got)} disagrees with config.json",
                            file=file,
                            hint=f"expected {expected} for {path}",
                        )
                    )
                elif dtype not in DTYPES:
                    problems.append(
                        Problem(f"{name}: dtype {dtype} is not supported", file=file, hint="bf16, fp16 or fp32")
                    )
        if len(problems) > MAX_PROBLEMS:
            more = len(problems) - MAX_PROBLEMS
            problems = problems[:MAX_PROBLEMS] + [Problem(f"... and {more} more tensor problems", file=where)]
        return problems

    # -- reading --------------------------------------------------------------------------

    def read(self, tmap: hf.TensorMap, index: tuple[tuple[int, int], ...], shape, dtype) -> np.ndarray:
        """The [start, stop) box `index` of the (possibly padded) array, converted to `dtype`.

        Positions beyond the model's `shape` are policy padding: zeros.
        """
        want = tuple(stop - start for start, stop in index)
        axis = tmap.virtual_axes(len(shape)).index(0)  # the checkpoint's outermost dim: whole rows
        nbytes = math.prod(want) * np.dtype(dtype).itemsize
        if nbytes <= BLOCK_BYTES or want[axis] == 1:
            return self._read_box(tmap, index, shape, dtype)
        out = np.empty(want, dtype)
        step = max(1, want[axis] * BLOCK_BYTES // nbytes)
        for start in range(0, want[axis], step):
            stop = min(start + step, want[axis])
            box = (*index[:axis], (index[axis][0] + start, index[axis][0] + stop), *index[axis + 1 :])
            out[(slice(None),) * axis + (slice(start, stop),)] = self._read_box(tmap, box, shape, dtype)
        return out

    def _read_box(self, tmap: hf.TensorMap, index, shape, dtype) -> np.ndarray:
        want = tuple(stop - start for start, stop in index)
        real = tuple(slice(min(a, n), min(b, n)) for (a, b), n in zip(index, shape))
        if any(s.stop <= s.start for s in real):
            return np.zeros(want, dtype)
        axes = tmap.virtual_axes(len(shape))
        virtual = [slice(0)] * len(shape)
        for axis, v in enumerate(axes):
            virtual[v] = real[axis]
        if tmap.stacked:  # one tensor per expert: fill a preallocated [experts, ...] block
            experts = range(virtual[0].start, virtual[0].stop)
            block = None
            for i, x in enumerate(experts):
                part = self._read_one(tmap.names[x], virtual[1:], tmap.split)
                if block is None:
                    block = np.empty((len(experts), *part.shape), part.dtype)
                block[i] = part
        else:
            block = self._read_one(tmap.names[0], virtual, tmap.split)
        out = np.ascontiguousarray(block.transpose(axes), dtype=dtype)
        if out.shape == want:
            return out
        padded = np.zeros(want, dtype)
        padded[tuple(slice(0, n) for n in out.shape)] = out
        return padded

    def _read_one(self, name: str, slices: list[slice], split: tuple[int, int] | None) -> np.ndarray:
        file = self.entries[name][0]
        if split:  # dim d holds a × inner: read whole rows of the outer range, then cut inside
            d, inner = split
            outer, within = slices[d], slices[d + 1]
            slices = [*slices[:d], slice(outer.start * inner, outer.stop * inner), *slices[d + 2 :]]
        try:
            arr = self._handles[file].get_slice(name)[tuple(slices)]
        except (SafetensorError, OSError) as e:
            raise ShardspecError(f"{name}: cannot read: {e}", file=file) from None
        if split:
            arr = arr.reshape(*arr.shape[:d], outer.stop - outer.start, inner, *arr.shape[d + 1 :])
            arr = arr[(slice(None),) * (d + 1) + (within,)]
        return arr

    def load_array(self, tmap: hf.TensorMap, shape, stored_shape, sharding, dtype) -> jax.Array:
        """One parameter placed in `sharding`: each distinct shard read once, copied to its devices."""
        groups: dict[tuple, list] = {}
        for device, index in sharding.addressable_devices_indices_map(tuple(stored_shape)).items():
            box = tuple(s.indices(n)[:2] for s, n in zip(index, stored_shape))
            groups.setdefault(box, []).append(device)
        shards = []
        for box, devices in groups.items():
            host = self.read(tmap, box, shape, dtype)
            # Waiting for the copies before the next read keeps one shard staged at a time. (A CPU
            # device may adopt `host` as its own memory, zero-copy: there device memory is host memory.)
            shards += jax.block_until_ready([jax.device_put(host, d) for d in devices])
            del host
        return jax.make_array_from_single_device_arrays(tuple(stored_shape), sharding, shards)


def _params(abstract_state: nnx.State) -> list[tuple[str, tuple[int, ...]]]:
    return [(".".join(map(str, key)), tuple(var.get_value().shape)) for key, var in nnx.to_flat_state(abstract_state)]


def check(config: LlamaConfig, abstract_state: nnx.State) -> None:
    """Raise ShardspecError for every missing, truncated or misshapen tensor; read no data."""
    with Checkpoint(config, _params(abstract_state)):
        pass


def load_state(config: LlamaConfig, abstract_state: nnx.State, placements=None) -> nnx.State:
    """The checkpoint's parameters as a State shaped like `abstract_state`, each in its
    abstract dtype (the runtime's, or float32 where the model keeps one: DeepSeek's router).

    `placements`: {path: (sharding, stored shape)} from a plan; None puts every
    parameter whole on the default device (the unsharded reference model).
    """
    flat = nnx.to_flat_state(abstract_state)
    out = []
    with Checkpoint(config, _params(abstract_state)) as ckpt:
        for key, var in flat:
            path, shape, dtype = ".".join(map(str, key)), tuple(var.get_value().shape), var.get_value().dtype
            tmap = hf.tensor_map(config, path, shape)
            if placements is None:
                value = jnp.asarray(ckpt.read(tmap, tuple((0, n) for n in shape), shape, dtype))
            else:
                sharding, stored = placements[path]
                value = ckpt.load_array(tmap, shape, stored, sharding, dtype)
            out.append((key, var.replace(value)))
    return nnx.from_flat_state(out)
