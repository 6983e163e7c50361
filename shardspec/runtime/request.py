"""What a caller sends and gets back (vLLM's field names, DESIGN §5)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from .structured import Constraint

FinishReason = Literal["stop", "length", "abort", "error"]  # error: a step it was in failed (Output.error says why)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 (or -1) = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0  # per-request: the same seed gives the same tokens in any batch, any strategy
    # vLLM's definitions, applied on the device to rows that ask (runtime/adjustments.py)
    presence_penalty: float = 0.0  # minus this from each token already in the output
    frequency_penalty: float = 0.0  # minus this times each token's count in the output
    repetition_penalty: float = 1.0  # a prompt or output token's logit: / this if positive, * this if not
    min_tokens: int = 0  # no end-of-sequence or stop token before this many outputs
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit), ids ascending

    @property
    def adjusts_logits(self) -> bool:
        """Whether the sampler must change this request's logits before drawing."""
        return bool(
            self.presence_penalty
            or self.frequency_penalty
            or self.repetition_penalty != 1.0
            or self.min_tokens
            or self.logit_bias
        )


@dataclasses.dataclass(frozen=True)
class Request:
    id: str
    prompt_token_ids: tuple[int, ...]
    max_tokens: int = 16
    sampling: SamplingParams = SamplingParams()
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()  # stop strings: the output text ends before the first one found
    logprobs: int | None = None  # each output token's log-probability and the top N; None: none
    prompt_logprobs: int | None = None  # each prompt token's (the first has none) and the top N; None: none
    structured_outputs: Constraint | None = None  # what the output must match (structured.py)

    def to_json(self) -> dict:
        """The request as request-file fields (the form `requests_io.make_request` checks)."""
        fields = {
            "id": self.id,
            "prompt_token_ids": list(self.prompt_token_ids),
            "max_tokens": self.max_tokens,
            "ignore_eos": self.ignore_eos,
            "stop_token_ids": list(self.stop_token_ids),
            **dataclasses.asdict(self.sampling),
            "logit_bias": {str(token): bias for token, bias in self.sampling.logit_bias},
        }
        if self.stop:
            fields["stop"] = list(self.stop)
        for name in ("logprobs", "prompt_logprobs"):
            if getattr(self, name) is not None:
                fields[name] = getattr(self, name)
        if self.structured_outputs is not None:
            fields["structured_outputs"] = self.structured_outputs.to_field()
        return fields

    @classmethod
    def from_json(cls, fields: dict) -> Request:
        """The Request `to_json()` gave, unchecked: for one that was checked already (another
        process's, sent across the cluster)."""
        sampling = SamplingParams(
            **{f.name: fields[f.name] for f in dataclasses.fields(SamplingParams) if f.name != "logit_bias"},
            logit_bias=logit_bias_pairs(fields["logit_bias"]),
        )
        return cls(
            fields["id"],
            tuple(fields["prompt_token_ids"]),
            fields["max_tokens"],
            sampling,
            fields["ignore_eos"],
            tuple(fields["stop_token_ids"]),
            tuple(fields.get("stop", ())),
            fields.get("logprobs"),
            fields.get("prompt_logprobs"),
            Constraint.from_field(fields["structured_outputs"]) if "structured_outputs" in fields else None,
        )


def logit_bias_pairs(bias: dict) -> tuple[tuple[int, float], ...]:
    """A request's `logit_bias` ({"token id": bias}) as SamplingParams keeps it."""
    return tuple(sorted((int(token), float(value)) for token, value in bias.items()))


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    """An output token's log-probability under the model, and the top N tokens' (most likely first)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()

    def to_json(self) -> dict:
        return {"token_id": self.token_id, "logprob": self.logprob, "top": [list(t) for t in self.top]}


@dataclasses.dataclass(frozen=True)
class RequestTimes:
    """When the engine took a request, first scheduled it, and received its first token
    (`time.monotonic()`; None: it never got there). Where the first token's time goes."""

    accepted: float
    admitted: float | None = None
    first_token: float | None = None


@dataclasses.dataclass(frozen=True)
class Output:
    id: str
    prompt_token_ids: tuple[int, ...]
    output_token_ids: tuple[int, ...]
    finish_reason: FinishReason
    text: str | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None  # one per output token, when the request asked
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None  # one per prompt token (the first None)
    error: str | None = None  # finish_reason "error": what failed
    # When the engine took, first scheduled and first sampled it: a clock reading, not part of
    # the output's value (left out of equality, repr and JSON: processes compare outputs by repr).
    times: RequestTimes | None = dataclasses.field(default=None, compare=False, repr=False)

    def to_json(self) -> dict:
        out = {
            "id": self.id,
            "prompt_token_ids": list(self.prompt_token_ids),
            "output_token_ids": list(self.output_token_ids),
            "finish_reason": self.finish_reason,
        }
        if self.text is not None:
            out["text"] = self.text
        if self.logprobs is not None:
            out["logprobs"] = [t.to_json() for t in self.logprobs]
        if self.prompt_logprobs is not None:
            out["prompt_logprobs"] = [t and t.to_json() for t in self.prompt_logprobs]
        if self.error is not None:
            out["error"] = self.error
        return out
