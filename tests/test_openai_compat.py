"""What the clients people point at an OpenAI server send: vLLM's benchmark fields, the
`openai` client's common fields, chat content parts and tool turns, unknown fields
(ignored and named, or refused with --strict-fields), and vLLM's tokenizer routes.

The app runs in-process (FastAPI's TestClient, the real `openai` client on top of it);
test_serve.py drives a real server process.
"""

import json
import re

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from shardspec import compile, load
from shardspec.runtime.engine import Engine
from shardspec.server.app import build_app
from shardspec.server.routes import IGNORED_HEADER

from helpers import SERVE_STRATEGY, chat_checkpoint

GREEDY = {"model": "tiny", "max_tokens": 6, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return chat_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="module")
def engine(checkpoint):
    """The served engine: its thread steps it while `client` lives, so tests only read it."""
    return Engine(compile(load({**SERVE_STRATEGY, "model": str(checkpoint)})))


@pytest.fixture(scope="module")
def reference(checkpoint):
    """An engine of its own for expected outputs (an equal plan: the same compiled step)."""
    return Engine(compile(load({**SERVE_STRATEGY, "model": str(checkpoint)})))


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(build_app(engine, "tiny", warmup=False)) as c:
        yield c


@pytest.fixture(scope="module")
def strict(engine):
    """No lifespan (one engine has one engine thread, the `client`'s): a refusal needs none."""
    return TestClient(build_app(engine, "tiny", warmup=False, strict_fields=True))


def _tokens(response: httpx.Response) -> list[list[int]]:
    assert response.status_code == 200, response.text
    return [c["token_ids"] for c in response.json()["choices"]]


