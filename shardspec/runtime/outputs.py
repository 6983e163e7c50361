"""What a request's tokens become for its caller: text, stop strings, logprobs and deltas.

The step loop hands over each step's new tokens (request id, token, logprob);
this layer follows the requests that need them:

- a request with stop strings has its text followed from its first token, so
  the step that completes a stop string ends it (`take` says which);
- a request that asked for logprobs collects one per output token;
- a request reported as deltas (`Engine.step_deltas`) has its text followed
  from the first delta on, which carries the text of every token before it.

Everyone else's text is decoded once, when it finishes (`complete`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ..tokenizer import decode
from .logprobs import NewToken, PromptLogprob
from .request import Output, Request, TokenLogprob
from .text_stream import TextStream


@dataclasses.dataclass(frozen=True)
class TokenDelta:
    """A request's progress in one step: its new tokens (and their text, with a tokenizer)
    and, on its last delta, its Output. A request's deltas concatenate to its output."""

    id: str
    token_ids: tuple[int, ...]
    text: str | None = None
    output: Output | None = None  # set once: the request finished
    logprobs: tuple[TokenLogprob, ...] | None = None  # one per new token, when the request asked

    def then(self, later: TokenDelta) -> TokenDelta:
        """This delta and `later`, the same request's next, as one (a reader that fell behind
        the engine takes several steps' progress at once)."""
        text, lp = (self.text, later.text), (self.logprobs, later.logprobs)
        text = None if text == (None, None) else (text[0] or "") + (text[1] or "")
        lp = None if lp == (None, None) else (lp[0] or ()) + (lp[1] or ())
        return TokenDelta(self.id, self.token_ids + later.token_ids, text, later.output, lp)


class OutputLayer:
    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self._texts: dict[str, TextStream] = {}  # requests whose text is followed
        self._logprobs: dict[str, list[TokenLogprob]] = {}  # requests that asked, one per token so far
        self._prompt: dict[str, dict[int, TokenLogprob]] = {}  # requests that asked, by prompt position

    def accept(self, request: Request) -> None:
        """Follow what a new request needs followed (its stop strings, its logprobs)."""
        if request.stop:
            self._texts[request.id] = TextStream(self.tokenizer, request.stop)
        if request.logprobs is not None:
            self._logprobs[request.id] = []
        if request.prompt_logprobs is not None:
            self._prompt[request.id] = {}

    def take_prompt(self, entries: list[PromptLogprob]) -> None:
        """A step's prompt logprobs (a position computed again replaces its equal entry)."""
        for rid, position, entry in entries:
            if rid in self._prompt:
                self._prompt[rid][position] = entry

    @property
    def follows_any(self) -> bool:
        """Whether some request needs each step's tokens."""
        return bool(self._texts or self._logprobs)

    def open_texts(self, new: list[NewToken], finished: list[Output], earlier: Callable[[str], tuple[int, ...]]):
        """Follow the text of every request in a step's deltas that is not followed yet, from the
        tokens it had before this step (`earlier(request id)`: an unfinished request's outputs)."""
        if self.tokenizer is None:
            return
        this_step: dict[str, int] = {}
        for rid, _, _ in new:
            this_step[rid] = this_step.get(rid, 0) + 1
        ended = {o.id: o.output_token_ids for o in finished}
        for rid, count in this_step.items():
            if rid not in self._texts:
                tokens = ended[rid] if rid in ended else earlier(rid)
                self._texts[rid] = TextStream(self.tokenizer)
                self._texts[rid].push(tokens[: len(tokens) - count])

    def take(self, new: list[NewToken]) -> list[str]:
        """A step's new tokens into the followed texts and logprobs; the requests whose stop
        string just appeared (to be stopped)."""
        stopped = []
        for rid, token, entry in new:
            if entry is not None and rid in self._logprobs:
                self._logprobs[rid].append(entry)
            text = self._texts.get(rid)
            if text is not None and not text.stopped:
                text.push((token,))
                if text.stopped:
                    stopped.append(rid)
        return stopped

    def complete(self, out: Output) -> Output:
        """A finished request's Output with its text and logprobs; the request is forgotten here."""
        logprobs = self._logprobs.pop(out.id, None)
        if logprobs is not None:
            out = dataclasses.replace(out, logprobs=tuple(logprobs))
        prompt = self._prompt.pop(out.id, None)
        if prompt is not None:  # the first token has none; one the request never reached (aborted) neither
            entries = (None, *(prompt.get(p) for p in range(1, len(out.prompt_token_ids))))
            out = dataclasses.replace(out, prompt_logprobs=entries)
        text = self._texts.pop(out.id, None)
        if self.tokenizer is None:
            return out
        return dataclasses.replace(out, text=text.finish() if text else decode(self.tokenizer, out.output_token_ids))

    def deltas(self, new: list[NewToken], finished: list[Output]) -> list[TokenDelta]:
        """A step's tokens grouped by request (first-seen order), with their text; then the finishes."""
        tokens: dict[str, list[int]] = {}
        logprobs: dict[str, list[TokenLogprob]] = {}
        for rid, token, entry in new:
            tokens.setdefault(rid, []).append(token)
            if entry is not None:
                logprobs.setdefault(rid, []).append(entry)
        order = list(tokens) + [o.id for o in finished if o.id not in tokens]
        texts = {rid: self._texts.get(rid) for rid in order}  # before complete() lets finished ones go
        completed = {o.id: self.complete(o) for o in finished}
        deltas = []
        for rid in order:
            out, text = completed.get(rid), texts.get(rid)
            if text is not None:
                piece = text.take(final=out is not None)
            else:  # never followed: a request finishing with no text sent before
                piece = out.text if out is not None else None
            lp = tuple(logprobs[rid]) if rid in logprobs else None
            deltas.append(TokenDelta(rid, tuple(tokens.get(rid, ())), piece, out, lp))
        return deltas
