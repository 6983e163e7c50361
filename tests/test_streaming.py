"""Token streaming and stop strings in the engine, and requests added from another thread."""

import asyncio
import threading

import pytest

from shardspec import ShardspecError, compile, load
from shardspec.runtime.engine import Engine, TokenDelta
from shardspec.runtime.text_stream import TextStream
from shardspec.server.streaming import backlog
from shardspec.tokenizer import load_tokenizer

from conftest import ROOT
from helpers import ONE_DEVICE, SERVING, dense_forward

LLAMA = ROOT / "tests" / "fixtures" / "hf" / "llama"  # a tiny random checkpoint with a tokenizer
PROMPTS = ["Hello there", "One two", "a b c d e f g h i j k l m n o p q r s t u v w x y z"]


@pytest.fixture(scope="module")
def engine():
    strategy = load({"model": str(LLAMA), "devices": 1}, overrides=SERVING)
    return Engine(compile(strategy))


def _requests(tag: str, **fields):
    return [
        {"id": f"{tag}{i}", "prompt": p, "max_tokens": 12, "ignore_eos": True, **fields} for i, p in enumerate(PROMPTS)
    ]


def test_a_requests_deltas_joined_are_its_whole_output(engine):
    joined = {}
    for delta in engine.stream(_requests("j", logprobs=1), tokens=True):
        joined[delta.id] = joined[delta.id].then(delta) if delta.id in joined else delta
    assert sorted(joined) == ["j0", "j1", "j2"]
    for whole in joined.values():
        out = whole.output
        assert (whole.token_ids, whole.text, whole.logprobs) == (out.output_token_ids, out.text, out.logprobs)


def test_a_readers_backlog_is_one_delta_a_request_up_to_a_failure():
    a1, b1, a2 = TokenDelta("a", (1,), "x"), TokenDelta("b", (5,), "p"), TokenDelta("a", (2, 3), "yz")
    failure = RuntimeError("the engine failed")

    async def read(*items):
        queue = asyncio.Queue()
        for item in items[1:]:
            queue.put_nowait(item)
        return backlog(queue, items[0]), queue.qsize()

    joined, left = asyncio.run(read(a1, b1, a2))
    assert joined == [TokenDelta("a", (1, 2, 3), "xyz"), b1] and left == 0
    joined, left = asyncio.run(read(a1, failure, b1))
    assert joined == [a1, failure] and left == 1  # nothing after a failure is read


def test_deltas_concatenate_to_the_outputs_generate_gives(engine):
    want = {o.id[1:]: o for o in engine.generate(_requests("g"))}
    tokens, text, finals = {}, {}, {}
    for delta in engine.stream(_requests("s"), tokens=True):
        assert delta.id not in finals, "a delta after the request finished"
        tokens[delta.id] = tokens.get(delta.id, ()) + delta.token_ids
        text[delta.id] = text.get(delta.id, "") + delta.text
        if delta.output is not None:
            finals[delta.id] = delta.output
    assert sorted(finals) == ["s0", "s1", "s2"]
    for rid, out in finals.items():
        assert tokens[rid] == out.output_token_ids == want[rid[1:]].output_token_ids
        assert text[rid] == out.text


def test_a_stop_string_ends_the_request_before_it(engine):
    full = engine.generate(_requests("f"))[1]
    stop = full.text[2:4]
    assert len(stop) == 2 and stop not in full.text[:3]
    out = engine.generate([{**_requests("x")[1], "stop": [stop, "never seen"]}])[0]
    assert out.finish_reason == "stop" and out.text == full.text[: full.text.index(stop)]
    assert out.output_token_ids == full.output_token_ids[: len(out.output_token_ids)]
    streamed = list(engine.stream([{**_requests("y")[1], "stop": stop}], tokens=True))
    assert "".join(d.text for d in streamed) == out.text and streamed[-1].output.finish_reason == "stop"


def test_text_stream_holds_back_a_possible_stop_string_and_incomplete_characters():
    tokenizer = load_tokenizer(str(LLAMA))
    ids = tokenizer.encode("hello world, hello moon").ids
    stream = TextStream(tokenizer, stop=("moon",))
    pieces = []
    for token in ids:
        stream.push((token,))
        pieces.append(stream.take())
        assert not any("moo" in p for p in pieces)
    pieces.append(stream.take(final=True))
    assert stream.stopped and "".join(pieces) == stream.text and not stream.text.endswith("moon")


def test_stop_strings_need_a_tokenizer():
    engine = Engine(compile(load({"model": "llama3-tiny"}, overrides={**SERVING, **ONE_DEVICE})))
    with pytest.raises(ShardspecError, match="stop strings need a model with a tokenizer"):
        engine.add_request(prompt_token_ids=[1, 2], stop=["x"])


