"""The engine: one jitted program over one mesh serving every DP rank (SPMD).

    add_request -> DPScheduler.schedule -> pack -> Step (device) -> sample -> update -> Output

With async scheduling the host schedules and packs step t+1 while the device
runs step t; decode tokens of t that the host has not seen yet are filled in on
the device (`FROM_PREVIOUS_STEP`). Outputs are identical either way.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

import jax

from ..distributed import fetch
from ..errors import ShardspecError
from ..load import load
from ..placement import apply
from ..plan import ShardingPlan, compile
from ..protocol import ServableModel
from ..tokenizer import decode, load_tokenizer
from . import step_costs
from .logprob_log import LogprobLog
from .metrics import Metrics
from .packer import PackedStep, pack
from .paged_attention import attend_rank
from .request import Output, Request, TokenLogprob
from .requests_io import make_request, request_fields
from .schedule import StepSchedule
from .scheduler import DPScheduler
from .step import Step, allocate_kv_cache, device_batch, local_rows, padding_batch
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


@dataclasses.dataclass(frozen=True)
class _InFlight:
    schedule: StepSchedule
    packed: PackedStep
    sampled: jax.Array  # [R*Q_max] on device


class Engine:
    """Serve a model under a plan. Every accepted request finishes exactly once."""

    def __init__(
        self,
        plan: ShardingPlan,
        model: ServableModel | None = None,
        *,
        seed: int = 0,
        eos_token_id: int | None = None,
        rank_attention=attend_rank,
    ):
        """Serve `model` (an NNX module implementing `shardspec.protocol.ServableModel`,
        the one the plan was compiled from; placed into the plan's shardings here), or
        by default shardspec's own model of the plan, initialised with `seed`.

        `eos_token_id` defaults to the checkpoint's (generation_config.json); a checkpoint's
        tokenizer.json lets requests give `prompt` text and outputs carry `text`.
        `rank_attention` replaces the paged attention of one rank (`paged_attention.py`).
        """
        plan.servable_kv_cache()  # a ShardspecError for a model with no decoder geometry
        self.plan = plan
        self.sizes = plan.runtime
        self.model = apply(plan, seed=seed) if model is None else _placed(plan, model)
        runtime = plan.strategy.runtime
        self.async_scheduling = runtime.async_scheduling
        eos = (eos_token_id,) if eos_token_id is not None else plan.model.eos_token_ids
        self.tokenizer = load_tokenizer(plan.model.checkpoint)
        self.scheduler = DPScheduler(
            self.sizes,
            routing=runtime.routing,
            eos_token_ids=eos,
            async_scheduling=runtime.async_scheduling,
            prefix_caching=plan.strategy.kv_cache.prefix_caching,
        )
        self._step = Step(plan, self.model, rank_attention)
        self._caches = allocate_kv_cache(plan)
        self._inflight: _InFlight | None = None
        self._kv_suspect = False  # a step failed: check that the KV cache survived it
        self._samples = self._step.initial_samples()
        self._next_id = 0
        self.metrics = Metrics(self.sizes.dp_ranks)
        self._texts: dict[str, TextStream] = {}  # requests whose text is followed: stop strings, streaming
        self.follow_text = False  # set by follow_all_text(): stream every request's text
        self._logprobs = LogprobLog()
        if runtime.step_costs != "auto":
            self._use_step_costs(step_costs.interpolated(runtime.step_costs, self.sizes.token_buckets), "strategy")
        # Held by every step, add_request and abort: other threads may add and abort while one
        # thread steps; hold it to read the scheduler's state consistently (the server's metrics).
        self.lock = threading.RLock()

    @classmethod
    def from_strategy(
        cls, path: str | os.PathLike, model: str | None = None, overrides: Mapping[str, str] | None = None, **kwargs
    ) -> Engine:
        strategy = load(path, overrides=overrides)
        return cls(compile(strategy.with_model(model) if model is not None else strategy), **kwargs)

    # -- requests ---------------------------------------------------------------------------

    def add_request(self, request: Request | None = None, /, **fields) -> str:
        """Accept a Request, or request-file fields (`prompt_token_ids=[...]`, `max_tokens=8`…).

        Raises ShardspecError for a bad request; an accepted one always finishes.
        """
        with self.lock:
            if request is not None:
                if fields or not isinstance(request, Request):
                    raise TypeError("add_request takes a Request or request fields, not both")
                fields = request_fields(request)  # a Request is checked by the same path as fields
            request = self.validate(fields, str(self._next_id))
            self._next_id += 1
            return self._accept(request)

    def _accept(self, request: Request) -> str:
        """A validated request into the scheduler, its text and logprobs followed if it asks."""
        with self.lock:
            try:
                self.scheduler.add_request(request)
            except ValueError as e:  # validated above: only a duplicate id is left
                raise ShardspecError(str(e), path="id", hint="ids must be unique among unfinished requests") from None
            if request.stop or (self.follow_text and self.tokenizer is not None):
                self._texts[request.id] = TextStream(self.tokenizer, request.stop)
            if request.logprobs is not None:
                self._logprobs.follow(request.id, request.logprobs)
            return request.id

    def validate(self, fields: Mapping, default_id: str) -> Request:
        """A Request from request-file fields, checked against this engine (ShardspecError if bad)."""
        return make_request(
            fields,
            default_id=default_id,
            vocab_size=self.plan.model.geometry.vocab_size,
            limits=self.sizes,
            tokenizer=self.tokenizer,
        )

    def abort(self, request_id: str) -> bool:
        """Finish a request now as "abort" (its pages return); False if unknown or finished."""
        with self.lock:
            return self.scheduler.abort(request_id)

    def has_unfinished(self) -> bool:
        with self.lock:
            return self.scheduler.has_unfinished() or self._inflight is not None

    # -- stepping ---------------------------------------------------------------------------

    def warmup(self) -> None:
        """Compile every token bucket now, with padding-only steps that change nothing; with
        `runtime.step_costs: auto`, time them too (step_costs.py)."""
        for stride in self.sizes.token_buckets:
            self._padding_step(stride)
        if self.plan.strategy.runtime.step_costs == "auto":
            self._use_step_costs(step_costs.measure(self._padding_step, self.sizes.token_buckets), "measured")
        self.metrics.compiles = self._step.traces

    def padding_step(self, stride: int) -> None:
        """Run one padding-only step of `stride` tokens per DP rank (it changes nothing) and
        wait for it: the warm-up's compile and timing, and benchmarks' replay of a schedule."""
        with self.lock:
            self._padding_step(stride)

    def _padding_step(self, stride: int) -> None:
        sampled, self._caches = self._step(self._caches, padding_batch(self.sizes, stride), self._samples)
        sampled.tokens.block_until_ready()

    def _use_step_costs(self, table: dict[int, float], source: str) -> None:
        """Form `balanced` steps by `table` ({bucket: ms}) from now on; report it."""
        self.scheduler.step_costs_ms = table
        self.metrics.step_costs_ms, self.metrics.step_costs_source = table, source

    def step(self) -> list[Output]:
        """Run one step; return the requests that finished."""
        with self.lock:
            self.scheduler.record_tokens = bool(self._texts or self._logprobs) or self.follow_text
            outputs, _ = self._step_once()
            for out in outputs:
                self._texts.pop(out.id, None)
            return outputs

    def step_deltas(self) -> list[TokenDelta]:
        """Run one step; return every request's progress in it (see TokenDelta)."""
        with self.lock:
            self.follow_all_text()
            self.scheduler.record_tokens = True
            outputs, new = self._step_once()
            return self._deltas(new, outputs)

    def follow_all_text(self) -> None:
        """From now on follow every request's text (with a tokenizer), for text deltas; a
        request already running starts from the outputs it has, so its text stays whole."""
        with self.lock:
            if self.follow_text:
                return
            self.follow_text = True
            if self.tokenizer is None:
                return
            for rid, outputs in self.scheduler.outputs_so_far().items():
                if rid not in self._texts:
                    self._texts[rid] = TextStream(self.tokenizer)
                    self._texts[rid].push(outputs)

    def _step_once(self) -> tuple[list[Output], list[tuple[str, int, TokenLogprob | None]]]:
        """One step: (finished outputs, complete, and the (request id, token, logprob) it took).

        A step that raises (packing, the device, reading its samples) fails only the
        requests in it (finish_reason "error"); when it took the KV cache with it, the
        cache is rebuilt and every running request recomputes.
        """
        start = time.perf_counter()
        schedule = self.scheduler.schedule()
        launched = self._launch(schedule) if len(schedule) else None
        host = time.perf_counter() - start  # scheduling and packing, before the dispatch
        # Sync: collect what was just launched. Async: collect the step before it,
        # which ran on the device while the host planned this one.
        collect = launched if not self.async_scheduling else self._inflight
        self._inflight = launched if self.async_scheduling else None
        outputs, new = self._collect(collect) if collect else ([], [])
        if self._kv_suspect:
            self._recover_kv()
        outputs += self.scheduler.take_finished()
        outputs += self._stop_strings(new)
        self.metrics.generated_tokens += sum(len(o.output_token_ids) for o in outputs)
        self._record(start, host)
        return [self._complete(o) for o in outputs], new

    def _launch(self, schedule: StepSchedule) -> _InFlight | None:
        """Pack `schedule` and dispatch it to the device; None if that failed (its requests did)."""
        try:
            prev = local_rows(self._inflight.packed) if self._inflight else None
            packed = pack(schedule, self.sizes, prev_rows=prev)
            samples = self._inflight.sampled.tokens if self._inflight else self._samples
            batch = device_batch(packed, self._logprobs.rows(packed, self.scheduler.request_id))
            sampled, self._caches = self._step(self._caches, batch, samples)
        except Exception as e:  # any failure is this step's, never the engine's
            self._fail(schedule, e)
            return None
        self.metrics.record_step(
            packed.real_tokens, packed.padded_tokens, schedule.tokens_per_rank(self.sizes.dp_ranks)
        )
        return _InFlight(schedule, packed, sampled)

    def _collect(self, done: _InFlight) -> tuple[list[Output], list[tuple[str, int, TokenLogprob | None]]]:
        """A launched step's samples into the scheduler: (outputs, new tokens with logprobs)."""
        try:
            rows = self._step.output_rows(done.packed)
            tokens = fetch(done.sampled.tokens)[rows]
            t0 = time.perf_counter()
            outputs = self.scheduler.update(done.schedule, tokens)  # one token per sampled chunk, schedule order
            self.metrics.host_seconds += time.perf_counter() - t0
            new = self.scheduler.take_new_tokens()
            return outputs, self._logprobs.attach(new, done.sampled, rows)
        except Exception as e:  # the device run (or reading it back) failed
            self._fail(done.schedule, e)
            return [], [(rid, token, None) for rid, token, _ in self.scheduler.take_new_tokens()]

    def _fail(self, schedule: StepSchedule, error: Exception) -> None:
        """`schedule` raised `error`: its requests finish as "error"; check the KV cache after the step."""
        self.scheduler.fail(schedule, _error_text(error))
        self.metrics.failed_steps += 1
        self._kv_suspect = True  # the step may have consumed (donated) the cache

    def _recover_kv(self) -> None:
        """After a failed step: if the KV cache did not survive it, allocate a new one and
        have every running request recompute (the step in flight read the lost cache too)."""
        self._kv_suspect = False
        if _alive(self._caches):
            return
        abandoned, self._inflight = self._inflight, None
        self.scheduler.kv_lost(abandoned.schedule if abandoned else None)
        self._caches = allocate_kv_cache(self.plan)
        self._samples = self._step.initial_samples()

    def _stop_strings(self, new) -> list[Output]:
        """Push new tokens into the requests' TextStreams; finish those a stop string ended."""
        stopped = False
        for rid, token, _ in new:
            text = self._texts.get(rid)
            if text is not None and not text.stopped:
                text.push((token,))
                if text.stopped:
                    stopped |= self.scheduler.abort(rid, reason="stop")
        return self.scheduler.take_finished() if stopped else []

    def _complete(self, out: Output) -> Output:
        """A finished request's Output with its text and logprobs."""
        logprobs = self._logprobs.take(out.id)
        if logprobs is not None:
            out = dataclasses.replace(out, logprobs=logprobs)
        if self.tokenizer is None:
            return out
        text = self._texts.get(out.id)  # kept for the request's last delta; let go by step() / _deltas()
        return dataclasses.replace(out, text=text.finish() if text else decode(self.tokenizer, out.output_token_ids))

    def _deltas(self, new, outputs: list[Output]) -> list[TokenDelta]:
        """A step's tokens grouped by request (first-seen order), with their text; then finishes."""
        tokens: dict[str, list[int]] = {}
        logprobs: dict[str, list[TokenLogprob]] = {}
        for rid, token, entry in new:
            tokens.setdefault(rid, []).append(token)
            if entry is not None:
                logprobs.setdefault(rid, []).append(entry)
        finished = {o.id: o for o in outputs}
        deltas = []
        for rid in list(tokens) + [o.id for o in outputs if o.id not in tokens]:
            out, text = finished.get(rid), self._texts.get(rid)
            piece = text.take(final=out is not None) if text is not None else None
            lp = tuple(logprobs[rid]) if rid in logprobs else None
            deltas.append(TokenDelta(rid, tuple(tokens.get(rid, ())), piece, out, lp))
        for rid in finished:
            self._texts.pop(rid, None)
        return deltas

    def _record(self, start: float, host: float) -> None:
        m = self.metrics
        m.host_seconds += host
        m.wall_seconds += time.perf_counter() - start
        m.compiles = self._step.traces
        stats = self.scheduler.stats()
        m.max_kv_usage = max(m.max_kv_usage, stats["max_kv_usage"])
        m.preemptions = stats["preemptions"]
        m.rank_cached_prompt_tokens = tuple(stats["cached_tokens"])
        m.rank_computed_prompt_tokens = tuple(stats["prefill_tokens"])

    # -- whole workloads --------------------------------------------------------------------

    def stream(self, requests: Iterable[Request | Mapping] = (), *, tokens: bool = False) -> Iterator:
        """Add `requests`, then yield every Output as it finishes until none is left; with
        `tokens=True`, every TokenDelta as steps produce them (a request's last carries its Output)."""
        if tokens:
            self.follow_all_text()  # before the requests are added: each one's text is followed
        for r in requests:
            self.add_request(r) if isinstance(r, Request) else self.add_request(**r)
        idle = 0
        while self.has_unfinished():
            steps = self.metrics.steps
            events = self.step_deltas() if tokens else self.step()
            yield from events
            stalled = self.metrics.steps == steps and not events and self._inflight is None
            idle = idle + 1 if stalled else 0
            if idle > 100:  # a scheduler bug, never a user error: fail loudly, never hang
                raise RuntimeError("the scheduler made no progress in 100 steps")

    def generate(
        self, requests: Iterable[Request | Mapping], on_output: Callable[[Output], None] | None = None
    ) -> list[Output]:
        """Serve `requests` to the end; outputs in input order. `on_output` sees each as it finishes."""
        requests = [  # each checked once, Requests by the same path as fields
            self.validate(request_fields(r) if isinstance(r, Request) else r, str(i)) for i, r in enumerate(requests)
        ]
        order = {r.id: i for i, r in enumerate(requests)}
        if len(order) != len(requests):
            raise ShardspecError("request ids must be unique")
        for request in requests:
            self._accept(request)
        outputs = []
        for out in self.stream():
            outputs.append(out)
            if on_output is not None:
                on_output(out)
        outputs.sort(key=lambda o: order[o.id])
        assert len(outputs) == len(requests), "a request finished more or less than once"
        return outputs


def _error_text(error: Exception, limit: int = 500) -> str:
    """What an Output with finish_reason "error" says: the exception, cut to `limit` characters."""
    text = f"the step failed: {type(error).__name__}: {error}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _alive(caches) -> bool:
    """Whether every KV cache array is still usable: not donated to a step that failed, not an error value."""
    try:
        leaves = jax.tree.leaves(caches)
        if any(x.is_deleted() for x in leaves):
            return False
        jax.block_until_ready(leaves)
    except Exception:  # the array holds the failed computation's error
        return False
    return True


def _placed(plan: ShardingPlan, model) -> ServableModel:
    """The caller's model, checked against the protocol and the plan, in the plan's shardings."""
    from flax import nnx

    if not isinstance(model, nnx.Module) or not isinstance(model, ServableModel):
        missing = [m for m in ("decoder_geometry", "hidden_states", "logits") if not callable(getattr(model, m, None))]
        raise ShardspecError(
            f"Engine cannot serve a {type(model).__name__}"
            + (f": it has no {', '.join(missing)}" if missing else ": it is not an nnx.Module"),
            path="model",
            hint="serve an NNX module implementing shardspec.protocol.ServableModel",
        )
    geometry = model.decoder_geometry()
    if geometry != plan.model.geometry:
        raise ShardspecError(
            f"the model's decoder geometry {geometry} differs from the plan's {plan.model.geometry}",
            path="model",
            hint="compile the plan from this model",
        )
    return apply(plan, model)  # checks every parameter path and shape against the plan