def _error(response: httpx.Response, param: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    return error["message"]


def test_vllm_benchmark_fields_are_served(client):
    # What `vllm bench serve` sends with every request (completions and chat), streamed.
    bench = {"repetition_penalty": 1.0, "logprobs": None, "stream": True, "stream_options": {"include_usage": True}}
    bench |= {"presence_penalty": None, "min_tokens": None, "prompt_logprobs": None}  # null: as left out
    for route, prompt in (
        ("/v1/completions", {"prompt": "Hello there"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hello"}]}),
    ):
        body = {**GREEDY, **prompt, **bench}
        if "messages" in prompt:
            body.pop("logprobs")  # chat's logprobs is a bool; the benchmark sends it for completions only
        response = client.post(route, json=body)
        assert response.status_code == 200, response.text
        assert response.text.rstrip().endswith("data: [DONE]") and '"usage"' in response.text
        assert IGNORED_HEADER not in response.headers  # every field was known


def test_every_answer_has_its_own_id_which_each_of_its_chunks_carries(client):
    ids = [client.post("/v1/completions", json={**GREEDY, "prompt": "Hi"}).json()["id"] for _ in range(2)]
    chat = {**GREEDY, "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    lines = client.post("/v1/chat/completions", json=chat).text.split("\n\n")
    streamed = {json.loads(line[6:])["id"] for line in lines if line.startswith("data: {")}
    assert len(streamed) == 1 and len(set(ids)) == 2
    assert all(re.fullmatch(r"cmpl-[0-9a-f]{24}", i) for i in ids) and re.fullmatch(r"chatcmpl-[0-9a-f]{24}", *streamed)


def test_unknown_fields_are_ignored_and_named_in_a_header(client):
    plain = client.post("/v1/completions", json={**GREEDY, "prompt": "One two"})
    extra = {"metadata": {"run": "7"}, "reasoning_effort": "low", "colour": "red"}
    response = client.post("/v1/completions", json={**GREEDY, "prompt": "One two", **extra})
    assert _tokens(response) == _tokens(plain)
    assert response.headers[IGNORED_HEADER] == "metadata, reasoning_effort, colour"
    chat = {**GREEDY, "messages": [{"role": "user", "content": "hi", "refusal": None}], "store": False}
    response = client.post("/v1/chat/completions", json=chat)
    assert response.status_code == 200 and response.headers[IGNORED_HEADER] == "store, messages.0.refusal"


def test_strict_fields_refuses_an_unknown_field_by_name(strict):
    message = _error(strict.post("/v1/completions", json={**GREEDY, "prompt": "x", "colour": "red"}), "colour")
    assert "unknown field" in message and "--strict-fields" in message


@pytest.mark.parametrize(
    "field, value, param",
    [
        ("presence_penalty", "high", "presence_penalty"),
        ("n", 0, "n"),
        ("logit_bias", [1, 2], "logit_bias"),
        ("response_format", {"type": "xml"}, "response_format.type"),
    ],
)
def test_a_known_field_of_the_wrong_type_is_a_400_naming_it(client, field, value, param):
    _error(client.post("/v1/completions", json={**GREEDY, "prompt": "x", field: value}), param)


def test_the_openai_clients_neutral_values_are_served(client, reference):
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=client)
    neutral = dict(n=1, presence_penalty=0.0, frequency_penalty=0.0, logit_bias={}, best_of=1, user="u")
    got = sdk.completions.create(model="tiny", prompt="Hello there", max_tokens=6, temperature=0, **neutral)
    want = reference.generate([{"prompt": "Hello there", "max_tokens": 6}])[0]
    assert got.choices[0].token_ids == list(want.output_token_ids)
    chat = sdk.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=4,
        temperature=0,
        response_format={"type": "text"},
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        tool_choice="none",
        parallel_tool_calls=False,
        presence_penalty=0.0,
        metadata={"k": "v"},
    )
    assert chat.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    "field, value",
    [
        ("suffix", "end"),
    ],
)
def test_what_is_not_supported_yet_is_a_400_never_a_different_answer(client, field, value):
    message = _error(client.post("/v1/completions", json={**GREEDY, "prompt": "x", field: value}), field)
    assert "not supported yet" in message


@pytest.mark.parametrize(
    "fields, param, words",
    [
        ({"best_of": 2, "n": 3}, "best_of", "less than n"),
        ({"best_of": 3, "stream": True}, "best_of", "cannot stream"),
        ({"echo": True, "logprobs": 1, "stream": True}, "echo", "not supported when streaming"),
        ({"logit_bias": {"99999999": 1}}, "logit_bias.99999999", "outside the vocabulary"),
        ({"logit_bias": {"x": 1}}, "logit_bias", "does not match"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5", "maximum"),
        ({"min_tokens": 9}, "min_tokens", "more than max_tokens"),
        ({"prompt_logprobs": 21}, "prompt_logprobs", "less than or equal to 20"),
    ],
)
def test_fields_asking_for_what_cannot_be_served_are_400s_naming_them(client, fields, param, words):
    assert words in _error(client.post("/v1/completions", json={**GREEDY, "prompt": "x", **fields}), param)


def test_penalties_logit_bias_and_min_tokens_reach_the_engine(client, reference):
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=client)
    rules = {"presence_penalty": 0.8, "frequency_penalty": 0.5, "logit_bias": {"17": 6.0}}
    extra = {"repetition_penalty": 1.3, "min_tokens": 4, "ignore_eos": True}  # vLLM's extensions
    got = sdk.completions.create(
        model="tiny", prompt="Hello there", max_tokens=8, temperature=0, **rules, extra_body=extra
    )
    want = reference.generate([{"prompt": "Hello there", "max_tokens": 8, **rules, **extra}])[0]
    plain = reference.generate([{"prompt": "Hello there", "max_tokens": 8, "ignore_eos": True}])[0]
    assert got.choices[0].token_ids == list(want.output_token_ids) != list(plain.output_token_ids)
    chat = sdk.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0, logit_bias={"17": 100}
    )
    assert chat.choices[0].token_ids == [17] * 5


