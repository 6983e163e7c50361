"""The engine: one jitted program over one mesh serving every DP rank (SPMD).

    add_request -> DPScheduler -> StepLoop (schedule, pack, Step on the device, collect)
                -> OutputLayer (text, stop strings, logprobs) -> Output / TokenDelta

`Engine` composes those parts and owns nothing else: the requests' check at
the boundary (`validate`), one lock, and the warm-up. The compiled step is a
value shared by every engine on an equal plan (`step.shared_step`); outsiders
read a frozen `EngineStats` snapshot, never the scheduler.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping

from flax import nnx

from ..errors import ShardspecError
from ..load import load
from ..placement import apply
from ..plan import ShardingPlan, compile
from ..protocol import ServableModel
from ..tokenizer import load_tokenizer
from . import step_costs
from .engine_stats import EngineStats
from .metrics import Metrics
from .outputs import OutputLayer, TokenDelta
from .paged_attention import attend_rank
from .request import Output, Request
from .requests_io import make_request
from .scheduler import DPScheduler
from .step import Step, shared_step, step_key
from .step_loop import StepLoop, StepResult
from .structured import Grammars

__all__ = ["Engine", "TokenDelta"]

STALLED_STEPS = 100  # steps in a row without progress: a scheduler bug, never a user error


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
        step: Step | None = None,
    ):
        """Serve `model` (an NNX module implementing `shardspec.protocol.ServableModel`,
        the one the plan was compiled from; placed into the plan's shardings here), or
        by default shardspec's own model of the plan, initialised with `seed`.

        `eos_token_id` defaults to the checkpoint's (generation_config.json); a checkpoint's
        tokenizer.json lets requests give `prompt` text and outputs carry `text`.
        `rank_attention` replaces the paged attention of one rank (`paged_attention.py`).
        `step`: the compiled step to run (default: the process's one for this plan, model
        definition and attention, `step.shared_step`), e.g. one that wraps it.
        """
        if model is not None:  # a plan compiled from a library's model, served through its adapter
            plan = plan.for_servable(model)
        plan.servable_kv_cache()  # a ShardspecError for a model with no decoder geometry
        self.plan = plan
        self.sizes = plan.runtime
        placed = apply(plan, seed=seed) if model is None else _placed(plan, model)
        graphdef, params = nnx.split(placed)
        runtime = plan.strategy.runtime
        eos = (eos_token_id,) if eos_token_id is not None else plan.model.eos_token_ids
        self.tokenizer = load_tokenizer(plan.model.checkpoint)
        vocab = plan.model.geometry.vocab_size
        self._grammars = Grammars(self.tokenizer, vocab, eos) if self.tokenizer is not None else None
        self._scheduler = DPScheduler(
            self.sizes,
            routing=runtime.routing,
            eos_token_ids=eos,
            async_scheduling=runtime.async_scheduling,
            prefix_caching=plan.strategy.kv_cache.prefix_caching,
            grammars=self._grammars,
        )
        costs = (
            None
            if runtime.step_costs == "auto"
            else step_costs.interpolated(runtime.step_costs, self.sizes.token_buckets)
        )
        self._loop = StepLoop(
            _checked_step(plan, graphdef, rank_attention, step), params, self._scheduler, self.sizes, costs
        )
        self._outputs = OutputLayer(self.tokenizer)
        self._next_id = 0
        # Held by every step, add_request, abort and stats(): other threads may add and abort
        # while one thread steps.
        self.lock = threading.RLock()

    @classmethod
    def from_strategy(
        cls, path: str | os.PathLike, model: str | None = None, overrides: Mapping[str, str] | None = None, **kwargs
    ) -> Engine:
        strategy = load(path, overrides=overrides)
        return cls(compile(strategy.with_model(model) if model is not None else strategy), **kwargs)

    # -- requests ---------------------------------------------------------------------------

    def validate(self, fields: Mapping, default_id: str) -> Request:
        """A Request from request-file fields, checked against this engine (ShardspecError if
        bad): the one check a request passes (`accept` trusts what this returned)."""
        return make_request(
            fields,
            default_id=default_id,
            vocab_size=self.plan.model.geometry.vocab_size,
            limits=self.sizes,
            tokenizer=self.tokenizer,
            grammars=self._grammars,
        )

    def add_request(self, request: Request | None = None, /, **fields) -> str:
        """Check and accept a Request, or request-file fields (`prompt_token_ids=[...]`,
        `max_tokens=8`…). Raises ShardspecError for a bad request; an accepted one always finishes."""
        with self.lock:
            if request is not None:
                if fields:
                    raise TypeError("add_request() takes a Request or fields, not both")
                fields = request.to_json()  # a Request is checked by the same path as fields
            request = self.validate(fields, str(self._next_id))
            self._next_id += 1
            return self.accept(request)

    def accept(self, request: Request) -> str:
        """Accept a request that `validate()` returned (it is not checked again)."""
        with self.lock:
            try:
                self._scheduler.add_request(request)
            except ValueError as e:  # validated: only a duplicate id is left
                raise ShardspecError(str(e), path="id", hint="ids must be unique among unfinished requests") from None
            self._outputs.accept(request)
            return request.id

    def abort(self, request_id: str) -> bool:
        """Finish a request now as "abort" (its pages return); False if unknown or finished."""
        with self.lock:
            return self._scheduler.abort(request_id)

    def has_unfinished(self) -> bool:
        with self.lock:
            return self._scheduler.has_unfinished() or self._loop.in_flight

    # -- stepping ---------------------------------------------------------------------------

    def warmup(self) -> None:
        """Compile every token bucket now, with padding-only steps that change nothing; with
        `runtime.step_costs: auto`, time them too (step_costs.py)."""
        with self.lock:
            self._loop.warm_up(measure=self.plan.strategy.runtime.step_costs == "auto")

    def padding_step(self, stride: int) -> None:
        """Run one padding-only step of `stride` tokens per DP rank (it changes nothing) and
        wait for it: the warm-up's compile and timing, and benchmarks' replay of a schedule."""
        with self.lock:
            self._loop.padding_step(stride)

    def step(self) -> list[Output]:
        """Run one step; return the requests that finished."""
        with self.lock:
            result = self._loop.step(keep_tokens=self._outputs.follows_any)
            finished = result.finished + self._take(result)
            return [self._outputs.complete(o) for o in finished]

    def step_deltas(self) -> list[TokenDelta]:
        """Run one step; return every request's progress in it (see TokenDelta)."""
        with self.lock:
            result = self._loop.step(keep_tokens=True)
            self._outputs.open_texts(result.new_tokens, result.finished, self._scheduler.outputs_of)
            finished = result.finished + self._take(result)
            return self._outputs.deltas(result.new_tokens, finished)

    def _take(self, result: StepResult) -> list[Output]:
        """A step's tokens into the output layer (texts, logprobs, prompt logprobs); the requests
        a stop string ended in them, finished now as "stop"."""
        self._outputs.take_prompt(result.prompt_logprobs)
        new = result.new_tokens
        stopped = self._outputs.take(new) if new else []
        return self._loop.stop(stopped) if stopped else []

    # -- what outsiders read -----------------------------------------------------------------

    @property
    def metrics(self) -> Metrics:
        """The run's metrics so far (a value: later steps make new ones)."""
        with self.lock:
            return self._loop.metrics

    def stats(self) -> EngineStats:
        """A snapshot: what each DP rank holds now, and the metrics so far."""
        with self.lock:
            return EngineStats.of(self._scheduler.stats(), self.sizes.pages_per_rank, self._loop.metrics)

    # -- whole workloads --------------------------------------------------------------------

    def stream(self, requests: Iterable[Request | Mapping] = (), *, tokens: bool = False) -> Iterator:
        """Add `requests`, then yield every Output as it finishes until none is left; with
        `tokens=True`, every TokenDelta as steps produce them (a request's last carries its Output)."""
        for r in requests:
            self.add_request(r) if isinstance(r, Request) else self.add_request(**r)
        idle = 0
        while self.has_unfinished():
            steps = self.metrics.steps
            events = self.step_deltas() if tokens else self.step()
            yield from events
            stalled = self.metrics.steps == steps and not events and not self._loop.in_flight
            idle = idle + 1 if stalled else 0
            if idle > STALLED_STEPS:
                raise RuntimeError(f"the scheduler made no progress in {STALLED_STEPS} steps")

    def generate(
        self, requests: Iterable[Request | Mapping], on_output: Callable[[Output], None] | None = None
    ) -> list[Output]:
        """Serve `requests` to the end; outputs in input order. `on_output` sees each as it finishes."""
        requests = [  # each checked once, Requests by the same path as fields
            self.validate(r.to_json() if isinstance(r, Request) else r, str(i)) for i, r in enumerate(requests)
        ]
        order = {r.id: i for i, r in enumerate(requests)}
        if len(order) != len(requests):
            raise ShardspecError("request ids must be unique")
        for request in requests:
            self.accept(request)
        outputs = []
        for out in self.stream():
            outputs.append(out)
            if on_output is not None:
                on_output(out)
        outputs.sort(key=lambda o: order[o.id])
        assert len(outputs) == len(requests), "a request finished more or less than once"
        return outputs


def _checked_step(plan: ShardingPlan, graphdef, rank_attention, step: Step | None) -> Step:
    """The step to run: the shared one, or the one given, which must be this plan's program."""
    if step is None:
        return shared_step(plan, graphdef, rank_attention)
    if step.key != step_key(plan, graphdef, rank_attention):
        raise ShardspecError(
            "the step given is another program than this plan, model and attention compile to",
            path="step",
            hint="build it from the same plan and model: Step(plan, nnx.split(model)[0])",
        )
    return step


def _placed(plan: ShardingPlan, model) -> ServableModel:
    """The caller's model, checked against the protocol and the plan, in the plan's shardings."""
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
