"""A small local fake of two LLM vendors' HTTP APIs, speaking their wire formats, for the provider tests.

    with FakeVendor() as vendor:
        vendor.respond(openai_completion(tool_calls=[("send_email", '{"to": "a@example.com"}')]))
        provider = OpenAIProvider(vendor.openai_base_url, "sk-test", "gpt-test", timeout=5)
        ...
        [request] = vendor.requests
        assert request.json["model"] == "gpt-test"

Routes:
  POST /v1/chat/completions   OpenAI Chat Completions (also what vLLM, Ollama and llama.cpp serve); the SDK's base
                              URL is `openai_base_url` (http://127.0.0.1:PORT/v1).
  POST /v1/messages           Anthropic Messages; the SDK's base URL is `anthropic_base_url` (http://127.0.0.1:PORT).

Every request is recorded (method, path, headers, raw body and its JSON) before it is answered. Answers come, in
order, from a queue that the test fills with `respond(body, status=200, delay=0, headers=None)`: a dict is sent as
JSON, bytes or str as they are (to send garbage); `delay` seconds are waited first, so that a test can run past the
client's timeout. The body builders below make the vendors' exact success and error bodies. With nothing queued the
fake answers 500 in the vendor's error format, so that a missing script shows up as a failure.

`stop()` takes the server down (a client then gets connection refused) and `start()` brings it back on the same port.
"""

import asyncio
import itertools
import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from peers.asgi import ThreadedServer

_ids = itertools.count(1)


def _next_id(prefix: str) -> str:
    return f"{prefix}{next(_ids):024d}"


# Success bodies.


def openai_completion(
    content: str | None = None,
    tool_calls: list[tuple[str, Any]] | None = None,
    model: str = "gpt-test",
    finish_reason: str | None = None,
) -> dict:
    """A chat.completion object. `tool_calls` are (function name, arguments): a str is sent as it is (the wire
    format is a JSON text, so a test can send malformed JSON), anything else is JSON-encoded first."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
    if tool_calls:
        message["tool_calls"] = [
            {
                "id": _next_id("call_"),
                "type": "function",
                "function": {
                    "name": name,
                    "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                },
            }
            for name, arguments in tool_calls
        ]
    return {
        "id": _next_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason or ("tool_calls" if tool_calls else "stop"),
            }
        ],
        "usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49},
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


def anthropic_message(
    text: str | None = None,
    tool_uses: list[tuple[str, Any]] | None = None,
    model: str = "claude-test",
    stop_reason: str | None = None,
) -> dict:
    """A Messages API message: a text block (when `text` is given) followed by one tool_use block per (name, input)."""
    content: list[dict[str, Any]] = []
    if text is not None:
        content.append({"type": "text", "text": text})
    for name, input_ in tool_uses or []:
        content.append({"type": "tool_use", "id": _next_id("toolu_"), "name": name, "input": input_})
    return {
        "id": _next_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason or ("tool_use" if tool_uses else "end_turn"),
        "stop_sequence": None,
        "usage": {"input_tokens": 42, "output_tokens": 7},
    }


# Error bodies.


def openai_error(message: str, type: str = "server_error", code: str | None = None, param: str | None = None) -> dict:
    """OpenAI's error body, e.g. 429 ("Rate limit reached ...", "requests", "rate_limit_exceeded"), 401 ("Incorrect
    API key provided: ...", "invalid_request_error", "invalid_api_key"), 400 ("Unsupported parameter: ...",
    "invalid_request_error", "unsupported_parameter", param)."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def anthropic_error(message: str, type: str = "api_error") -> dict:
    """Anthropic's error body; types by status: 400 invalid_request_error, 401 authentication_error, 403
    permission_error, 404 not_found_error, 413 request_too_large, 429 rate_limit_error, 500 api_error,
    529 overloaded_error."""
    return {"type": "error", "error": {"type": type, "message": message}, "request_id": _next_id("req_")}


# The server.


@dataclass(frozen=True)
class VendorRequest:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    json: Any  # the body decoded, or None when it is not JSON


@dataclass(frozen=True)
class _Scripted:
    body: dict | bytes | str
    status: int
    delay: float
    headers: dict[str, str]


class FakeVendor:
    """The fake vendors on a loopback port of their own, served by uvicorn in a background thread."""

    def __init__(self) -> None:
        self.requests: list[VendorRequest] = []
        self._script: deque[_Scripted] = deque()
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._openai, methods=["POST"]),
                Route("/v1/messages", self._anthropic, methods=["POST"]),
            ]
        )
        # A short graceful shutdown: a request still in its scripted delay must not hold up stop().
        self._http = ThreadedServer(self.app, "fake-llm-vendor", graceful_shutdown_seconds=1)

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def openai_base_url(self) -> str:
        return f"{self._http.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self._http.url

    # Lifecycle.

    def start(self) -> "FakeVendor":
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    def __enter__(self) -> "FakeVendor":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Knobs and results.

    def respond(
        self, body: dict | bytes | str, status: int = 200, delay: float = 0, headers: dict[str, str] | None = None
    ) -> None:
        """Queues the answer to the next request (to either API)."""
        with self._lock:
            self._script.append(_Scripted(body, status, delay, dict(headers or {})))

    @property
    def last(self) -> VendorRequest:
        with self._lock:
            return self.requests[-1]

    @property
    def pending(self) -> int:
        """How many queued answers were not used yet."""
        with self._lock:
            return len(self._script)

    # Handlers.

    async def _openai(self, request: Request) -> Response:
        return await self._answer(request, openai_error("The fake vendor had no scripted answer.", "server_error"))

    async def _anthropic(self, request: Request) -> Response:
        return await self._answer(request, anthropic_error("The fake vendor had no scripted answer.", "api_error"))

    async def _answer(self, request: Request, unscripted: dict) -> Response:
        raw = await request.body()
        try:
            decoded = json.loads(raw)
        except ValueError:
            decoded = None
        recorded = VendorRequest(
            method=request.method,
            path=request.url.path,
            headers={name.lower(): value for name, value in request.headers.items()},
            body=raw,
            json=decoded,
        )
        with self._lock:
            self.requests.append(recorded)
            scripted = self._script.popleft() if self._script else _Scripted(unscripted, 500, 0, {})
        if scripted.delay:
            await asyncio.sleep(scripted.delay)
        if isinstance(scripted.body, dict):
            return JSONResponse(scripted.body, status_code=scripted.status, headers=scripted.headers)
        return Response(
            scripted.body,
            status_code=scripted.status,
            headers=scripted.headers,
            media_type=scripted.headers.get("content-type", "application/json"),
        )