def test_lm_evals_loglikelihood_requests_get_every_prompt_tokens_logprob(client, engine):
    """lm-eval's local-completions scoring request: batched token-id prompts, max_tokens 1,
    echo, logprobs 1; it sums token_logprobs[context:-1] and checks each against top_logprobs."""
    import jax
    import numpy as np

    from shardspec import apply

    from helpers import dense_forward

    prompts = [[1, 15, 27, 99, 4, 4, 60], [1, 8, 200, 31]]
    body = {"model": "tiny", "prompt": prompts, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    reference = apply(engine.plan)
    for prompt, choice in zip(prompts, response.json()["choices"]):
        lp = choice["logprobs"]
        assert (
            len(lp["tokens"]) == len(prompt) + 1 and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        )
        tokens = prompt + choice["token_ids"]
        want = np.asarray(jax.nn.log_softmax(dense_forward(reference, [tokens])[0].astype(np.float32), axis=-1))
        expected = [want[i - 1, tokens[i]] for i in range(1, len(tokens))]
        np.testing.assert_allclose(lp["token_logprobs"][1:], expected, atol=1e-4)
        for i, top in enumerate(lp["top_logprobs"][1:], 1):  # the most likely token there
            assert len(top) == 1 and abs(max(top.values()) - want[i - 1].max()) < 1e-4
        context = 3  # lm-eval's parse: the continuation's logprob, and whether it was greedy
        continuation = sum(lp["token_logprobs"][context:-1])
        assert abs(continuation - sum(expected[context - 1 : -1])) < 1e-3
        assert choice["text"].startswith(engine.tokenizer.decode(prompt, skip_special_tokens=False))


def test_prompt_logprobs_and_echo_as_vllm_answers_them(client, reference):
    body = {**GREEDY, "prompt": "Hello there", "prompt_logprobs": 2}
    choice = client.post("/v1/completions", json=body).json()["choices"][0]
    want = reference.generate([{"prompt": "Hello there", "max_tokens": 6, "prompt_logprobs": 2}])[0]
    assert choice["prompt_logprobs"][0] is None and choice["logprobs"] is None
    for entry, got in zip(want.prompt_logprobs[1:], choice["prompt_logprobs"][1:]):
        assert abs(got[str(entry.token_id)]["logprob"] - entry.logprob) < 1e-5
        assert [v["rank"] for k, v in got.items() if int(k) in dict(entry.top)] == [1, 2]
    chat = {**GREEDY, "messages": [{"role": "user", "content": "Hi"}], "prompt_logprobs": 0}
    chat_choice = client.post("/v1/chat/completions", json=chat).json()["choices"][0]
    assert chat_choice["prompt_logprobs"][0] is None and all(len(e) == 1 for e in chat_choice["prompt_logprobs"][1:])
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=client)
    echoed = sdk.completions.create(model="tiny", prompt="Hello there", max_tokens=6, temperature=0, echo=True)
    assert echoed.choices[0].text == "Hello there" + want.text
    streamed = client.post("/v1/completions", json={**GREEDY, "prompt": "Hello there", "echo": True, "stream": True})
    assert json.loads(streamed.text.split("\n\n")[0][6:])["choices"][0]["text"] == "Hello there"
    streamed = client.post("/v1/completions", json={**body, "stream": True}).text.split("\n\n")
    chunks = [json.loads(c[6:]) for c in streamed if c.startswith("data: {")]
    last = next(c for c in chunks if c["choices"][0]["finish_reason"])  # the prompt's, at the end
    assert last["choices"][0]["prompt_logprobs"] == choice["prompt_logprobs"]


