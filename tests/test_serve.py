"""`shardspec serve` on 127.0.0.1, driven by the real `openai` client: the tokens `run` gives,
streamed deltas equal to the whole, stop strings, bad requests, 429, disconnects, a load
test, metrics and SIGTERM. One server process for the module (startup compiles)."""

import concurrent.futures
import json
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from shardspec import compile, load
from shardspec.runtime.engine import Engine
from shardspec.server.app import build_app
from shardspec.server.chat_template import load_chat_template

from helpers import SERVE_STRATEGY, chat_checkpoint, serving

pytestmark = pytest.mark.slow  # a real server or cluster per test module

STRATEGY = SERVE_STRATEGY
PROMPTS = ["Hello there", "One two three", "a b c d e f g"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return chat_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint):
    tmp = tmp_path_factory.mktemp("serve")
    (tmp / "s.yaml").write_text(json.dumps({"name": "serve-test", **STRATEGY}))
    args = ["serve", str(tmp / "s.yaml"), "--model", str(checkpoint), "--served-model-name", "tiny"]
    with serving(args, tmp / "server.log", timeout=180) as (base, proc):
        yield {"base": base, "proc": proc, "checkpoint": checkpoint}


@pytest.fixture(scope="module")
def reference(server):
    """What `shardspec run` computes for the same strategy and checkpoint: the Engine."""
    return Engine(compile(load({**STRATEGY, "model": str(server["checkpoint"])})))


def _client(server, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key="none", **kwargs)


def _greedy(reference, prompts, **fields):
    requests = [{"prompt": p, "max_tokens": 10, "ignore_eos": True, **fields} for p in prompts]
    return reference.generate(requests)


def test_completions_give_the_tokens_run_gives_and_streams_add_up(server, reference):
    client = _client(server)
    want = _greedy(reference, PROMPTS)
    got = client.completions.create(
        model="tiny", prompt=PROMPTS, max_tokens=10, temperature=0, extra_body={"ignore_eos": True}
    )
    assert [c.token_ids for c in got.choices] == [list(o.output_token_ids) for o in want]
    assert [c.text for c in got.choices] == [o.text for o in want]
    assert got.usage.completion_tokens == 30
    text, tokens, reasons = {}, {}, {}
    for chunk in client.completions.create(
        model="tiny", prompt=PROMPTS, max_tokens=10, temperature=0, stream=True, extra_body={"ignore_eos": True}
    ):
        for c in chunk.choices:
            text[c.index] = text.get(c.index, "") + c.text
            tokens[c.index] = tokens.get(c.index, []) + c.token_ids
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    assert [text[i] for i in range(3)] == [c.text for c in got.choices]
    assert [tokens[i] for i in range(3)] == [c.token_ids for c in got.choices]
    assert reasons == {0: "length", 1: "length", 2: "length"}


