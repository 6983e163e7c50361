"""One request's output text as its tokens arrive: deltas to stream, and its stop strings.

Decoding is incremental and bounded (as vLLM's detokenizer): a token's text
depends on its neighbours (byte-level pieces, leading spaces), so each new
token decodes a short window of recent tokens and keeps what that window adds
past its settled part. A window ending in U+FFFD is an incomplete UTF-8
character: nothing is added until its bytes arrive.

With stop strings, the last (longest stop − 1) characters are held back from
the deltas, since the next token may complete a stop string they begin. When
one appears the request ends: its text is everything before the stop string,
which itself is never returned (OpenAI's and vLLM's behaviour). The deltas
handed out always concatenate to the final text.
"""

from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self._tokens: list[int] = []
        self._prefix = 0  # window start: tokens before it are settled text
        self._read = 0  # tokens whose text is in `text`
        self.text = ""  # the text so far (cut before the stop string once one is found)
        self._sent = 0  # characters of `text` handed out by take()
        self.stopped = False

    def push(self, tokens) -> None:
        """Add output tokens; stop at the first stop string that appears."""
        for token in tokens:
            if self.stopped:
                return
            self._tokens.append(int(token))
            self._decode_next()

    def finish(self) -> str:
        """The request ended: add what the last tokens decode to even if incomplete (as a whole
        decode would show it); return the final text."""
        if not self.stopped:
            window = self._decode(self._tokens[self._prefix :])
            self.text += window[len(self._decode(self._tokens[self._prefix : self._read])) :]
            self._prefix = self._read = len(self._tokens)
        return self.text

    def take(self, final: bool = False) -> str:
        """The text settled since the last take(); everything left when `final`."""
        upto = len(self.text) if final or self.stopped else max(self._sent, len(self.text) - self._hold)
        delta, self._sent = self.text[self._sent : upto], upto
        return delta

    def _decode_next(self) -> None:
        window = self._decode(self._tokens[self._prefix :])
        settled = self._decode(self._tokens[self._prefix : self._read])
        if len(window) <= len(settled) or window.endswith("\ufffd"):
            return  # no new character yet
        start = max(0, len(self.text) - self._hold)  # a stop string may span the old text's tail
        self.text += window[len(settled) :]
        self._prefix, self._read = self._read, len(self._tokens)
        found = [i for s in self.stop if (i := self.text.find(s, start)) >= 0]
        if found:
            self.text, self.stopped = self.text[: min(found)], True

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
