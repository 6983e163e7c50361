"""Reading a user's file: a regular file only, its size checked before reading.

A strategy path can be a FIFO (the read blocks forever), `/dev/zero` (never
ends), a directory, a symlink loop or a 50 MB file; each is a user error here,
with the limit stated, before a byte is read. Every file shardspec reads from a
user goes through `read_bytes`, with its kind's cap below.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import stat

from .errors import ShardspecError

MiB = 1 << 20
MAX_STRATEGY_BYTES = 1 * MiB  # a strategy is a few kB
MAX_CONFIG_BYTES = 4 * MiB  # config.json, generation_config.json, tokenizer_config.json
MAX_INDEX_BYTES = 64 * MiB  # model.safetensors.index.json: one line per tensor
MAX_TOKENIZER_BYTES = 256 * MiB  # tokenizer.json: tens of MB for large vocabularies
MAX_REQUESTS_BYTES = 1024 * MiB  # a request file: one JSON line per request


def read_bytes(path: str | os.PathLike, limit: int, hint: str | None = None) -> bytes:
    """The bytes of the regular file at `path`, at most `limit` of them; else ShardspecError.

    `hint` says how to fix a path that does not exist (e.g. which flag gave it).
    """
    file = os.fspath(path)
    size = regular_file_size(file, hint)
    if size > limit:
        raise ShardspecError(_too_big(size, limit), file=file)
    try:
        with open(file, "rb") as f:
            data = f.read(size + 1)  # not limit + 1: read() allocates what it is asked for
    except OSError as e:
        raise ShardspecError(f"cannot read: {e.strerror}", file=file) from None
    if len(data) > size:  # it grew since stat (or, like /proc files, has no size)
        raise ShardspecError("changed while it was read", file=file, hint="give a file that is not being written")
    return data


def read_text(path: str | os.PathLike, limit: int, hint: str | None = None) -> str:
    """`read_bytes` decoded as UTF-8 (`decode`)."""
    return decode(read_bytes(path, limit, hint), os.fspath(path))


def decode(data: bytes, file: str) -> str:
    """UTF-8 text (a leading byte-order mark dropped); a bad byte is a problem at its line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ShardspecError(
            f"not UTF-8 text (byte 0x{data[e.start]:02x})", file=file, line=line, hint="save the file as UTF-8"
        ) from None


def read_json(path: str | os.PathLike, limit: int, hint: str | None = None) -> object:
    """`read_text` parsed as JSON (`parse_json`), a syntax error located at its line."""
    text = read_text(path, limit, hint)
    try:
        return parse_json(text)
    except json.JSONDecodeError as e:
        raise ShardspecError(
            f"not valid JSON: {e.msg} (column {e.colno})", file=os.fspath(path), line=e.lineno
        ) from None
    except ValueError as e:  # NaN, or an integer of thousands of digits
        raise ShardspecError(f"not valid JSON: {e}", file=os.fspath(path)) from None


def read_json_object(path: str | os.PathLike, limit: int, hint: str | None = None) -> dict:
    """`read_json` of a file that must hold one JSON object (a config file)."""
    data = read_json(path, limit, hint)
    if not isinstance(data, dict):
        raise ShardspecError("must hold a JSON object", file=os.fspath(path))
    return data


def parse_json(text: str) -> object:
    """`json.loads`, less the NaN and Infinity that Python's json accepts and JSON does not;
    ValueError for those and for nesting deeper than Python's recursion allows."""
    # The cyclic GC off while parsing: each list json makes counts toward a collection, and the collections of
    # older generations walk every list made so far; a 10 MB line of `[], ` (2.6 million lists) spent 4x the parse
    # itself in them. JSON makes no cycles. The GC is restored as it was (a caller may keep it off); a parse in
    # another thread may turn it back on early, which only costs that speed.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return json.loads(text, parse_constant=_not_a_number)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    finally:
        if collecting:
            gc.enable()


def _not_a_number(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def regular_file_size(path: str | os.PathLike, hint: str | None = None) -> int:
    """Bytes in the regular file at `path`; ShardspecError for anything else (nothing is opened)."""
    file = os.fspath(path)
    info = _stat(file, hint)
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (a pipe, socket or device)"
        raise ShardspecError(f"is {kind}", file=file, hint="give a file")
    return info.st_size


def write_text(path: str | os.PathLike, text: str, flag: str) -> None:
    """Write `text` to `path` (given by `flag`); ShardspecError if the system refuses (a full disk)."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise ShardspecError(f"cannot write: {e.strerror}", file=os.fspath(path), hint=f"check {flag}") from None


def check_writable(path: str | os.PathLike, flag: str) -> None:
    """ShardspecError unless a file can be written at `path` (given by `flag`): checked
    before any work, so a typo in an output path never costs a whole run."""
    file = os.fspath(path)
    if "\0" in file:
        raise ShardspecError("a path cannot contain a NUL character", path=flag)
    parent = os.path.dirname(file) or "."
    if os.path.isdir(file):
        raise ShardspecError("is a directory", file=file, hint=f"give {flag} a file name")
    if not os.path.isdir(parent):
        raise ShardspecError(f"no directory {parent!r} to write into", file=file, hint=f"create it, or fix {flag}")
    if not os.access(parent, os.W_OK) or (os.path.exists(file) and not os.access(file, os.W_OK)):
        raise ShardspecError("cannot be written", file=file, hint=f"check the permissions, or fix {flag}")


def _stat(file: str, hint: str | None) -> os.stat_result:
    if "\0" in file:
        raise ShardspecError("a path cannot contain a NUL character", file=repr(file)[1:-1])
    try:
        return os.stat(file)
    except FileNotFoundError:
        raise ShardspecError("file not found", file=file, hint=hint or "check the path") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ShardspecError("symbolic link loop", file=file) from None
        raise ShardspecError(f"cannot read: {e.strerror}", file=file) from None


def _too_big(size: int, limit: int) -> str:
    return f"is {size / MiB:,.1f} MiB, more than the {limit // MiB:,} MiB this file may be"