def test_chat_applies_the_template_and_streams_the_same_content(server, reference):
    client = _client(server)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    template = load_chat_template(str(server["checkpoint"]))
    ids = reference.tokenizer.encode(template.render(messages), add_special_tokens=False).ids
    want = reference.generate([{"prompt_token_ids": ids, "max_tokens": 8, "ignore_eos": True}])[0]
    got = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
    )
    assert got.choices[0].token_ids == list(want.output_token_ids)
    assert got.choices[0].message.content == want.text and got.choices[0].message.role == "assistant"
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=8, temperature=0, stream=True, extra_body={"ignore_eos": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_a_stop_string_ends_the_completion_before_it(server, reference):
    full = _greedy(reference, PROMPTS[1:2])[0]
    stop = full.text[2:4]
    got = _client(server).completions.create(
        model="tiny", prompt=PROMPTS[1], max_tokens=10, temperature=0, stop=stop, extra_body={"ignore_eos": True}
    )
    assert got.choices[0].finish_reason == "stop" and got.choices[0].text == full.text[: full.text.index(stop)]


@pytest.mark.parametrize(
    "fields, status, param",
    [
        ({"max_tokens": 0}, 400, "max_tokens"),
        ({"presence_penalty": "high"}, 400, "presence_penalty"),  # a known field of the wrong type
        ({"temperature": -1}, 400, "temperature"),
        ({"max_tokens": 100_000}, 400, "max_tokens"),  # beyond max_model_len
        ({"prompt": [10**7]}, 400, "prompt_token_ids"),  # outside the vocabulary
        ({"logprobs": 6}, 400, "logprobs"),  # OpenAI's completions allow at most 5
        ({"model": "gpt-9"}, 404, "model"),
    ],
)
def test_bad_requests_are_openai_errors_naming_the_field(server, fields, status, param):
    body = {"model": "tiny", "prompt": "hello", **fields}
    response = httpx.post(server["base"] + "/v1/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"]
    assert error["code"] == ("model_not_found" if status == 404 else None)


def test_the_openai_client_sees_its_error_types(server):
    client = _client(server, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="tiny", prompt="x", max_tokens=0)


def test_logprobs_are_the_engines_in_openai_shapes(server, reference):
    client = _client(server)
    want = _greedy(reference, PROMPTS[:1], logprobs=2)[0].logprobs
    got = client.completions.create(
        model="tiny", prompt=PROMPTS[0], max_tokens=10, temperature=0, logprobs=2, extra_body={"ignore_eos": True}
    )
    lp = got.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx([t.logprob for t in want], abs=1e-5)
    # OpenAI's shape is a dict by token text: two ids that decode alike (byte pieces) share a key.
    assert len(lp.top_logprobs) == 10 and all(1 <= len(top) <= 2 for top in lp.top_logprobs)
    streamed = []
    for chunk in client.completions.create(
        model="tiny",
        prompt=PROMPTS[0],
        max_tokens=10,
        temperature=0,
        logprobs=2,
        stream=True,
        extra_body={"ignore_eos": True},
    ):
        if chunk.choices[0].logprobs:
            streamed += chunk.choices[0].logprobs.token_logprobs
    assert streamed == pytest.approx(lp.token_logprobs, abs=1e-5)
    chat = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        extra_body={"ignore_eos": True},
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == 4 and all(len(c.top_logprobs) == 3 for c in content)
    assert all(c.top_logprobs[0].logprob >= c.logprob - 1e-6 for c in content)  # greedy: the top one


def _metric(server, name: str) -> float:
    text = httpx.get(server["base"] + "/metrics", timeout=10).text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def _wait_idle(server, timeout=30.0):
    deadline = time.monotonic() + timeout
    while _metric(server, "shardspec_requests_running") or _metric(server, "shardspec_requests_waiting"):
        assert time.monotonic() < deadline, "requests still running"
        time.sleep(0.2)


def test_a_client_that_disconnects_mid_stream_frees_its_request(server):
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 200, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server["base"] + "/v1/completions", json=body, timeout=30) as response:
        next(response.iter_lines())  # the first chunk: it runs
    _wait_idle(server)
    assert _metric(server, 'shardspec_rank_kv_usage{rank="0"}') == 0.0  # every page back


def test_a_full_waiting_queue_answers_429_with_retry_after(server):
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 60, "ignore_eos": True}
    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        responses = list(
            pool.map(lambda _: httpx.post(server["base"] + "/v1/completions", json=body, timeout=120), range(40))
        )
    full = [r for r in responses if r.status_code == 429]
    assert full and all(
        r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_error" for r in full
    )
    assert all(r.status_code in (200, 429) for r in responses)
    _wait_idle(server)


def test_hundreds_of_concurrent_streams_each_get_one_complete_response(server):
    client = _client(server, max_retries=30)  # the client backs off on 429 as Retry-After says

    def one(i):
        finishes, tokens = [], 0
        for chunk in client.completions.create(
            model="tiny",
            prompt=f"request {i}",
            max_tokens=1 + i % 7,
            stream=True,
            temperature=0,
            extra_body={"ignore_eos": True},
        ):
            for c in chunk.choices:
                tokens += len(c.token_ids)
                if c.finish_reason:
                    finishes.append(c.finish_reason)
        return finishes, tokens, 1 + i % 7

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(300)))
    assert all(finishes == ["length"] and tokens == want for finishes, tokens, want in results)
    _wait_idle(server)
    assert _metric(server, 'shardspec_rank_kv_usage{rank="0"}') == 0.0


