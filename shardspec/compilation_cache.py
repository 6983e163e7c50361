"""JAX's persistent compilation cache: a program compiled once is read back, not compiled
again, by any later process that needs the same program.

The command line turns it on for the commands that compile (run, serve, check,
explain --hlo), in the directory that the first of these names:

1. `--compilation-cache DIR` (before the command: `shardspec --compilation-cache DIR run ...`);
2. the environment variable `SHARDSPEC_COMPILATION_CACHE`;
3. `$XDG_CACHE_HOME/shardspec/jax`, by default `~/.cache/shardspec/jax`.

`off` in place of a directory turns it off. Entries are keyed by the program
itself (its HLO, the devices, the compiler's options and version), so a
changed strategy, model or JAX never reads a stale one. The library leaves a
Python caller's JAX configuration alone: call `enable(directory)` to get the
same cache there.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ShardspecError

ENV = "SHARDSPEC_COMPILATION_CACHE"
OFF = "off"


def default_directory() -> Path:
    """`$XDG_CACHE_HOME/shardspec/jax`, or `~/.cache/shardspec/jax`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "shardspec" / "jax"


def enable_for_command(setting: str | None) -> Path | None:
    """Turn the cache on as `--compilation-cache` (or `$SHARDSPEC_COMPILATION_CACHE`, which
    the command line reads into it) says, None meaning the default; the directory in use,
    None when off. A directory the user named that cannot be made is a user error; the
    default one that cannot be made leaves the cache off."""
    if setting is not None and setting.strip().lower() == OFF:
        return None
    if setting is None:
        try:
            return enable(default_directory())
        except ShardspecError:  # e.g. a read-only home: compile as if there were no cache
            return None
    return enable(setting)


def enable(directory: str | os.PathLike) -> Path:
    """Read and write compiled programs in `directory` (made if missing) from now on,
    however short their compile: warm-up compiles many small programs, every one of which
    a second run would otherwise compile again."""
    path = Path(directory).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is not writable")
    except OSError as e:
        raise ShardspecError(
            f"cannot use {os.fspath(path)!r} as the compilation cache: {e.strerror or e}",
            path="--compilation-cache",
            hint=f"give a writable directory, or off (also ${ENV})",
        ) from None
    import jax

    jax.config.update("jax_compilation_cache_dir", os.fspath(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
