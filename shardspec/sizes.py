"""Every derived size, in one place (DESIGN §1). No jax: the loader, the plan, the
scheduler, the packer and the step all read these and never recompute them.

The reference system's worst data-parallel bugs were two places computing "the
same" size differently; here each size has one owner:

- the mesh shape of a strategy: `Parallelism.mesh_shape` (strategy.py); its
  device count and DP ranks: `device_count`, `dp_ranks` below;
- divisors and the multihost factor check: `divisors`, `multihost_problem`;
- how KV heads are stored when the `model` axis is wider: `kv_slots`;
- pages that hold n tokens: `pages_for`;
- everything the runtime shares (DP ranks, pages, strides, buckets, request
  limits): `RuntimeSizes`, built once by `compile()`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

# The most devices a strategy may span (and so the schema's maximum of each axis):
# explain and check lay out one entry per device, so an unbounded product would
# allocate without limit.
MAX_DEVICES = 65_536


def device_count(mesh_shape: Mapping[str, int]) -> int:
    """Devices a mesh of this shape spans."""
    return math.prod(mesh_shape.values())


def dp_ranks(mesh_shape: Mapping[str, int]) -> int:
    """Ranks that each own requests and KV pages: data × attn_dp."""
    return mesh_shape["data"] * mesh_shape["attn_dp"]


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def multihost_problem(axis: str, factor: int, size: int) -> tuple[str, str] | None:
    """(message, hint) when `factor` hosts cannot split mesh axis `axis` of `size`."""
    if size % factor == 0:
        return None
    from .errors import one_of

    return f"{factor} does not divide {axis}={size}", f"use {one_of(divisors(size))}"


def kv_slots(kv_heads: int, shards: int) -> int:
    """KV heads as stored over `shards` devices: the heads themselves when they split
    evenly, else repeated to lcm(kv_heads, shards) slots so every shard holds whole ones
    (each device then holds the heads its query heads read)."""
    return kv_heads if kv_heads % shards == 0 else math.lcm(kv_heads, shards)


def pages_for(num_tokens, page_size: int):
    """Pages that hold `num_tokens` tokens: ceil(num_tokens / page_size); numpy arrays too."""
    return -(-num_tokens // page_size)


def token_buckets(max_tokens: int, smallest: int = 8) -> tuple[int, ...]:
    """Powers of two from `smallest` up to `max_tokens`, which is always the last."""
    out, b = [], min(smallest, max_tokens)
    while b < max_tokens:
        out.append(b)
        b *= 2
    return (*out, max_tokens)


@dataclasses.dataclass(frozen=True)
class RuntimeSizes:
    """Every size the scheduler, packer, KV cache and step share. `compile()` builds the
    plan's once; tests and benchmarks use the same constructor."""

    dp_ranks: int
    page_size: int
    pages_per_rank: int
    # Longest prompt + output; None: the model's maximum, or what one rank's pages hold if
    # less (block tables then never have columns no rank can fill).
    max_model_len: int | None
    max_num_seqs: int  # running sequences per DP rank
    max_num_batched_tokens: int  # tokens per DP rank per step
    smallest_bucket: int = 8
    growth_reserve: int | None = None  # runtime.kv_growth_reserve; None: auto (see growth_reserve_tokens)
    model_max_len: int | None = None  # the longest sequence the model allows; None: max_model_len
    # Derived here, never passed in:
    max_pages_per_seq: int = dataclasses.field(init=False)  # columns of a block table
    token_buckets: tuple[int, ...] = dataclasses.field(init=False)  # per-rank token strides (ascending)

    def __post_init__(self):
        if self.model_max_len is None:
            object.__setattr__(self, "model_max_len", self.max_model_len)
        if self.max_model_len is None:
            object.__setattr__(self, "max_model_len", min(self.model_max_len, self.rank_holds))
        object.__setattr__(self, "max_pages_per_seq", pages_for(self.max_model_len, self.page_size))
        object.__setattr__(self, "token_buckets", token_buckets(self.max_num_batched_tokens, self.smallest_bucket))

    @property
    def rank_holds(self) -> int:
        """Longest prompt + output one rank's pages hold (+1: the last sampled token is never
        written to the cache)."""
        return self.pages_per_rank * self.page_size + 1

    @property
    def growth_reserve_tokens(self) -> int:
        """Output tokens admission keeps pages for, for each running sequence (never past its
        max_tokens): `runtime.kv_growth_reserve`, by default one seat's share of a rank's
        pages. A rank then admits no more than its pages can grow to, and preempts only
        sequences that outgrow their share."""
        if self.growth_reserve is not None:
            return self.growth_reserve
        return self.pages_per_rank * self.page_size // self.max_num_seqs

    @property
    def max_request_len(self) -> int:
        """Longest prompt + max_tokens served: max_model_len, or one rank's pages if less."""
        return min(self.max_model_len, self.rank_holds)

    def limit_reason(self) -> str:
        """Why requests can be no longer than `max_request_len`, and how to serve longer ones."""
        longest = self.max_request_len
        if longest == self.model_max_len:
            return f"the maximum length {longest}"
        if longest == self.rank_holds:
            return (
                f"the {longest} tokens one DP rank's KV pages hold ({self.pages_per_rank} pages of "
                f"{self.page_size}; the model allows {self.model_max_len}: more kv_cache.num_pages, a smaller "
                "kv_cache.dtype or attention DP hold more)"
            )
        return f"runtime.max_model_len {longest}"

    def room_after(self, prompt_len: int) -> int:
        """The most tokens a request with a prompt this long may generate (< 1: the prompt is too long)."""
        return self.max_request_len - prompt_len

    def request_len_problem(self, prompt_len: int, max_tokens: int) -> tuple[str, str] | None:
        """(message, hint) when a request is longer than the plan serves: the one length check."""
        room = self.room_after(prompt_len)
        if max_tokens <= room:
            return None
        longest = self.max_request_len
        hint = f"use max_tokens <= {room}" if room >= 1 else f"shorten the prompt to under {longest} tokens"
        return f"prompt {prompt_len} + max_tokens {max_tokens} exceeds {self.limit_reason()}", hint

    def token_stride(self, busiest_rank_tokens: int) -> int:
        """The smallest bucket that holds the busiest rank's tokens."""
        return next(b for b in self.token_buckets if b >= busiest_rank_tokens)

    def request_stride(self, token_stride: int) -> int:
        """Rows per rank for per-request arrays: every request has >= 1 token in the step."""
        return min(token_stride, self.max_num_seqs)

    @property
    def max_request_stride(self) -> int:
        """Request rows per rank in the largest step: the sampled-token array's stride."""
        return self.request_stride(self.token_buckets[-1])

    @property
    def sampled_rows(self) -> int:
        """Rows of the step's sampled-token array: every rank's `max_request_stride`."""
        return self.dp_ranks * self.max_request_stride