def test_metrics_name_what_a_serving_dashboard_needs(server):
    text = httpx.get(server["base"] + "/metrics", timeout=10).text
    for name in (
        "shardspec_requests_running",
        "shardspec_requests_waiting",
        "shardspec_kv_usage_max",
        "shardspec_padding_efficiency",
        "shardspec_preemptions_total",
        "shardspec_generated_tokens_total",
        "shardspec_cached_prompt_tokens_total",
        "shardspec_computed_prompt_tokens_total",
        'shardspec_rank_cached_prompt_tokens_total{rank="0"}',
        "shardspec_time_to_first_token_seconds_bucket",
        "shardspec_time_per_output_token_seconds_bucket",
        "shardspec_e2e_request_latency_seconds_bucket",
        'shardspec_rank_requests_running{rank="0"}',
        "shardspec_recomputed_tokens_total",
        "shardspec_steps_total",
        "shardspec_step_tokens_total",
        "process_cpu_seconds_total",
        "shardspec_request_queue_time_seconds_bucket",
        "shardspec_request_prefill_time_seconds_bucket",
        "shardspec_request_decode_time_seconds_bucket",
    ):
        assert name in text, name
    models = _client(server).models.list()
    assert [m.id for m in models.data] == ["tiny"]


FIRST_TOKEN_PARTS = ("inbox_time", "queue_time", "prefill_time", "first_token_handover")


def test_the_first_tokens_time_is_the_sum_of_its_parts(server):
    """Submitted -> taken by the engine -> first scheduled -> first token sampled -> its
    handler has it: four histograms whose sums add up to time_to_first_token's."""
    _wait_idle(server)

    def sums():
        parts = {p: _metric(server, f"shardspec_request_{p}_seconds_sum") for p in FIRST_TOKEN_PARTS}
        counts = {p: _metric(server, f"shardspec_request_{p}_seconds_count") for p in FIRST_TOKEN_PARTS}
        ttft = _metric(server, "shardspec_time_to_first_token_seconds_sum")
        return parts, counts, ttft, _metric(server, "shardspec_time_to_first_token_seconds_count")

    before = sums()
    client = _client(server)
    for i in range(3):
        client.completions.create(model="tiny", prompt=f"parts {i}", max_tokens=4, extra_body={"ignore_eos": True})
    after = sums()
    assert after[3] - before[3] == 3
    assert all(after[1][p] - before[1][p] == 3 for p in FIRST_TOKEN_PARTS)
    added = sum(after[0][p] - before[0][p] for p in FIRST_TOKEN_PARTS)
    assert added == pytest.approx(after[2] - before[2], abs=1e-6) and added > 0


def test_sigterm_ends_streams_and_exits_0(server):
    proc = server["proc"]
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 240, "stream": True, "ignore_eos": True}
    lines = []
    with httpx.stream("POST", server["base"] + "/v1/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if not lines:
                proc.send_signal(signal.SIGTERM)
            lines.append(line)
    assert [line for line in lines if line][-1] == "data: [DONE]"  # finished or aborted, never cut
    assert proc.wait(timeout=30) == 0


def test_chat_without_a_template_is_a_400_saying_so():
    engine = Engine(compile(load({"model": "llama3-tiny", "devices": 1})))  # a preset: no tokenizer, no template
    client = TestClient(build_app(engine, "tiny", warmup=False))  # no lifespan: nothing is served
    response = client.post(
        "/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages" and "no chat template" in response.json()["error"]["message"]


@pytest.fixture(scope="module")
def paged_engine(checkpoint):
    """An engine whose KV pages bind before the model does: one rank's 4 pages of 16 hold
    4 * 16 + 1 = 65 tokens (the last sampled one is never cached) of the 256 the model allows."""
    engine = Engine(compile(load({**STRATEGY, "model": str(checkpoint), "kv_cache": {"num_pages": 4}})))
    assert engine.sizes.max_request_len == 65 < engine.sizes.model_max_len
    return engine


def test_models_advertise_the_longest_request_served(paged_engine):
    client = TestClient(build_app(paged_engine, "tiny", warmup=False))  # no lifespan: nothing is served
    [card] = client.get("/v1/models").json()["data"]
    assert card["max_model_len"] == paged_engine.sizes.max_request_len


def test_chat_without_max_tokens_fills_the_room_the_pages_leave(paged_engine):
    chat = {"model": "tiny", "temperature": 0, "ignore_eos": True}
    with TestClient(build_app(paged_engine, "tiny", warmup=False)) as client:
        response = client.post("/v1/chat/completions", json={**chat, "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["total_tokens"] == paged_engine.sizes.max_request_len
        too_long = [{"role": "user", "content": "a " * 100}]  # no room left: the request check's 400, not a crash
        response = client.post("/v1/chat/completions", json={**chat, "messages": too_long})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "max_tokens" and "shorten the prompt" in error["message"]