def test_best_of_keeps_the_n_most_likely_of_its_samples(client, reference):
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=client)
    got = sdk.completions.create(
        model="tiny", prompt="Hello there", max_tokens=6, n=2, best_of=4, temperature=1.0, seed=3,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    response = got.model_dump()
    fields = {"prompt": "Hello there", "max_tokens": 6, "temperature": 1.0, "ignore_eos": True, "logprobs": 0}
    drawn = reference.generate([{**fields, "seed": 3 + j} for j in range(4)])
    ranked = sorted(drawn, key=lambda o: -sum(t.logprob for t in o.logprobs))
    assert [c["token_ids"] for c in response["choices"]] == [list(o.output_token_ids) for o in ranked[:2]]
    assert [c["index"] for c in response["choices"]] == [0, 1] and response["choices"][0]["logprobs"] is None
    assert response["usage"]["completion_tokens"] == 24  # every sample drawn was generated


def test_n_samples_a_prompt_are_seeded_requests_and_usage_counts_the_prompt_once(client, reference):
    body = {**GREEDY, "prompt": ["Hello there", "One two"], "n": 3, "temperature": 0.9, "seed": 7, "best_of": 3}
    response = client.post("/v1/completions", json=body).json()
    assert [c["index"] for c in response["choices"]] == list(range(6))  # prompt i, sample j: i × 3 + j
    fields = {"max_tokens": 6, "temperature": 0.9, "ignore_eos": True}
    want = reference.generate(
        [{"prompt": p, "seed": 7 + j, **fields} for p in ("Hello there", "One two") for j in range(3)]
    )
    assert [c["token_ids"] for c in response["choices"]] == [list(o.output_token_ids) for o in want]
    assert len({tuple(c["token_ids"]) for c in response["choices"][:3]}) > 1  # the samples differ
    prompt_tokens = sum(len(o.prompt_token_ids) for o in want[::3])
    assert response["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 36,
        "total_tokens": prompt_tokens + 36,
    }
    chat = {**GREEDY, "messages": [{"role": "user", "content": "Hi"}], "n": 2, "stream": True}
    streamed = client.post("/v1/chat/completions", json=chat).text.split("\n\n")
    indexes = {c["index"] for line in streamed if line.startswith("data: {") for c in json.loads(line[6:])["choices"]}
    assert indexes == {0, 1}


def test_chat_content_parts_are_joined_and_tool_turns_reach_the_template(client):
    whole = client.post("/v1/chat/completions", json={**GREEDY, "messages": [{"role": "user", "content": "Hello"}]})
    parts = [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]
    split = client.post("/v1/chat/completions", json={**GREEDY, "messages": [{"role": "user", "content": parts}]})
    assert _tokens(split) == _tokens(whole)
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    turns = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    assert client.post("/v1/chat/completions", json={**GREEDY, "messages": turns}).status_code == 200


@pytest.mark.parametrize(
    "message, param",
    [
        ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, "messages.0.content.0.type"),
        ({"role": "user", "content": None}, "messages.0.content"),
    ],
)
def test_chat_content_that_cannot_be_served_is_a_400_naming_it(client, message, param):
    _error(client.post("/v1/chat/completions", json={**GREEDY, "messages": [message]}), param)


def test_tokenizer_routes_agree_with_what_the_server_runs(client, engine):
    ids = client.post("/tokenize", json={"prompt": "Hello there"}).json()
    assert ids["tokens"] == engine.tokenizer.encode("Hello there").ids and ids["count"] == len(ids["tokens"])
    assert ids["max_model_len"] == engine.sizes.max_request_len
    text = client.post("/detokenize", json={"tokens": ids["tokens"]}).json()["prompt"]
    assert text == engine.tokenizer.decode(ids["tokens"], skip_special_tokens=False)
    messages = [{"role": "user", "content": "Hello"}]
    chat_ids = client.post("/tokenize", json={"messages": messages}).json()["count"]
    served = client.post("/v1/chat/completions", json={**GREEDY, "messages": messages}).json()
    assert served["usage"]["prompt_tokens"] == chat_ids
    info = client.get("/tokenizer_info").json()
    assert info["eos_token"] == "</s>" and info["eos_token_ids"] == list(engine.plan.model.eos_token_ids)
    _error(client.post("/detokenize", json={"tokens": [10**6]}), "tokens")


def test_a_model_without_a_tokenizer_says_so_on_the_tokenizer_routes():
    engine = Engine(compile(load({"model": "llama3-tiny", "devices": 1})))
    client = TestClient(build_app(engine, "tiny", warmup=False))  # no lifespan: nothing is served
    assert "no tokenizer" in _error(client.post("/tokenize", json={"prompt": "hi"}), "model")


SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999}, "colour": {"enum": ["red", "green"]}},
    "required": ["id", "colour"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "weather", "parameters": SCHEMA}}
TIME = {"type": "function", "function": {"name": "time", "parameters": {"type": "object", "properties": {}}}}


