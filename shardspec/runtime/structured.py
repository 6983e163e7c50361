"""Structured outputs: a request's output held to a JSON Schema, any JSON object, a regular
expression, one of some strings or a Lark grammar (vLLM's `structured_outputs`).

A grammar engine says, before each of a request's samples, which tokens may come
next; the sampler sets every other token's logit to -inf (`sampler.apply_mask`),
so greedy decoding keeps the model's own choice wherever the grammar allows it.
The engine is llguidance: one Rust wheel with no dependencies, built from the
tokenizer.json the engine already reads, computing a row's mask in tens of
microseconds, and a backend of vLLM and SGLang (xgrammar, the other, needs torch).

    check     `Grammars.problem`: the grammar compiles against the model's tokens (a 400 if not);
              compiled once per distinct constraint
    admit     each constrained request gets a `Guide` (a copy of that matcher) on its Seq
    emit      `masks_for_step`: a bitmask row per sampled constrained chunk [C, ceil(V/32)]
    update    `take`: each received token advances its guide; a grammar completed finishes its
              request as "stop" (a token it refuses, which the mask rules out, as "error")

Under async scheduling a step with masks is collected as soon as it is launched
(`step_loop.py`): its constrained rows' next masks follow from its tokens, so that
step's host work is not hidden behind the device, but every row still decodes every step.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np

KINDS = ("json", "json_object", "regex", "choice", "grammar")  # `structured_outputs`' keys, one per request
# JSON without whitespace between tokens (`{"a":1,"b":[2]}`): fewer tokens, and no model can loop
# on blank space; a schema's own "x-guidance" options come after these and win.
JSON_OPTIONS = {"whitespace_flexible": False}


@dataclasses.dataclass(frozen=True)
class Constraint:
    """What a request's output must match: `kind` (one of KINDS) and its value as JSON text."""

    kind: str
    value: str

    @classmethod
    def from_field(cls, field: dict) -> Constraint:
        """From a request's `structured_outputs` ({kind: value}, checked by the request schema)."""
        (kind, value), *_ = field.items()
        return cls(kind, json.dumps(value, sort_keys=True))

    def to_field(self) -> dict:
        return {self.kind: json.loads(self.value)}

    def grammar(self) -> str:
        """llguidance's grammar for it (not checked yet: `Grammars.problem`)."""
        from llguidance import LLMatcher

        value = json.loads(self.value)
        if self.kind in ("json", "json_object"):
            schema = value if self.kind == "json" else {"type": "object"}
            return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        if self.kind == "regex":
            return LLMatcher.grammar_from_regex(value)
        if self.kind == "choice":  # Lark string literals: JSON's escapes
            return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in value))
        return LLMatcher.grammar_from_lark(value)


class Grammars:
    """An engine's grammar engine: llguidance's view of the model's tokenizer (built on first
    use: about a second for a large vocabulary), and a compiled matcher per distinct constraint
    (`PROTOTYPES` kept), which checks it and which each request's own matcher copies."""

    PROTOTYPES = 256  # distinct constraints kept compiled (a tool's schema recurs in every call)

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids):
        """`tokenizer`: the checkpoint's `tokenizers.Tokenizer`; masks cover `vocab_size` tokens
        (the model's, which may pad the tokenizer's)."""
        self._source, self._eos = tokenizer, list(eos_token_ids)
        self.vocab_size = max(vocab_size, tokenizer.get_vocab_size())
        self.words = (self.vocab_size + 31) // 32  # int32 words of a mask row, as the step takes it
        self._prototype = functools.lru_cache(maxsize=self.PROTOTYPES)(self._compile)

    @functools.cached_property
    def _tokenizer(self):
        from llguidance import LLTokenizer

        return LLTokenizer(self._source.to_str(), n_vocab=self.vocab_size, eos_token=self._eos or None)

    @functools.cached_property
    def _executor(self):
        from llguidance import LLExecutor

        return LLExecutor()  # computes a step's masks on several threads

    def _compile(self, constraint: Constraint):
        """A fresh matcher of `constraint` (in an error state if its grammar does not compile)."""
        from llguidance import LLMatcher

        return LLMatcher(self._tokenizer, constraint.grammar(), log_level=0)

    def problem(self, constraint: Constraint) -> str | None:
        """Why `constraint` cannot be served (its grammar does not compile); None if it can."""
        try:
            matcher = self._prototype(constraint)
        except ValueError as e:  # a schema llguidance cannot read
            return str(e)
        return matcher.get_error() if matcher.is_error() else None

    def guide(self, constraint: Constraint) -> Guide:
        """A request's own matcher: a copy of the constraint's compiled one."""
        return Guide(self._prototype(constraint).deep_copy(), self.words, self._executor)


class Guide:
    """One request's grammar state: its matcher, which has taken the request's outputs so far
    (and the executor its engine's masks are computed on)."""

    __slots__ = ("matcher", "words", "executor")

    def __init__(self, matcher, words: int, executor):
        self.matcher, self.words, self.executor = matcher, words, executor

    def take(self, token: int) -> str | None:
        """Advance by a sampled token: None, "complete" (nothing may follow), or why it was refused."""
        if not self.matcher.consume_token(token):
            return f"the grammar refused token {token}: {self.matcher.get_error()}"
        return "complete" if self.matcher.is_stopped() else None


def masks_for_step(slots, g: np.ndarray, sample: np.ndarray) -> np.ndarray | None:
    """int32 [C, words] each chunk's allowed tokens (all ones: any), for a step's chunks (slots
    `g`, whether each samples); None when no sampled chunk is constrained."""
    rows = np.flatnonzero(sample & slots.constrained[g])
    if not len(rows):
        return None
    from llguidance.numpy import fill_next_token_bitmask_par

    guides = [slots.seq[g[i]].guide for i in rows]
    masks = np.full((len(g), guides[0].words), -1, np.int32)  # bit t % 32 of word t // 32: token t allowed
    fill_next_token_bitmask_par(
        guides[0].executor, [(guide.matcher, i) for guide, i in zip(guides, rows.tolist())], masks
    )
    return masks


def take(slots, gs: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
    """Received tokens (slots `gs`) into the constrained ones' guides: (whether each slot's
    grammar is complete, {slot: why its token was refused})."""
    complete, refused = np.zeros(len(gs), bool), {}
    for i in np.flatnonzero(slots.constrained[gs]).tolist():
        verdict = slots.seq[gs[i]].guide.take(int(tokens[i]))
        if verdict == "complete":
            complete[i] = True
        elif verdict is not None:
            refused[int(gs[i])] = verdict
    return complete, refused
