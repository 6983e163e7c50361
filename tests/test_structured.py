"""Structured outputs: grammar-constrained decoding, checked by validating what comes out and
against the reference model's logits with the grammar's masks applied."""

import json
import re

import jsonschema
import numpy as np
import pytest
from llguidance import LLMatcher
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from shardspec import ShardspecError, apply
from shardspec.runtime.engine import Engine
from shardspec.runtime.structured import Constraint

from conftest import ROOT
from helpers import SERVING, dense_forward

LLAMA = ROOT / "tests" / "fixtures" / "hf" / "llama"  # a tiny random checkpoint with a tokenizer
SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999}, "colour": {"enum": ["red", "green"]}},
    "required": ["id", "colour"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module", params=["false", "true"], ids=["sync", "async"])
def engine(request):
    overrides = SERVING | {"runtime.async_scheduling": request.param}
    return Engine.from_strategy(ROOT / "strategies" / "attention_dp.yaml", model=str(LLAMA), overrides=overrides)


def _reference_constrained_greedy(engine, prompt, constraint, output):
    """Greedy decoding of the dense reference model, each step's logits masked by the grammar
    as it stands after the tokens before (llguidance directly): the tokens `output` must be."""
    model = apply(engine.plan)
    vocab = engine.plan.model.geometry.vocab_size
    matcher = LLMatcher(engine._grammars._tokenizer, constraint.grammar())
    mask = allocate_token_bitmask(1, vocab)
    tokens, want = list(prompt) + list(output), []
    logits = dense_forward(model, [tokens])[0, len(prompt) - 1 :]
    for i, token in enumerate(output):
        fill_next_token_bitmask(matcher, mask, 0)
        allowed = np.unpackbits(mask.view(np.uint8), bitorder="little")[:vocab].astype(bool)
        want.append(int(np.argmax(np.where(allowed, logits[i], -np.inf))))
        assert matcher.consume_token(token)
    return want


def test_json_schema_outputs_validate_and_greedy_keeps_the_models_choice(engine):
    prompt = "Describe a thing as JSON:"
    sampled = [
        {"id": f"s{seed}", "prompt": prompt, "max_tokens": 40, "temperature": 1.0, "seed": seed,
         "structured_outputs": {"json": SCHEMA}}
        for seed in range(6)
    ]  # fmt: skip
    greedy = {"id": "g", "prompt": prompt, "max_tokens": 40, "structured_outputs": {"json": SCHEMA}}
    plain = {"id": "p", "prompt": prompt, "max_tokens": 12, "ignore_eos": True}  # a row without a mask beside them
    outputs = {o.id: o for o in engine.generate([*sampled, greedy, plain])}
    for request in sampled + [greedy]:
        out = outputs[request["id"]]
        assert out.finish_reason == "stop", out
        jsonschema.validate(json.loads(out.text), SCHEMA)
    assert len({outputs[r["id"]].text for r in sampled}) > 1  # sampling still samples
    g = outputs["g"]
    constraint = Constraint.from_field(greedy["structured_outputs"])
    assert list(g.output_token_ids) == _reference_constrained_greedy(
        engine, g.prompt_token_ids, constraint, g.output_token_ids
    )
    unconstrained = engine.generate([{"prompt": prompt, "max_tokens": 12, "ignore_eos": True}])[0]
    assert outputs["p"].output_token_ids == unconstrained.output_token_ids


QUOTE_AND_BRACE = {"logit_bias": {"5": 6.0, "96": 6.0}}  # '"' and '}': a random model's keys and values end


@pytest.mark.parametrize(
    "field, holds",
    [
        ({"json_object": True, **QUOTE_AND_BRACE}, lambda text: isinstance(json.loads(text), dict)),
        ({"regex": "[0-9]{3}-[a-c]+!"}, lambda text: re.fullmatch("[0-9]{3}-[a-c]+!", text)),
        ({"choice": ["yes", "no", "maybe so"]}, lambda text: text in ("yes", "no", "maybe so")),
        (
            {"grammar": 'start: "(" NUM ("+" NUM)* ")"\\nNUM: /[0-9]/'},
            lambda text: re.fullmatch(r"\(\d(\+\d)*\)", text),
        ),
    ],
    ids=["json_object", "regex", "choice", "grammar"],
)
def test_every_kind_of_constraint_holds(engine, field, holds):
    extra = {k: v for k, v in field.items() if k == "logit_bias"}
    field = {k: (v.replace("\\n", "\n") if isinstance(v, str) else v) for k, v in field.items() if k not in extra}
    requests = [
        {"prompt": "Answer:", "max_tokens": 48, "temperature": 0.8, "seed": seed, "structured_outputs": field, **extra}
        for seed in range(3)
    ]
    for out in engine.generate(requests):
        assert out.finish_reason == "stop" and holds(out.text), out


@pytest.mark.parametrize(
    "field, path",
    [
        ({"regex": "[a-"}, "structured_outputs.regex"),
        ({"grammar": "start: undefined_rule"}, "structured_outputs.grammar"),
        ({"json": {"type": "object"}, "regex": "a"}, "structured_outputs"),
        ({"colour": "x"}, "structured_outputs"),
    ],
)
def test_a_constraint_that_cannot_be_served_is_refused_naming_it(engine, field, path):
    with pytest.raises(ShardspecError) as e:
        engine.add_request(prompt="x", structured_outputs=field)
    assert e.value.problems[0].path == path, e.value
