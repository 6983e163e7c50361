"""Worker side: one engine case's ops played on a shardspec Engine, drained, and its invariants checked:
each accepted request finished once, no KV page leaked, outputs that match their requests."""

import collections

from .config import ENGINE_CONFIGS, ENGINE_STEP_CAP
from .show import brief
from .traces import exc_summary

SAMPLING = ("temperature", "top_k", "top_p", "seed")  # the SamplingParams attributes of a request body


def run_engine(worker, case: dict) -> dict:
    """The case on `worker`'s (a Worker's) engine; an engine in a suspect state is dropped for a fresh one."""
    from shardspec.runtime.request import Request, SamplingParams

    name = case["engine"]
    engine = worker.engine(name)
    deltas = ENGINE_CONFIGS[name][3] == "deltas"
    vocab = engine.plan.model.geometry.vocab_size
    play = _Playback(engine, deltas, worker.ShardspecError, Request, SamplingParams)
    res = {"kind": "engine", "engine": name}
    try:
        play.run(case["ops"])
    except Exception as exc:
        worker.engines.pop(name, None)  # its state is suspect: a fresh one next time
        res["exc"] = exc_summary(exc, worker.repo)
        res["user_errors"] = play.user_errors
        return res
    res["user_errors"] = play.user_errors
    res["lost"] = _lost(play.accepted, play.finished, engine.has_unfinished(), ENGINE_STEP_CAP)
    res["leaked"] = _leaked(engine)
    res["violations"] = _engine_violations(play.finished, play.asked, play.streamed if deltas else None, vocab)
    if res["lost"] or res["leaked"] or res["violations"]:
        worker.engines.pop(name, None)
    return res


class _Playback:
    """The ops of one case played on an engine, and what came back: acceptances, outputs, deltas, user errors."""

    def __init__(self, engine, deltas: bool, ShardspecError, Request, SamplingParams):
        self.engine, self.deltas = engine, deltas
        self.ShardspecError, self.Request, self.SamplingParams = ShardspecError, Request, SamplingParams
        self.accepted: collections.Counter = collections.Counter()
        self.finished: collections.defaultdict = collections.defaultdict(list)
        self.asked = collections.defaultdict(list)  # id -> per acceptance, in order: max_tokens, prompt, logprobs
        self.streamed: collections.defaultdict = collections.defaultdict(lambda: ([], []))
        self.user_errors: list[dict] = []

    def run(self, ops: list[dict]) -> None:
        """Play the ops, then step until nothing is unfinished (at most ENGINE_STEP_CAP steps)."""
        for op in ops:
            if op["op"] in ("add", "add_fields"):
                self.add(op)
            elif op["op"] == "abort":
                self.engine.abort(op["id"])
            else:
                for _ in range(op["n"]):
                    self.step()
        steps = 0
        while self.engine.has_unfinished() and steps < ENGINE_STEP_CAP:
            self.step()
            steps += 1

    def add(self, op: dict) -> None:
        body = op.get("request") or op.get("fields")
        try:
            if op["op"] == "add":
                rid = self.engine.add_request(_request(self.Request, self.SamplingParams, body))
            else:
                rid = self.engine.add_request(**body)
        except self.ShardspecError as e:
            self.user_errors.append({"line": e.format()[:400], "located": all(p.path or p.file for p in e.problems)})
            return
        self.accepted[rid] += 1
        self.asked[rid].append(
            {
                "max_tokens": body.get("max_tokens", self.Request.__dataclass_fields__["max_tokens"].default),
                "prompt": body.get("prompt_token_ids"),
                "logprobs": body.get("logprobs"),
            }
        )

    def step(self) -> None:
        for ev in self.engine.step_deltas() if self.deltas else self.engine.step():
            out = ev.output if self.deltas else ev
            if self.deltas:
                self.streamed[ev.id][0].extend(ev.token_ids)
                self.streamed[ev.id][1].append(ev.text or "")
            if out is not None:
                self.finished[out.id].append(out)


def _request(Request, SamplingParams, body: dict):
    """A Request built as is from JSON attributes (no validation: the engine's add_request checks)."""
    fields = dict(body)
    sampling = SamplingParams(**{k: fields.pop(k) for k in SAMPLING if k in fields})
    rid = fields.pop("id")
    prompt = tuple(fields.pop("prompt_token_ids"))
    for key in ("stop_token_ids", "stop"):
        if key in fields:
            fields[key] = tuple(fields[key])
    return Request(rid, prompt, sampling=sampling, **fields)


def _lost(accepted, finished, unfinished: bool, cap: int) -> list[str]:
    out = []
    if unfinished:
        out.append(f"still unfinished after {cap} drain steps")
    for rid, n in accepted.items():
        got = len(finished.get(rid, []))
        if got != n:
            out.append(f"{brief(rid, 30)} accepted {n}x, finished {got}x")
    out += [f"output for {brief(rid, 30)}, never accepted" for rid in finished if rid not in accepted]
    return out[:10]


def _leaked(engine) -> list[str]:
    stats = engine.stats()
    return [f"rank {r}: {used} of {stats.pages_per_rank} pages" for r, used in enumerate(stats.pages_used) if used]


def _engine_violations(finished, asked, streamed, vocab: int) -> list[str]:
    """Output invariants: reasons, token range, lengths, logprobs, and streamed deltas = outputs.
    An id used again after it finished has one entry in `asked` per acceptance, in order."""
    out = []
    for rid, outs in finished.items():
        for k, o in enumerate(outs):
            want = asked[rid][k] if k < len(asked.get(rid, ())) else {}
            tokens = o.output_token_ids
            limit = want.get("max_tokens")
            if o.finish_reason not in ("stop", "length", "abort"):
                out.append(f"finish_reason {o.finish_reason!r}")
            if any(not (0 <= t < vocab) for t in tokens):
                out.append("an output token outside the vocabulary")
            if isinstance(limit, int) and len(tokens) > limit:
                out.append("more tokens than max_tokens")
            if o.finish_reason == "length" and isinstance(limit, int) and len(tokens) != limit:
                out.append("finish_reason length with fewer than max_tokens tokens")
            if want.get("prompt") is not None and list(o.prompt_token_ids) != list(want["prompt"]):
                out.append("prompt_token_ids differ from the request's")
            if isinstance(want.get("logprobs"), int) and o.logprobs is not None and len(o.logprobs) != len(tokens):
                out.append("logprobs count != output token count")
            if streamed is not None and len(outs) == 1:
                ids, texts = streamed.get(rid, ([], []))
                if tuple(ids) != tuple(tokens):
                    out.append("streamed token deltas != output tokens")
                if o.text is not None and "".join(texts) != o.text:
                    out.append("streamed text deltas != output text")
    return sorted(set(out))
