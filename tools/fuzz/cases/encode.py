"""How a generated case spells its files: text, raw bytes (base64 for the JSON protocol), JSONL."""

import base64
import json


def text_file(s: str) -> dict:
    return {"text": s}


def bytes_file(b: bytes) -> dict:
    return {"b64": base64.b64encode(b).decode()}


def jsonl(reqs: list[dict], ascii_only: bool = True) -> str:
    return "".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in reqs)