def test_requests_added_from_another_thread_while_the_engine_streams(engine):
    engine.add_request(id="first", prompt="Hello there", max_tokens=24, ignore_eos=True)
    added = threading.Event()

    def add_more():
        for i in range(6):
            engine.add_request(id=f"t{i}", prompt="One two", max_tokens=4 + i, ignore_eos=True)
        engine.abort("t5")
        added.set()

    finished = []
    thread = threading.Thread(target=add_more)
    for delta in engine.stream(tokens=True):
        if not thread.is_alive() and not added.is_set():
            thread.start()
        if delta.output is not None:
            finished.append(delta.output)
    thread.join()
    while engine.has_unfinished():  # what the thread added after the stream ended
        finished += [d.output for d in engine.step_deltas() if d.output is not None]
    by_id = {o.id: o for o in finished}
    assert len(by_id) == len(finished) == 7  # each exactly once
    assert by_id["t5"].finish_reason == "abort"
    assert [len(by_id[f"t{i}"].output_token_ids) for i in range(5)] == [4, 5, 6, 7, 8]


@pytest.mark.parametrize("async_scheduling", [True, False])
def test_an_abort_is_delivered_by_the_step_loop(async_scheduling):
    strategy = load(
        {"model": "llama3-tiny", "runtime": {"async_scheduling": async_scheduling}}, {**SERVING, **ONE_DEVICE}
    )
    engine = Engine(compile(strategy))
    engine.add_request(id="a", prompt_token_ids=[1, 2, 3], max_tokens=8)
    engine.add_request(id="b", prompt_token_ids=[4, 5], max_tokens=8)
    engine.abort("a")  # before any step
    outputs = engine.step()
    engine.abort("b")  # after the first step
    while engine.has_unfinished():
        outputs += engine.step()
    assert sorted((o.id, o.finish_reason) for o in outputs) == [("a", "abort"), ("b", "abort")]


def test_logprobs_are_the_log_softmax_of_the_reference_logits():
    import jax
    import numpy as np

    from shardspec import apply

    plan = compile(load(ROOT / "strategies" / "attention_dp.yaml", overrides=SERVING))  # 4 ranks, sharded vocab
    engine = Engine(plan)
    rng = np.random.default_rng(0)
    requests = [
        {"prompt_token_ids": rng.integers(0, 512, n).tolist(), "max_tokens": 6, "ignore_eos": True, "logprobs": k}
        for n, k in [(5, 3), (17, 0), (9, 20)]
    ] + [{"prompt_token_ids": [1, 2, 3], "max_tokens": 4, "ignore_eos": True}]  # asks for none
    outputs = engine.generate(requests)
    assert outputs[3].logprobs is None
    reference = apply(plan)
    for request, out in zip(requests[:3], outputs[:3]):
        tokens = list(request["prompt_token_ids"]) + list(out.output_token_ids)
        logits = dense_forward(reference, [tokens])[0, len(request["prompt_token_ids"]) - 1 : -1]
        want = np.asarray(jax.nn.log_softmax(logits.astype(np.float32), axis=-1))
        assert [t.token_id for t in out.logprobs] == list(out.output_token_ids)
        for i, t in enumerate(out.logprobs):
            assert abs(t.logprob - want[i, t.token_id]) < 1e-4
            assert len(t.top) == request["logprobs"]
            assert [tok for tok, _ in t.top] == np.argsort(-want[i])[: len(t.top)].tolist()
            np.testing.assert_allclose([lp for _, lp in t.top], np.sort(want[i])[::-1][: len(t.top)], atol=1e-4)
    streamed = [d for d in engine.stream([dict(requests[0], id="s")], tokens=True)]
    alone = sum((d.logprobs or () for d in streamed), ())  # another batch: the same within float rounding
    assert [t.token_id for t in alone] == [t.token_id for t in outputs[0].logprobs]
    np.testing.assert_allclose([t.logprob for t in alone], [t.logprob for t in outputs[0].logprobs], atol=1e-5)


def test_streaming_begun_mid_request_still_gives_its_whole_text():
    strategy = load({"model": str(LLAMA), "devices": 1}, overrides=SERVING)
    engine = Engine(compile(strategy))
    want = engine.generate([{"prompt": PROMPTS[1], "max_tokens": 12, "ignore_eos": True}])[0]
    engine.add_request(id="m", prompt=PROMPTS[1], max_tokens=12, ignore_eos=True)
    for _ in range(4):  # some tokens come out before anyone streams
        engine.step()
    deltas = list(engine.stream(tokens=True))
    assert deltas[-1].output.output_token_ids == want.output_token_ids
    assert deltas[-1].output.text == want.text
    assert "".join(d.text for d in deltas) == want.text  # the earlier tokens' text comes in the first delta
