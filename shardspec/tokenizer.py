"""A checkpoint's tokenizer: `prompt` text in, `text` out (tokenizer.json via `tokenizers`)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ShardspecError
from .files import MAX_TOKENIZER_BYTES, read_text


def load_tokenizer(checkpoint: str | None):
    """The directory's tokenizer.json as a `tokenizers.Tokenizer`; None without one.

    `encode(text).ids` applies the file's post-processor (e.g. a leading <s>),
    as Hugging Face's tokenizer(text) does by default.
    """
    if checkpoint is None or not os.path.lexists(Path(checkpoint) / "tokenizer.json"):
        return None
    from tokenizers import Tokenizer

    path = Path(checkpoint) / "tokenizer.json"
    text = read_text(path, MAX_TOKENIZER_BYTES)
    try:
        return Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises its own Exception for any malformed file
        raise ShardspecError(f"cannot read the tokenizer: {e}", file=str(path)) from None


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True)
