"""Byte-level mutations of a text file (strategy YAML, request JSONL): encodings, line ends, stray bytes."""


def raw_mutation(rng, text: str, comments: bool = True) -> tuple[bytes, str, str, bool]:
    """A byte-level mutation: (bytes, description, kind, still valid); `comments`: the format has `#` ones."""
    data = text.encode()
    op = rng.randrange(10)
    if op == 0:
        return b"\xef\xbb\xbf" + data, "UTF-8 BOM prefix", "BOM", True
    if op == 1:
        return data.replace(b"\n", b"\r\n"), "CRLF line ends", "CRLF", True
    if op == 2:
        return data + "# λ 🙂 comment\n".encode(), "a unicode comment appended", "unicode comment", comments
    if op == 3:
        return data.rstrip(b"\n"), "no final newline", "no final newline", True
    at = rng.randrange(len(data) + 1)
    if op == 4:
        return data[:at] + b"\x00" + data[at:], f"NUL byte at offset {at}", "NUL byte", False
    if op == 5:
        ch = rng.choice([b"\x07", b"\x1b", b"\x0c", b"\x7f", "\u2028".encode(), "\x85".encode(), "\ufeff".encode()])
        return data[:at] + ch + data[at:], f"{ch!r} at offset {at}", "control/unicode char", False
    if op == 6:
        return data[:at] + b"\xff\xfe\xc3" + data[at:], f"invalid UTF-8 at offset {at}", "invalid UTF-8", False
    if op == 7:
        return data[:at], f"truncated at offset {at}", "truncated", False
    if op == 8:
        return data.replace(b"\n", b"\r"), "CR-only line ends", "CR line ends", False
    return "\ufeff".encode() * 2 + data, "two BOMs", "BOM", False
