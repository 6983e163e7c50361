"""One serving step as one jitted program over the plan's mesh.

    tokens -> model (paged attention per DP rank) -> last token of each request row
           -> logits -> sampler -> sampled tokens [R, Q_max], each rank's rows on that rank

Compiled once per token bucket (the request stride follows from it); the KV
cache is donated, and in/out shardings come from the plan, so warm-up and
serving share one compiled program per bucket and steady state never compiles.
A step where some row asks for more (penalties or logit_bias, a grammar's mask,
its prompt's logprobs: `PackedStep.extras`) runs a program of its own for that
set of extras, compiled the first time a step needs it and kept; the steps that
ask for none run the warm-up's programs, unchanged. A `Step` is keyed by what
determines its program (`step_key`) and shared by every engine of the process
that needs that program (`shared_step`).
"""

from __future__ import annotations

import dataclasses
import functools
import threading

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ..distributed import global_array
from ..plan import ShardingPlan
from ..sizes import RuntimeSizes
from .packer import PackedStep, pack
from .paged_attention import PagedBatch, attend_rank, make_attend
from .sampler import logprobs, sample_changed, sample_with_logprobs
from .schedule import StepSchedule

# Packer fields the device needs, and whether each is per token or per request row.
TOKEN_FIELDS = ("token_ids", "prev_rows", "positions", "slot_mapping", "token_rows")
ROW_FIELDS = ("block_tables", "seq_lens", "logits_indices", "temperature", "top_k", "top_p", "seeds", "output_index")
# Per request row: top logprobs wanted (-1: none); the device computes them only where asked.
LOGPROBS = "logprobs"
# Fields only steps where some row asks have (`PackedStep.extras`); each set of them is a
# program of its own, compiled on first use, so the steps that ask for nothing run unchanged.
ADJUST_ROWS = ("adjust_presence", "adjust_frequency", "adjust_repetition")  # [R*Q]
ADJUST_TABLES = ("adjust_ids", "adjust_counts", "adjust_bias")  # [R*Q, W]
MASK = "structured_mask"  # [R*Q, ceil(V/32)]
PROMPT_TARGETS = "prompt_targets"  # [R*S]
BASE_FIELDS = TOKEN_FIELDS + ROW_FIELDS + (LOGPROBS,)  # every step's


@dataclasses.dataclass(frozen=True)
class StepSamples:
    """What a step returns per request row r*Q_max + i (rank r's row i), on that rank."""

    tokens: jax.Array  # int32 [R*Q_max]
    logprob: jax.Array  # float32 [R*Q_max]: the sampled token's (0 unless its row asked)
    top_logprobs: jax.Array  # float32 [R*Q_max, K], most likely first
    top_ids: jax.Array  # int32 [R*Q_max, K]
    # Steps with prompt targets: per token row of the packed step (R*S), the target's logprob
    # under the logits at that token, and the top K there.
    prompt_logprob: jax.Array | None = None  # float32 [R*S]
    prompt_top_logprobs: jax.Array | None = None  # float32 [R*S, K]
    prompt_top_ids: jax.Array | None = None  # int32 [R*S, K]


jax.tree_util.register_dataclass(
    StepSamples, data_fields=[f.name for f in dataclasses.fields(StepSamples)], meta_fields=[]
)


def device_batch(packed: PackedStep) -> dict[str, np.ndarray]:
    """The packer's arrays the device step takes (its extras only in the steps that have them)."""
    return {f: getattr(packed, f) for f in BASE_FIELDS} | dict(packed.extras)


def padding_batch(sizes: RuntimeSizes, stride: int) -> dict[str, np.ndarray]:
    """A step of nothing but padding at `stride` tokens a rank: it changes nothing
    (KV writes go to the dropped slot). Warm-up compiles each bucket with one."""
    return device_batch(pack(StepSchedule.empty(-1), sizes, min_stride=stride))


def local_rows(packed: PackedStep) -> tuple[np.ndarray, np.ndarray]:
    """(sorted seq ids, each one's sample row inside its own rank): the next step's
    `prev_rows` (a sequence never changes rank while it runs)."""
    order = np.argsort(packed.sampled_seq_ids, kind="stable")
    return packed.sampled_seq_ids[order], (packed.selector % packed.request_stride)[order].astype(np.int64)


