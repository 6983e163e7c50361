"""The engine's core loop: schedule -> launch -> collect, and what a failing step leaves.

    DPScheduler.schedule -> pack -> Step (device) -> samples -> DPScheduler.update

With async scheduling the host schedules and packs step t+1 while the device
runs step t, then collects step t; decode tokens of t that the host has not
seen yet are filled in on the device (`FROM_PREVIOUS_STEP`). A step with
grammar masks (structured outputs) is collected as soon as it is launched: its
constrained rows' next masks need its tokens. Outputs are identical either way.

A step that raises (packing, the device, reading its samples back) fails only
the requests in it (finish_reason "error"); when it took the donated KV cache
with it, the cache is rebuilt and every running request recomputes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping

import jax
from flax import nnx

from ..distributed import fetch
from ..sizes import RuntimeSizes
from . import step_costs
from .logprobs import NewToken, PromptLogprob, prompt_logprobs, with_logprobs
from .metrics import Metrics, StepRecord
from .packer import PackedStep, pack
from .request import Output
from .schedule import StepSchedule
from .scheduler import DPScheduler
from .step import Step, device_batch, local_rows


@dataclasses.dataclass(frozen=True)
class StepResult:
    finished: list[Output]  # the requests that finished, as the scheduler reports them (no text yet)
    new_tokens: list[NewToken] | None  # every token the step gave, in order; None unless asked for
    prompt_logprobs: list[PromptLogprob] = dataclasses.field(default_factory=list)  # those it computed


@dataclasses.dataclass(frozen=True)
class _InFlight:
    schedule: StepSchedule
    packed: PackedStep
    sampled: object  # StepSamples, on the device


class StepLoop:
    """Runs the scheduler's steps on the device with one model's parameters and KV cache."""

    def __init__(
        self,
        step: Step,
        params: nnx.State,
        scheduler: DPScheduler,
        sizes: RuntimeSizes,
        step_costs_ms: Mapping[int, float] | None = None,
    ):
        """`step_costs_ms`: a given step-cost table (`runtime.step_costs`), else measured by
        `warm_up(measure=True)`; `balanced` forms steps by it once known."""
        self._step, self._params, self.scheduler, self.sizes = step, params, scheduler, sizes
        self._async = scheduler.async_scheduling
        self._caches = step.new_kv_cache()
        self._samples = step.initial_samples()
        self._in_flight: _InFlight | None = None
        self._kv_suspect = False  # a step failed: check that the KV cache survived it
        self.metrics = Metrics(
            sizes.dp_ranks, step_costs_ms=step_costs_ms, step_costs_source="strategy" if step_costs_ms else None
        )

    @property
    def in_flight(self) -> bool:
        """Whether a launched step has not been collected yet (async scheduling)."""
        return self._in_flight is not None

    # -- warm-up ---------------------------------------------------------------------------------

    def warm_up(self, measure: bool) -> None:
        """Compile every token bucket with a padding-only step that changes nothing; with
        `measure`, time them for `balanced` (step_costs.py)."""
        for stride in self.sizes.token_buckets:
            self.padding_step(stride)
        if measure:
            table = step_costs.measure(self.padding_step, self.sizes.token_buckets)
            self.metrics = dataclasses.replace(self.metrics, step_costs_ms=table, step_costs_source="measured")
        self.metrics = dataclasses.replace(self.metrics, compiles=self._step.traces)

    def padding_step(self, stride: int) -> None:
        """Run one padding-only step of `stride` tokens per DP rank and wait for it."""
        self._caches = self._step.padding_step(self._params, self._caches, stride)

    # -- a step ----------------------------------------------------------------------------------

    def step(self, keep_tokens: bool) -> StepResult:
        """Schedule and launch one step, and collect the one it finishes (this one, or with async
        scheduling the one before); `keep_tokens`: report every token it gave."""
        start = time.perf_counter()
        previous = self._in_flight
        schedule = self.scheduler.schedule(self.metrics.step_costs_ms)
        launched, dispatch_s = self._launch(schedule) if len(schedule) else (None, 0.0)
        # Whether the device had finished the step before when it got this one: then it
        # idled, at most for the host's work since (sync: always; nothing was in flight).
        idle = _done(previous)
        failed = int(len(schedule) > 0 and launched is None)
        planned = time.perf_counter()
        # A step with grammar masks is collected at once, as without async scheduling: the next
        # masks of its constrained rows follow from the tokens it samples.
        now = launched is not None and launched.schedule.masks is not None
        done = [launched] if not self._async else [previous, launched] if now else [previous]
        self._in_flight = launched if self._async and not now else None
        new = [] if keep_tokens else None
        finished, waited_s, prompt = [], 0.0, []
        for collected in filter(None, done):
            outputs, waited, collect_failed = self._collect(collected, new, prompt)
            finished, waited_s, failed = finished + outputs, waited_s + waited, failed + collect_failed
        if self._kv_suspect:
            self._recover_kv()
        finished += self.scheduler.take_finished()
        end = time.perf_counter()
        work_a, work_b = planned - start - dispatch_s, end - planned - waited_s
        still_idle = _done(launched)
        exposed = (work_a if idle else 0.0) + (work_b if still_idle else 0.0)
        record = StepRecord(
            real_tokens=launched.packed.real_tokens if launched else 0,
            computed_tokens=launched.packed.padded_tokens if launched else 0,
            rank_tokens=schedule.tokens_per_rank(self.sizes.dp_ranks),
            generated_tokens=sum(len(o.output_token_ids) for o in finished),
            host_seconds=work_a + work_b,
            exposed_host_seconds=exposed,
            wall_seconds=end - start,
            failed_steps=failed,
        )
        self.metrics = self.metrics.stepped(record, self.scheduler.stats(), self._step.traces)
        return StepResult(finished, new, prompt)

    def stop(self, request_ids: Iterable[str]) -> list[Output]:
        """Finish these requests now as "stop" (a stop string the caller found in their text)."""
        for rid in request_ids:
            self.scheduler.abort(rid, reason="stop")
        finished = self.scheduler.take_finished()
        generated = self.metrics.generated_tokens + sum(len(o.output_token_ids) for o in finished)
        self.metrics = dataclasses.replace(self.metrics, generated_tokens=generated)
        return finished

    def _launch(self, schedule: StepSchedule) -> tuple[_InFlight | None, float]:
        """Pack `schedule` and dispatch it: (what is in flight, or None if that failed (its
        requests did), and the seconds the dispatch call took)."""
        t0 = t1 = time.perf_counter()
        try:
            prev = local_rows(self._in_flight.packed) if self._in_flight else None
            packed = pack(schedule, self.sizes, prev_rows=prev, check=False)
            samples = self._in_flight.sampled.tokens if self._in_flight else self._samples
            batch = device_batch(packed)
            t0 = time.perf_counter()
            sampled, self._caches = self._step(self._params, self._caches, batch, samples)
            t1 = time.perf_counter()
        except Exception as e:  # any failure is this step's, never the engine's
            self._fail(schedule, e)
            return None, time.perf_counter() - t0
        return _InFlight(schedule, packed, sampled), t1 - t0

    def _collect(self, done: _InFlight, new: list | None, prompt: list) -> tuple[list[Output], float, bool]:
        """A launched step's samples into the scheduler, its tokens (with their logprobs) into
        `new` when given, its prompt logprobs into `prompt`: (the outputs, the seconds spent
        waiting for the device, whether it failed)."""
        t0 = t1 = time.perf_counter()
        got: list[tuple[str, int, int]] | None = [] if new is not None else None
        try:
            rows = self._step.output_rows(done.packed)
            tokens = fetch(done.sampled.tokens)[rows]
            t1 = time.perf_counter()
            if done.schedule.prompt_targets is not None:  # before update() lets finished requests go
                prompt += prompt_logprobs(done.schedule, done.packed, done.sampled, self.scheduler.request_of)
            outputs = self.scheduler.update(done.schedule, tokens, got)  # one token per sampled chunk
            if new is not None:
                new += with_logprobs(got, done.schedule, done.sampled, rows)
            return outputs, t1 - t0, False
        except Exception as e:  # the device run (or reading it back) failed
            self._fail(done.schedule, e)
            if new is not None and not new:  # tokens the scheduler took before it failed
                new += [(rid, token, None) for rid, token, _ in got]
            return [], t1 - t0, True

    def _fail(self, schedule: StepSchedule, error: Exception) -> None:
        """`schedule` raised `error`: its requests finish as "error"; check the KV cache after the step."""
        self.scheduler.fail(schedule, _error_text(error))
        self._kv_suspect = True  # the step may have consumed (donated) the cache

    def _recover_kv(self) -> None:
        """After a failed step: if the KV cache did not survive it, allocate a new one and
        have every running request recompute (the step in flight read the lost cache too)."""
        self._kv_suspect = False
        if _alive(self._caches):
            return
        abandoned, self._in_flight = self._in_flight, None
        self.scheduler.kv_lost(abandoned.schedule if abandoned else None)
        self._caches = self._step.new_kv_cache()
        self._samples = self._step.initial_samples()


def _done(step: _InFlight | None) -> bool:
    """Whether the device has no work left of `step` (none, finished, or failed)."""
    try:
        return step is None or step.sampled.tokens.is_ready()
    except Exception:  # the step failed on the device: it is not running
        return True


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
