"""What a caller sends and gets back (vLLM's field names, DESIGN §5)."""

from __future__ import annotations

import dataclasses
from typing import Literal

FinishReason = Literal["stop", "length", "abort", "error"]  # error: a step it was in failed (Output.error says why)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 (or -1) = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0  # per-request: the same seed gives the same tokens in any batch, any strategy


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

    def to_json(self) -> dict:
        """The request as request-file fields (the form `requests_io.make_request` checks)."""
        fields = {
            "id": self.id,
            "prompt_token_ids": list(self.prompt_token_ids),
            "max_tokens": self.max_tokens,
            "ignore_eos": self.ignore_eos,
            "stop_token_ids": list(self.stop_token_ids),
            **dataclasses.asdict(self.sampling),
        }
        if self.stop:
            fields["stop"] = list(self.stop)
        if self.logprobs is not None:
            fields["logprobs"] = self.logprobs
        return fields

    @classmethod
    def from_json(cls, fields: dict) -> Request:
        """The Request `to_json()` gave, unchecked: for one that was checked already (another
        process's, sent across the cluster)."""
        sampling = SamplingParams(**{f.name: fields[f.name] for f in dataclasses.fields(SamplingParams)})
        return cls(
            fields["id"],
            tuple(fields["prompt_token_ids"]),
            fields["max_tokens"],
            sampling,
            fields["ignore_eos"],
            tuple(fields["stop_token_ids"]),
            tuple(fields.get("stop", ())),
            fields.get("logprobs"),
        )


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    """An output token's log-probability under the model, and the top N tokens' (most likely first)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()

    def to_json(self) -> dict:
        return {"token_id": self.token_id, "logprob": self.logprob, "top": [list(t) for t in self.top]}


@dataclasses.dataclass(frozen=True)
class Output:
    id: str
    prompt_token_ids: tuple[int, ...]
    output_token_ids: tuple[int, ...]
    finish_reason: FinishReason
    text: str | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None  # one per output token, when the request asked
    error: str | None = None  # finish_reason "error": what failed

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
        if self.error is not None:
            out["error"] = self.error
        return out
