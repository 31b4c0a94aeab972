"""The FastAPI app: routes, the API key, OpenAI-style errors and server-sent events.

    GET  /                     the chat page (no key: it holds no model data)
    GET  /health               liveness and batch counts (no key)
    GET  /info                 the model card's facts
    GET  /v1/models            the one served model
    POST /v1/completions       text continuation; "stream": true for server-sent events
    POST /v1/chat/completions  a reply to messages (a chat fine-tune's checkpoint)

Errors are ``{"error": {"message", "type", "param", "code"}}`` as OpenAI's API writes them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from lit_gpt_scratch.serve.batcher import Batcher, Job
from lit_gpt_scratch.serve.requests import BadRequest, Served, chat_request, completion_request

OPEN_PATHS = ("/", "/health")  # answered without the key


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = "authentication_error" if status == 401 else "invalid_request_error"
    if status >= 500:
        kind = "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status)


def build_app(served: Served, batcher: Batcher, card: dict, api_key: str | None) -> FastAPI:
    app = FastAPI(title="lit-gpt-scratch", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    page = resources.files("lit_gpt_scratch.serve").joinpath("chat.html").read_text("utf-8")

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key is not None and request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error_response(401, "missing or wrong API key (Authorization: Bearer KEY)")
        return await call_next(request)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # 404, 405 in the same shape
        return error_response(exc.status_code, str(exc.detail))

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return page

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "batches": batcher.batches,
            "largest_batch": batcher.largest_batch,
        }

    @app.get("/info")
    async def info():
        return {"model": served.name, "card": card}

    @app.get("/v1/models")
    async def models():
        entry = {"id": served.name, "object": "model", "created": created, "owned_by": "local"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, completion_request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await answer(request, chat_request, chat=True)

    async def answer(request: Request, parse, chat: bool):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error_response(400, f"the body is not valid JSON: {e}")
        try:
            generation = parse(body, served)
        except BadRequest as e:
            return error_response(e.status, e.message, e.param)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple] = asyncio.Queue()
        job = Job(generation, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        batcher.submit(job)
        reply = _Reply(served.name, chat, len(generation.ids))
        if generation.stream:
            return StreamingResponse(
                _sse(reply, events, job), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )  # fmt: skip
        pieces = []
        try:
            while (event := await events.get())[0] == "text":
                pieces.append(event[1])
        finally:
            job.cancelled.set()  # the client left mid-way: free its row
        if event[0] == "error":
            return error_response(500, event[1])
        return reply.whole("".join(pieces), event[1], event[2])

    return app


async def _sse(reply: _Reply, events: asyncio.Queue, job: Job):
    """``data: {chunk}`` lines, one per piece of text, a last one with the finish reason, and
    ``data: [DONE]``; an error midway is one ``data: {"error": ...}`` line."""
    try:
        if reply.chat:  # the role first, as OpenAI's stream does
            yield _data(reply.chunk({"role": "assistant", "content": ""}, None))
        while True:
            event = await events.get()
            if event[0] == "text":
                piece = {"content": event[1]} if reply.chat else event[1]
                yield _data(reply.chunk(piece, None))
            elif event[0] == "done":
                yield _data(reply.chunk({} if reply.chat else "", event[1]))
                break
            else:
                yield _data({"error": {"message": event[1], "type": "server_error"}})
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()


def _data(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


class _Reply:
    """The OpenAI response objects of one request: whole, or as stream chunks."""

    def __init__(self, model: str, chat: bool, prompt_tokens: int):
        self.model, self.chat, self.prompt_tokens = model, chat, prompt_tokens
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _head(self, chunk: bool) -> dict:
        kind = "chat.completion" if self.chat else "text_completion"
        if chunk and self.chat:
            kind += ".chunk"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def chunk(self, piece, finish_reason: str | None) -> dict:
        choice = {"index": 0, "finish_reason": finish_reason}
        choice.update({"delta": piece} if self.chat else {"text": piece, "logprobs": None})
        return {**self._head(chunk=True), "choices": [choice]}

    def whole(self, text: str, finish_reason: str, completion_tokens: int) -> dict:
        choice = {"index": 0, "finish_reason": finish_reason}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice.update({"text": text, "logprobs": None})
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }
        return {**self._head(chunk=False), "choices": [choice], "usage": usage}