class Step:
    """The serving step of one plan and model definition: one jitted program, compiled once
    per token bucket (the request stride follows from it).

    A Step is a value: it holds no parameters, KV cache or requests (they are arguments),
    so every Engine on an equal plan and model definition shares one (`shared_step`), sync
    or async, and warm-up, serving and the HLO report run the same program. `key` is what
    determines the program; `traces` counts its compilations in this process.
    """

    def __init__(self, plan: ShardingPlan, graphdef: nnx.GraphDef, rank_attention=attend_rank):
        """`graphdef`: the model's definition (`nnx.split(model)[0]`); `rank_attention`: one
        rank's paged attention (`paged_attention.attend_rank`; the exact
        `attend_rank_reference` for comparisons)."""
        self.key = step_key(plan, graphdef, rank_attention)
        self.plan = plan
        self.graphdef = graphdef
        self.sizes = plan.runtime
        self.q_max = self.sizes.max_request_stride
        self.traces = 0
        token_axes = plan.token_axes
        self._attend = make_attend(
            plan.mesh,
            token_axes,
            plan.activations["attn_q"],
            plan.activations["attn_kv"],
            plan.kv_cache.spec,
            plan.model.geometry,
            rank_attention,
        )
        per_token = NamedSharding(plan.mesh, P(token_axes))
        rows2d = NamedSharding(plan.mesh, P(token_axes, None))
        # Logit rows stay where the FFN layout put them (over `data`): moving them
        # onto attn_dp as well would be an all-to-all that GSPMD can only replicate.
        self._rows = NamedSharding(plan.mesh, P(plan.activations["logits"][0], None))
        # ...but once the vocab is gathered, each rank's rows are a local slice.
        self._sample_rows = rows2d
        # Each rank samples its own rows: its lax.cond (greedy or not) decides for them alone.
        self._sample = jax.shard_map(
            sample_with_logprobs,
            mesh=plan.mesh,
            check_vma=False,
            in_specs=(rows2d.spec,) + (per_token.spec,) * 6,
            out_specs=(per_token.spec, per_token.spec, rows2d.spec, rows2d.spec),
        )
        self._prompt_logprobs = jax.shard_map(
            lambda logits, targets: logprobs(logits, jnp.maximum(targets, 0), targets),
            mesh=plan.mesh,
            check_vma=False,
            in_specs=(rows2d.spec, per_token.spec),
            out_specs=(per_token.spec, rows2d.spec, rows2d.spec),
        )
        # Sampled ids stay on their rank: the host reads them (no device collective),
        # and the next step's decodes read their own rank's rows (async scheduling).
        self._samples = per_token
        self._per_token, self._rows2d = per_token, rows2d
        self._programs: dict[frozenset[str], jax.stages.Wrapped] = {}  # by the extras a step has
        kv = plan.kv_cache
        shape = (self.sizes.dp_ranks * self.sizes.pages_per_rank, kv.page_size, kv.slots, kv.head_dim)
        cache = plan.sharding(kv.spec)
        self._zeros = jax.jit(functools.partial(jnp.zeros, shape, jnp.dtype(kv.dtype)), out_shardings=cache)

    def _program(self, extras: frozenset[str]):
        """The jitted step for batches with these extra fields, built on first use (and kept)."""
        program = self._programs.get(extras)
        if program is None:
            plan, kv = self.plan, self.plan.kv_cache
            cache = plan.sharding(kv.spec)
            caches = [(cache,) * kv.arrays] * kv.num_layers
            batch = {f: self._sharding_of(f) for f in (*BASE_FIELDS, *extras)}
            per_token, rows2d = self._per_token, self._rows2d
            prompt = (per_token, rows2d, rows2d) if PROMPT_TARGETS in extras else (None,) * 3
            samples = StepSamples(per_token, per_token, rows2d, rows2d, *prompt)
            program = self._programs[extras] = jax.jit(
                self._step,
                donate_argnums=(1,),
                in_shardings=(plan.param_shardings(), caches, batch, self._samples),
                out_shardings=(samples, caches),
            )
        return program

    def __call__(self, params: nnx.State, caches, batch: dict[str, np.ndarray], prev_sampled: jax.Array):
        """Dispatch one step (asynchronously); returns (StepSamples, new caches).

        `params`: the model's state (`nnx.split(model)[1]`), placed by the plan. Row
        r*Q_max + i of `sampled` is rank r's request row i; `batch["prev_rows"]` holds
        rank-local rows of `prev_sampled` (-1: the token is in `token_ids`).
        """
        program = self._program(frozenset(batch.keys() - set(BASE_FIELDS)))
        if self.plan.mesh.is_multi_process:  # jit takes host arrays only when it sees every device
            batch = {f: global_array(x, self._sharding_of(f)) for f, x in batch.items()}
        return program(params, caches, batch, prev_sampled)

    def _sharding_of(self, field: str) -> NamedSharding:
        """A batch field's sharding: its rows over the DP ranks."""
        return self._rows2d if field in ("block_tables", MASK) + ADJUST_TABLES else self._per_token

    def lower(self, params, caches, batch, prev_sampled) -> jax.stages.Lowered:
        """Lower without running (arguments may be ShapeDtypeStructs): for `shardspec.hlo`."""
        return self._program(frozenset(batch.keys() - set(BASE_FIELDS))).lower(params, caches, batch, prev_sampled)

    def new_kv_cache(self) -> list[tuple[jax.Array, ...]]:
        """A layer's arrays (K and V, or the latent), each [R × pages_per_rank, page_size,
        kv slots, head_dim], zeros, in place."""
        kv = self.plan.kv_cache
        return [tuple(self._zeros() for _ in range(kv.arrays)) for _ in range(kv.num_layers)]

    def initial_samples(self) -> jax.Array:
        """The `prev_sampled` of a first step (nothing sampled before it)."""
        return global_array(np.zeros(self.sizes.sampled_rows, np.int32), self._samples)

    def output_rows(self, packed: PackedStep) -> np.ndarray:
        """Where each of `packed.selector`'s rows (rank × Q + i) is in the output (rank × Q_max + i)."""
        Q = packed.request_stride
        return packed.selector // Q * self.q_max + packed.selector % Q

    def padding_step(self, params: nnx.State, caches, stride: int):
        """Run a step of nothing but padding at `stride` tokens a rank and wait for it: it
        changes nothing (KV writes go to the dropped slot). Returns the caches."""
        sampled, caches = self(params, caches, padding_batch(self.sizes, stride), self.initial_samples())
        sampled.tokens.block_until_ready()
        return caches

    def _step(self, state, caches, batch, prev_sampled):
        self.traces += 1  # runs only while tracing: once per compiled program
        model = nnx.merge(self.graphdef, state)
        tokens = self._input_tokens(batch, prev_sampled)
        paged = PagedBatch(
            batch["positions"], batch["slot_mapping"], batch["token_rows"], batch["block_tables"], batch["seq_lens"]
        )
        with self.plan.traced_context():  # the model's own constraints resolve as under plan.context()
            hidden, caches = model.hidden_states(
                tokens[:, None],
                batch["positions"][:, None],
                self.plan.layout,
                self._attend,
                [(c, paged) for c in caches],
            )
        caches = [c for c, _ in caches]
        drawn = self._draw(self._last_logits(model, hidden, batch["logits_indices"]), batch, tokens)
        prompt = self._prompt(model, hidden, batch[PROMPT_TARGETS]) if PROMPT_TARGETS in batch else (None,) * 3
        return StepSamples(*(self._per_row(x) for x in drawn), *prompt), caches

    def _input_tokens(self, batch, prev_sampled):
        """The step's token ids, decode tokens sampled by the step before and not yet seen by
        the host (async) filled in: a gather inside each rank's own rows, no collective."""
        R = self.sizes.dp_ranks
        local = batch["prev_rows"].reshape(R, -1)  # [R, S]
        from_prev = jnp.take_along_axis(prev_sampled.reshape(R, self.q_max), jnp.maximum(local, 0), axis=1)
        return jnp.where(batch["prev_rows"] >= 0, from_prev.reshape(-1), batch["token_ids"])

    def _last_logits(self, model, hidden, logits_indices):
        """[R*Q, V] the logits at each request row's last token, each rank's rows on it."""
        R, rows = self.sizes.dp_ranks, logits_indices.shape[0]
        per_rank = hidden[:, 0].reshape(R, -1, hidden.shape[-1])  # [R, S, E]
        index = logits_indices.reshape(R, -1)  # [R, Q], rank-local token index
        last = jnp.take_along_axis(per_rank, index[..., None], axis=1).reshape(rows, 1, -1)
        with self.plan.traced_context():
            logits = model.logits(last, self.plan.layout)
        return self._on_ranks(logits[:, 0])

    def _on_ranks(self, logits):
        """Logit rows where their rank samples them. Sampling sorts whole rows: gather the
        vocab once, then each rank's rows where its sampling parameters are (over data and
        attn_dp): rows replicated over attn_dp made GSPMD all-gather a [rows, vocab] iota in argmax."""
        logits = jax.lax.with_sharding_constraint(logits, self._rows)
        return jax.lax.with_sharding_constraint(logits, self._sample_rows)

    def _draw(self, logits, batch, tokens):
        """(tokens, logprob, top logprobs, top ids) of each request row: in a step with grammar
        masks or adjustments, the logits changed first (the decode input tokens count as their
        rows' latest outputs)."""
        sampling = [batch[f] for f in ("temperature", "top_k", "top_p", "seeds", "output_index", LOGPROBS)]
        adjustments = [batch[f] for f in ADJUST_TABLES + ADJUST_ROWS] if ADJUST_TABLES[0] in batch else None
        mask = batch.get(MASK)
        if adjustments is None and mask is None:
            return self._sample(logits, *sampling)
        latest = (tokens, batch["prev_rows"], batch["token_rows"]) if adjustments is not None else None
        rows, per_token = self._rows2d.spec, self._per_token.spec
        changed = jax.shard_map(  # each rank changes and samples its own rows
            sample_changed,
            mesh=self.plan.mesh,
            check_vma=False,
            in_specs=(
                rows,
                *[per_token] * 6,
                None if adjustments is None else [rows] * 3 + [per_token] * 3,
                None if mask is None else rows,
                None if latest is None else (per_token,) * 3,
            ),
            out_specs=(per_token, per_token, rows, rows),
        )
        return changed(logits, *sampling, adjustments, mask, latest)

    def _prompt(self, model, hidden, targets):
        """Each token's logprob of its prompt target, and the top K: every token's logits,
        computed only in a step where some request wants its prompt's logprobs."""
        with self.plan.traced_context():
            logits = model.logits(hidden, self.plan.layout)
        return self._prompt_logprobs(self._on_ranks(logits[:, 0]), targets)

    def _per_row(self, x):
        """[R*Q, ...] -> [R*Q_max, ...]: each rank's rows at its own offset."""
        R, rows = self.sizes.dp_ranks, x.shape[0]
        full = jnp.zeros((R, self.q_max, *x.shape[1:]), x.dtype)
        return full.at[:, : rows // R].set(x.reshape(R, rows // R, *x.shape[1:])).reshape(-1, *x.shape[1:])


def step_key(plan: ShardingPlan, graphdef: nnx.GraphDef, rank_attention) -> tuple:
    """What determines a step's compiled program: the plan's programs, the model's
    definition (not its parameter values) and the attention."""
    return plan.program_key, graphdef, rank_attention


_SHARED: dict[tuple, Step] = {}  # every Step shared_step() built in this process, by step_key
_SHARED_LOCK = threading.Lock()


def shared_step(plan: ShardingPlan, graphdef: nnx.GraphDef, rank_attention=attend_rank) -> Step:
    """This process's Step for the program that (plan, model definition, attention)
    determine: built on first use, the same object afterwards, so a second Engine on an
    equal plan compiles nothing (its programs are in the Step's jit cache)."""
    key = step_key(plan, graphdef, rank_attention)
    with _SHARED_LOCK:
        step = _SHARED.get(key)
        if step is None:
            step = _SHARED[key] = Step(plan, graphdef, rank_attention)
    return step
