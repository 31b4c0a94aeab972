"""Request bodies of ``/v1/completions`` and ``/v1/chat/completions``, checked field by field.

Every problem is a ``BadRequest`` naming the field (``param``), which the app answers as a 400
with an OpenAI-style JSON error. Fields the server does not use (``frequency_penalty``, ``user``
...) are ignored, as OpenAI-compatible servers commonly do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lit_gpt_scratch.data.chat_template import ROLES

MAX_STOPS = 4  # as OpenAI's API allows


class BadRequest(Exception):
    """A request the server refuses: ``status`` and a message naming ``param``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


@dataclass
class Served:
    """What requests are checked against: the model's name, tokenizer, context, defaults.

    ``template``: the chat template, None for a tokenizer without the chat tokens."""

    name: str
    tok: object
    template: object | None
    block_size: int
    temperature: float = 0.8
    top_k: int | None = 200
    top_p: float | None = None
    max_tokens: int = 200


@dataclass
class Generation:
    """One checked request: prompt ids, how many ids at most, how to sample, where to stop."""

    ids: list[int]
    max_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int | None
    stop_ids: tuple[int, ...]
    stops: list[str] = field(default_factory=list)
    stream: bool = False


def completion_request(body, served: Served) -> Generation:
    """A ``/v1/completions`` body: ``prompt`` (a string; empty starts a new document)."""
    body = _object(body)
    _model(body, served)
    prompt = body.get("prompt", None)
    if prompt is None:
        raise BadRequest("prompt is required", "prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # the client's one-prompt list form
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string", "prompt")
    tok = served.tok
    ids = tok.encode_ordinary(prompt).tolist() if prompt else [tok.eot_id]
    return _generation(body, served, ids, "prompt", (tok.eot_id,))


def chat_request(body, served: Served) -> Generation:
    """A ``/v1/chat/completions`` body: ``messages``, each a role and its text."""
    body = _object(body)
    _model(body, served)
    if served.template is None:
        raise BadRequest(
            f"model {served.name!r} has no chat tokens (tokenizer {served.tok.spec!r}): "
            "use /v1/completions, or serve a chat fine-tune (a tokenizer ending in '+chat')",
            "messages",
        )
    messages = body.get("messages", None)
    if messages is None:
        raise BadRequest("messages is required", "messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", "messages")
    checked = [_message(m, f"messages[{i}]") for i, m in enumerate(messages)]
    template = served.template
    ids = template.prompt(checked)
    return _generation(body, served, ids, "messages", (template.end_id, served.tok.eot_id))


def _object(body) -> dict:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _model(body: dict, served: Served) -> None:
    model = body.get("model", None)
    if model is None:
        raise BadRequest("model is required", "model")
    if model != served.name:
        raise BadRequest(f"unknown model {model!r}: this server serves {served.name!r}", "model")


def _message(message, where: str) -> dict:
    if not isinstance(message, dict):
        raise BadRequest(f"{where} must be an object with role and content", where)
    role = message.get("role")
    if role not in ROLES:
        raise BadRequest(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", where)
    content = message.get("content")
    if isinstance(content, list):  # the parts form: [{"type": "text", "text": ...}, ...]
        if not all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
            raise BadRequest(f"{where}.content parts must be text parts", f"{where}.content")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise BadRequest(f"{where}.content must be a string", f"{where}.content")
    return {"role": role, "content": content}


def _generation(body: dict, served: Served, ids: list[int], source: str, stop_ids) -> Generation:
    room = served.block_size - len(ids)
    if room < 1:
        raise BadRequest(
            f"{source} has {len(ids)} tokens: the model reads {served.block_size}", source
        )
    max_tokens = _integer(body, "max_tokens", None, minimum=1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_completion_tokens", None, minimum=1)
    if max_tokens is not None and max_tokens > room:
        raise BadRequest(
            f"max_tokens {max_tokens} does not fit: {source} has {len(ids)} tokens and the "
            f"model reads {served.block_size}, so at most {room}",
            "max_tokens",
        )
    n = _integer(body, "n", 1, minimum=1)
    if n != 1:
        raise BadRequest("n must be 1: send one request per sample", "n")
    top_p = _number(body, "top_p", served.top_p)
    if top_p is not None and not 0 < top_p <= 1:
        raise BadRequest(f"top_p must be in (0, 1], got {top_p}", "top_p")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false", "stream")
    return Generation(
        ids=ids,
        max_tokens=min(served.max_tokens, room) if max_tokens is None else max_tokens,
        temperature=_number(body, "temperature", served.temperature, minimum=0),
        top_k=_integer(body, "top_k", served.top_k, minimum=1),
        top_p=top_p,
        seed=_integer(body, "seed", None),
        stop_ids=tuple(stop_ids),
        stops=_stops(body),
        stream=stream,
    )


def _integer(body: dict, key: str, default, minimum: int | None = None):
    value = body.get(key, None)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{key} must be an integer, got {value!r}", key)
    if minimum is not None and value < minimum:
        raise BadRequest(f"{key} must be at least {minimum}, got {value}", key)
    return value


def _number(body: dict, key: str, default, minimum: float | None = None):
    value = body.get(key, None)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{key} must be a number, got {value!r}", key)
    if minimum is not None and value < minimum:
        raise BadRequest(f"{key} must be at least {minimum}, got {value}", key)
    return float(value)


def _stops(body: dict) -> list[str]:
    stop = body.get("stop", None)
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise BadRequest("stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOPS:
        raise BadRequest(f"stop holds at most {MAX_STOPS} strings, got {len(stops)}", "stop")
    return [s for s in stops if s]
