"""Tool calls in chat: a request's `tools` and `tool_choice` as vLLM answers them.

`tool_choice` a named function or "required" is answered by structured output:
the output is held to the function's parameter schema (named), or to a JSON
list of {"name", "parameters"} calls of the given tools (required), so it always
parses. "auto" lets the model choose between text and a call in its own format,
which a parser reads back from the text (vLLM's `--tool-call-parser`):

    hermes       <tool_call>{"name": "f", "arguments": {...}}</tool_call>, any number, text around them
                 (Hermes and Qwen models)
    llama3_json  {"name": "f", "parameters": {...}}, several joined by ";" (Llama 3.1 and later)

Without a parser "auto" is a 400 naming the option; "none" (or no tools) is a plain
chat answer. Tools reach the chat template as `tools`, as Hugging Face passes them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from typing import Literal

from .openai_api import FieldProblem

PARSERS = ("hermes", "llama3_json")
_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_PYTHON_TAG = "<|python_tag|>"


@dataclasses.dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text

    def to_json(self, index: int | None = None) -> dict:
        """OpenAI's tool call (`index`: a streamed delta's)."""
        call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function"}
        call["function"] = {"name": self.name, "arguments": self.arguments}
        return call if index is None else {"index": index, **call}


@dataclasses.dataclass(frozen=True)
class ToolMode:
    """How one chat request's output becomes tool calls."""

    kind: Literal["named", "required", "auto"]
    tools: tuple[dict, ...]  # each {"name", "parameters"}: the functions offered
    name: str | None = None  # named: the function called
    parser: str | None = None  # auto: one of PARSERS

    def structured_outputs(self) -> dict | None:
        """The request's `structured_outputs`: what the output must be (None for auto)."""
        if self.kind == "named":
            return {"json": self._parameters(self.name)}
        if self.kind == "required":
            calls = [
                {
                    "type": "object",
                    "properties": {"name": {"const": t["name"]}, "parameters": self._parameters(t["name"])},
                    "required": ["name", "parameters"],
                    "additionalProperties": False,
                }
                for t in self.tools
            ]
            return {"json": {"type": "array", "minItems": 1, "items": {"anyOf": calls}}}
        return None

    def _parameters(self, name: str) -> dict:
        tool = next(t for t in self.tools if t["name"] == name)
        return tool.get("parameters") or {"type": "object", "properties": {}}

    def calls(self, text: str) -> tuple[list[ToolCall], str | None]:
        """The tool calls in an output's text, and the text left (None: none)."""
        if self.kind == "named":
            return [ToolCall(self.name, text)], None
        if self.kind == "required":
            return [ToolCall(c["name"], json.dumps(c["parameters"])) for c in _json(text) or ()], None
        return _hermes(text) if self.parser == "hermes" else _llama3_json(text)


def tool_mode(tools: list[dict] | None, tool_choice, parser: str | None) -> ToolMode | None:
    """How a chat request's `tools` and `tool_choice` are answered; None: as plain chat.
    FieldProblem for a choice that cannot be served."""
    if not tools or tool_choice == "none":
        return None
    functions = tuple(_function(i, tool) for i, tool in enumerate(tools))
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if tool_choice.get("type") != "function" or not isinstance(name, str):
            raise FieldProblem("tool_choice", 'tool_choice: give {"type": "function", "function": {"name": ...}}')
        if name not in {f["name"] for f in functions}:
            raise FieldProblem("tool_choice.function.name", f"tool_choice: no tool named {name!r} in tools")
        return ToolMode("named", functions, name=name)
    if tool_choice == "required":
        return ToolMode("required", functions)
    if parser is None:  # "auto", or left out beside tools
        raise FieldProblem(
            "tool_choice",
            'tool_choice "auto" needs the server started with --tool-call-parser '
            f"({' or '.join(PARSERS)}); or set tool_choice to required, a function, or none",
        )
    return ToolMode("auto", functions, parser=parser)


def _function(index: int, tool: dict) -> dict:
    function = tool.get("function") if isinstance(tool, dict) else None
    if tool.get("type") != "function" or not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise FieldProblem(f"tools.{index}", f'tools.{index}: give {{"type": "function", "function": {{"name": ...}}}}')
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        where = f"tools.{index}.function.parameters"
        raise FieldProblem(where, f"{where}: give a JSON Schema")
    return {"name": function["name"], "parameters": parameters}


def _json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def _hermes(text: str) -> tuple[list[ToolCall], str | None]:
    calls = []
    for found in _HERMES_CALL.findall(text):
        call = _json(found)
        if not (isinstance(call, dict) and isinstance(call.get("name"), str)):
            return [], text  # not a call after all: the text as it is
        calls.append(ToolCall(call["name"], json.dumps(call.get("arguments", {}))))
    rest = _HERMES_CALL.sub("", text).strip()
    return calls, (rest or None) if calls else text


def _llama3_json(text: str) -> tuple[list[ToolCall], str | None]:
    """Calls as JSON objects one after another, joined by ";" (a ";" inside a string is its own)."""
    body, at, calls = text.strip().removeprefix(_PYTHON_TAG), 0, []
    decoder = json.JSONDecoder()
    while (at := _skip(body, at)) < len(body):
        try:
            call, at = decoder.raw_decode(body, at)
        except ValueError:
            return [], text
        if not (isinstance(call, dict) and isinstance(call.get("name"), str)):
            return [], text
        calls.append(ToolCall(call["name"], json.dumps(call.get("parameters", call.get("arguments", {})))))
    return calls, None if calls else text


def _skip(text: str, at: int) -> int:
    """Past blank space and one ";" between calls."""
    while at < len(text) and (text[at].isspace() or text[at] == ";"):
        at += 1
    return at
