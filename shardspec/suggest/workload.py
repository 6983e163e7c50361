"""What `shardspec suggest` plans for: prompt and output lengths, requests in flight, limits."""

from __future__ import annotations

import dataclasses

from ..errors import Problem, ShardspecError, raise_all

MAX_LEN = 1 << 24
MAX_CONCURRENCY = 1 << 20


@dataclasses.dataclass(frozen=True)
class Workload:
    """Lengths by their mean (which sets the times) and maximum (which sets the memory)."""

    prompt_mean: float
    prompt_max: int
    output_mean: float
    output_max: int
    concurrency: int  # requests in flight, over every DP rank
    max_ttft_ms: float | None = None
    max_tpot_ms: float | None = None

    @property
    def longest(self) -> int:
        """The longest request: prompt + output, both at their maximum."""
        return self.prompt_max + self.output_max

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_span(text: str, flag: str) -> tuple[int, int]:
    """`N` or `LOW:HIGH` -> (low, high), 1 <= low <= high; a ShardspecError at `flag` otherwise."""
    low, _, high = text.partition(":")
    try:
        span = (int(low), int(high or low))
    except ValueError:
        span = None
    if span is None or not 1 <= span[0] <= span[1] <= MAX_LEN:
        raise ShardspecError(f"{text!r} is not a length or a range LOW:HIGH", path=flag, hint="e.g. 1024 or 256:2048")
    return span


def workload(
    prompt_len: tuple[int, int],
    output_len: tuple[int, int],
    concurrency: int,
    max_ttft_ms: float | None = None,
    max_tpot_ms: float | None = None,
) -> Workload:
    """A checked Workload of lengths uniform over their spans (a ShardspecError naming each bad flag)."""
    problems = []
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        problems.append(Problem(f"{concurrency} requests in flight", "--concurrency", hint="use 1 or more"))
    for flag, limit in (("--max-ttft-ms", max_ttft_ms), ("--max-tpot-ms", max_tpot_ms)):
        if limit is not None and not limit > 0:
            problems.append(Problem(f"{limit} ms", flag, hint="a time above 0, or leave it out"))
    raise_all(problems)
    (p_low, p_high), (o_low, o_high) = prompt_len, output_len
    return Workload((p_low + p_high) / 2, p_high, (o_low + o_high) / 2, o_high, concurrency, max_ttft_ms, max_tpot_ms)


def from_requests(requests, concurrency: int, **limits) -> Workload:
    """A request file's workload (`runtime.Request`s): its prompt and output lengths' mean and maximum."""
    prompts = [len(r.prompt_token_ids) for r in requests]
    outputs = [r.max_tokens for r in requests]
    spans = workload((1, 1), (1, 1), concurrency, **limits)  # the flags checked
    return dataclasses.replace(
        spans,
        prompt_mean=sum(prompts) / len(prompts),
        prompt_max=max(prompts),
        output_mean=sum(outputs) / len(outputs),
        output_max=max(outputs),
    )