def test_response_format_json_schema_answers_parse_and_validate(client):
    import jsonschema

    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=client)
    response_format = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}}
    for seed in range(4):
        got = sdk.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "A thing?"}], max_tokens=40, temperature=1.0,
            seed=seed, response_format=response_format,
        )  # fmt: skip
        assert got.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(got.choices[0].message.content), SCHEMA)
    choice = {**GREEDY, "prompt": "Yes or no?", "max_tokens": 8, "structured_outputs": {"choice": ["yes", "no"]}}
    assert client.post("/v1/completions", json=choice).json()["choices"][0]["text"] in ("yes", "no")
    both = {**choice, "response_format": {"type": "json_object"}}
    assert "not both" in _error(client.post("/v1/completions", json=both), "structured_outputs")
    no_schema = {**GREEDY, "prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"name": "t"}}}
    _error(client.post("/v1/completions", json=no_schema), "response_format.json_schema.schema")


def test_named_and_required_tool_choices_answer_with_tool_calls(client):
    import jsonschema

    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=client)
    messages = [{"role": "user", "content": "Weather?"}]
    named = {"type": "function", "function": {"name": "weather"}}
    got = sdk.chat.completions.create(
        model="tiny", messages=messages, max_tokens=40, temperature=0, tools=[WEATHER, TIME], tool_choice=named
    )
    choice = got.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), SCHEMA)
    plain = sdk.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0)
    assert got.usage.prompt_tokens > plain.usage.prompt_tokens  # the tools reached the template
    required = sdk.chat.completions.create(
        model="tiny", messages=messages, max_tokens=60, temperature=0, tools=[WEATHER, TIME], tool_choice="required"
    )
    calls = required.choices[0].message.tool_calls
    assert required.choices[0].finish_reason == "tool_calls" and calls
    assert all(
        c.function.name in ("weather", "time") and isinstance(json.loads(c.function.arguments), dict) for c in calls
    )
    stream = {
        **GREEDY,
        "messages": messages,
        "max_tokens": 40,
        "tools": [WEATHER],
        "tool_choice": named,
        "stream": True,
    }
    chunks = [json.loads(line[6:]) for line in client.post("/v1/chat/completions", json=stream).text.split("\n\n")
              if line.startswith("data: {")]  # fmt: skip
    (last,) = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert last["choices"][0]["finish_reason"] == "tool_calls"
    assert last["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] == call.function.arguments


def test_tool_choice_auto_needs_a_parser_and_bad_tools_are_400s(client, reference):
    body = {**GREEDY, "messages": [{"role": "user", "content": "Hi"}], "tools": [WEATHER]}
    assert "--tool-call-parser" in _error(client.post("/v1/chat/completions", json=body), "tool_choice")
    unknown = {**body, "tool_choice": {"type": "function", "function": {"name": "nope"}}}
    _error(client.post("/v1/chat/completions", json=unknown), "tool_choice.function.name")
    _error(
        client.post("/v1/chat/completions", json={**body, "tools": [{"type": "x"}], "tool_choice": "required"}),
        "tools.0",
    )
    with TestClient(build_app(reference, "tiny", warmup=False, tool_call_parser="hermes")) as parsing:
        response = parsing.post("/v1/chat/completions", json={**body, "tool_choice": "auto"})
    assert response.status_code == 200, response.text  # the model wrote text, not a call: an answer as text
    assert response.json()["choices"][0]["message"]["content"] is not None


HERMES_TWO = (
    '<tool_call>{"name": "f", "arguments": {}}</tool_call><tool_call>{"name": "g", "arguments": {"x": 1}}</tool_call>'
)
LLAMA_TWO = '<|python_tag|>{"name": "f", "parameters": {"s": "x;y"}}; {"name": "g", "parameters": {}}'


@pytest.mark.parametrize(
    "parser, text, calls, content",
    [
        ("hermes", 'Look. <tool_call>\n{"name": "f", "arguments": {"q": 1}}\n</tool_call>', [("f", {"q": 1})], "Look."),
        ("hermes", HERMES_TWO, [("f", {}), ("g", {"x": 1})], None),
        ("hermes", "<tool_call>not json</tool_call>", [], "<tool_call>not json</tool_call>"),
        ("llama3_json", LLAMA_TWO, [("f", {"s": "x;y"}), ("g", {})], None),
        ("llama3_json", "The answer is 4.", [], "The answer is 4."),
        ("llama3_json", '{"name": "f", "parameters": {}} and then', [], '{"name": "f", "parameters": {}} and then'),
    ],
)  # fmt: skip
def test_tool_call_parsers_read_the_models_format(parser, text, calls, content):
    from shardspec.server.tool_calls import ToolMode

    found, rest = ToolMode("auto", (), parser=parser).calls(text)
    assert [(c.name, json.loads(c.arguments)) for c in found] == calls and rest == content


def test_the_cli_offers_every_tool_call_parser():
    from cli._options import ToolCallParser
    from shardspec.server.tool_calls import PARSERS

    assert tuple(p.value for p in ToolCallParser) == PARSERS
