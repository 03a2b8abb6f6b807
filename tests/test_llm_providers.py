"""The LLM providers against a fake of the vendors' HTTP APIs on loopback: the official SDKs, real sockets, the
vendors' wire formats for requests, answers and errors."""

import json
import re

import pytest

from emailmcp.llm.providers import (
    AnthropicProvider,
    OpenAIProvider,
    ProviderError,
    ProviderTimeout,
    ToolCall,
    ToolSpec,
)
from peers.llm_vendors import FakeVendor, anthropic_error, anthropic_message, openai_completion, openai_error

API_KEY = "sk-test-0123456789abcdefSECRET"
SYSTEM = "You plan email actions. Call the tools; never invent addresses."
PROMPT = "Send Ana the report and remind Bo about Friday."
CONTEXT = {"user": {"id": "u_1", "name": "Zoë"}, "recent": ["r1", "r2"]}
TOOLS = [
    ToolSpec(
        name="send_email",
        description="Send an email from the user's mailbox — plain text.",
        parameters={
            "type": "object",
            "properties": {
                "to": {"type": "array", "items": {"type": "string", "format": "email"}, "minItems": 1},
                "subject": {"type": "string", "maxLength": 200},
                "body": {"type": "string"},
                "priority": {"enum": ["low", "normal", "high"], "default": "normal"},
            },
            "required": ["to", "subject", "body"],
            "additionalProperties": False,
        },
    ),
    ToolSpec(
        name="schedule_email",
        description="Send an email later.",
        parameters={
            "type": "object",
            "properties": {
                "to": {"type": "array", "items": {"type": "string"}},
                "send_at": {"type": "string", "format": "date-time"},
                "draft": {"$ref": "#/$defs/draft"},
            },
            "required": ["to", "send_at"],
            "$defs": {"draft": {"type": "object", "properties": {"subject": {"type": "string"}}}},
        },
    ),
]
SEND = {"to": ["ana@example.com"], "subject": "Report", "body": "Attached."}
REMIND = {"to": ["bo@example.com"], "send_at": "2030-01-04T09:00:00Z"}


@pytest.fixture(scope="module")
def vendor():
    with FakeVendor() as fake:
        yield fake


@pytest.fixture
def fake(vendor):
    vendor.requests.clear()
    yield vendor
    assert vendor.pending == 0, "a scripted answer was not used"


@pytest.fixture
async def openai_provider(fake):
    provider = OpenAIProvider(fake.openai_base_url, API_KEY, "gpt-test", timeout=5, max_retries=0)
    yield provider
    await provider.aclose()


@pytest.fixture
async def anthropic_provider(fake):
    provider = AnthropicProvider(fake.anthropic_base_url, API_KEY, "claude-test", timeout=5, max_retries=0)
    yield provider
    await provider.aclose()


def make(kind: str, base_url: str, **overrides):
    settings = {"api_key": API_KEY, "timeout": 5.0, "max_retries": 0, **overrides}
    if kind == "openai":
        return OpenAIProvider(base_url=base_url, model="gpt-test", **settings)
    return AnthropicProvider(base_url=base_url, model="claude-test", **settings)


def base_url(kind: str, vendor: FakeVendor) -> str:
    return vendor.openai_base_url if kind == "openai" else vendor.anthropic_base_url


async def propose(provider, context=CONTEXT, tools=TOOLS, max_tokens=512, temperature=0.2):
    return await provider.propose(SYSTEM, PROMPT, context, tools, max_tokens, temperature)


def split_context(user_text: str) -> tuple[str, dict]:
    prompt, marker, block = user_text.partition("\n\nContext (JSON):\n")
    assert marker, user_text
    return prompt, json.loads(block)


# What goes on the wire.


async def test_openai_request(fake, openai_provider):
    fake.respond(openai_completion("ok"))
    await propose(openai_provider)

    request = fake.last
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    body = request.json
    assert body["model"] == "gpt-test"
    assert body["max_tokens"] == 512 and "max_completion_tokens" not in body
    assert body["temperature"] == 0.2
    assert body["tool_choice"] == "auto"
    assert body["tools"] == [
        {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
        for t in TOOLS
    ]
    system, user = body["messages"]
    assert system == {"role": "system", "content": SYSTEM}
    assert user["role"] == "user"
    assert split_context(user["content"]) == (PROMPT, CONTEXT)
    assert "Zoë" in user["content"]  # sent as UTF-8, not \u escapes
    assert "stream" not in body


async def test_anthropic_request(fake, anthropic_provider):
    fake.respond(anthropic_message("ok"))
    await propose(anthropic_provider)

    request = fake.last
    assert (request.method, request.path) == ("POST", "/v1/messages")
    # SDK 2.x sends the key as a bearer token (no x-api-key) and API version 2026-10-21 or later.
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", request.headers["anthropic-version"])
    assert request.headers["anthropic-version"] >= "2026-10-21"
    body = request.json
    assert body["model"] == "claude-test"
    assert body["max_tokens"] == 512
    assert body["system"] == SYSTEM
    assert body["tools"] == [
        {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in TOOLS
    ]
    [user] = body["messages"]
    assert user["role"] == "user"
    assert split_context(user["content"]) == (PROMPT, CONTEXT)
    # That API version answers 400 to any sampling parameter, so the temperature is not sent.
    assert not {"temperature", "top_p", "top_k"} & body.keys()
    assert "stream" not in body


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_without_context_or_tools(fake, kind):
    fake.respond(openai_completion("ok") if kind == "openai" else anthropic_message("ok"))
    provider = make(kind, base_url(kind, fake))
    try:
        await provider.propose("", PROMPT, None, [], 64, 0.0)
    finally:
        await provider.aclose()
    body = fake.last.json
    assert not {"tools", "tool_choice", "system"} & body.keys()
    assert body["messages"] == [{"role": "user", "content": PROMPT}]  # no empty system message either


async def test_openai_without_key_sends_a_placeholder(fake, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment-must-not-be-used")
    fake.respond(openai_completion("ok"))
    provider = OpenAIProvider(fake.openai_base_url, None, "llama3", timeout=5)
    try:
        await propose(provider)
    finally:
        await provider.aclose()
    assert fake.last.headers["authorization"] == "Bearer unused"


# Answers.


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_one_tool_call(fake, kind):
    if kind == "openai":
        fake.respond(openai_completion(tool_calls=[("send_email", SEND)], model="gpt-test-2026-01-01"))
    else:
        fake.respond(anthropic_message(tool_uses=[("send_email", SEND)], model="claude-test-20260101"))
    provider = make(kind, base_url(kind, fake))
    try:
        answer = await propose(provider)
    finally:
        await provider.aclose()
    [call] = answer.calls
    assert call.name == "send_email"
    assert call.arguments == SEND
    assert json.loads(call.raw) == SEND
    assert answer.text == ""
    assert answer.model == ("gpt-test-2026-01-01" if kind == "openai" else "claude-test-20260101")


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_two_tool_calls_in_order(fake, kind):
    if kind == "openai":
        fake.respond(
            openai_completion("Two things to do.", tool_calls=[("send_email", SEND), ("schedule_email", REMIND)])
        )
    else:
        fake.respond(
            anthropic_message("Two things to do.", tool_uses=[("send_email", SEND), ("schedule_email", REMIND)])
        )
    provider = make(kind, base_url(kind, fake))
    try:
        answer = await propose(provider)
    finally:
        await provider.aclose()
    assert [(call.name, call.arguments) for call in answer.calls] == [("send_email", SEND), ("schedule_email", REMIND)]
    assert answer.text == "Two things to do."


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_plain_text_answer(fake, kind):
    text = "I can't tell whom to write to: which Ana?"
    fake.respond(openai_completion(text) if kind == "openai" else anthropic_message(text))
    provider = make(kind, base_url(kind, fake))
    try:
        answer = await propose(provider)
    finally:
        await provider.aclose()
    assert answer.text == text
    assert answer.calls == []


async def test_openai_malformed_arguments(fake, openai_provider):
    fake.respond(
        openai_completion(
            tool_calls=[
                ("send_email", '{"to": ["ana@example.com"], "subject": "Rep'),  # cut off
                ("send_email", '["ana@example.com"]'),  # JSON, but not an object
                ("schedule_email", json.dumps(REMIND)),
                ("list_outbox", ""),  # what some local servers send for a tool without parameters
            ]
        )
    )
    answer = await propose(openai_provider)
    assert answer.calls == [
        ToolCall("send_email", None, '{"to": ["ana@example.com"], "subject": "Rep'),
        ToolCall("send_email", None, '["ana@example.com"]'),
        ToolCall("schedule_email", REMIND, json.dumps(REMIND)),
        ToolCall("list_outbox", {}, ""),
    ]


async def test_anthropic_input_that_is_not_an_object(fake, anthropic_provider):
    fake.respond(anthropic_message(tool_uses=[("send_email", ["ana@example.com"]), ("schedule_email", REMIND)]))
    answer = await propose(anthropic_provider)
    assert answer.calls == [
        ToolCall("send_email", None, '["ana@example.com"]'),
        ToolCall("schedule_email", REMIND, json.dumps(REMIND)),
    ]


async def test_openai_falls_back_to_max_completion_tokens(fake, openai_provider):
    # What OpenAI answers for its reasoning models (o-series, gpt-5.x) when given max_tokens.
    fake.respond(
        openai_error(
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            "invalid_request_error",
            "unsupported_parameter",
            "max_tokens",
        ),
        status=400,
    )
    fake.respond(openai_completion("ok"))
    fake.respond(openai_completion("ok again"))
    assert (await propose(openai_provider)).text == "ok"
    assert (await propose(openai_provider)).text == "ok again"
    first, second, third = (request.json for request in fake.requests)
    assert first["max_tokens"] == 512 and "max_completion_tokens" not in first
    assert second["max_completion_tokens"] == 512 and "max_tokens" not in second
    assert third["max_completion_tokens"] == 512 and "max_tokens" not in third  # remembered


async def test_openai_drops_a_refused_temperature(fake, openai_provider):
    fake.respond(
        openai_error(
            "Unsupported value: 'temperature' does not support 0.2 with this model. "
            "Only the default (1) value is supported.",
            "invalid_request_error",
            "unsupported_value",
            "temperature",
        ),
        status=400,
    )
    fake.respond(openai_completion("ok"))
    assert (await propose(openai_provider)).text == "ok"
    first, second = (request.json for request in fake.requests)
    assert first["temperature"] == 0.2
    assert "temperature" not in second


async def test_openai_other_bad_request_is_not_retried(fake, openai_provider):
    fake.respond(openai_error("Invalid schema for function 'send_email'.", "invalid_request_error", None, "tools"), 400)
    with pytest.raises(ProviderError) as caught:
        await propose(openai_provider)
    assert caught.value.status == 400
    assert "Invalid schema for function 'send_email'." in str(caught.value)
    assert len(fake.requests) == 1


# Errors.


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("status", [500, 429, 401])
async def test_vendor_error(fake, kind, status):
    message = {
        500: "The server had an error while processing your request.",
        429: "Rate limit reached for requests.",
        # OpenAI echoes the key, masked; some servers echo it whole.
        401: f"Incorrect API key provided: sk-test-****************CRET or {API_KEY}.",
    }[status]
    if kind == "openai":
        error_type = {500: "server_error", 429: "requests", 401: "invalid_request_error"}[status]
        fake.respond(openai_error(message, error_type), status=status)
    else:
        error_type = {500: "api_error", 429: "rate_limit_error", 401: "authentication_error"}[status]
        fake.respond(anthropic_error(message, error_type), status=status)
    provider = make(kind, base_url(kind, fake))
    try:
        with pytest.raises(ProviderError) as caught:
            await propose(provider)
    finally:
        await provider.aclose()
    error = caught.value
    assert type(error) is ProviderError
    assert error.status == status
    assert f"HTTP {status}" in str(error)
    if status != 401:
        assert message in str(error)
    else:
        assert "Incorrect API key provided" in str(error)
    assert API_KEY not in str(error) and API_KEY not in repr(error)
    assert "sk-test" not in str(error)
    assert len(fake.requests) == 1  # max_retries=0


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_sdk_retries_then_succeeds(fake, kind):
    error = openai_error("Overloaded.", "server_error") if kind == "openai" else anthropic_error("Overloaded.")
    fake.respond(error, status=503, headers={"retry-after-ms": "10"})
    fake.respond(openai_completion("ok") if kind == "openai" else anthropic_message("ok"))
    provider = make(kind, base_url(kind, fake), max_retries=1)
    try:
        answer = await propose(provider)
    finally:
        await provider.aclose()
    assert answer.text == "ok"
    assert len(fake.requests) == 2


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_timeout(fake, kind):
    fake.respond(openai_completion("late") if kind == "openai" else anthropic_message("late"), delay=2)
    provider = make(kind, base_url(kind, fake), timeout=0.3)
    try:
        with pytest.raises(ProviderTimeout) as caught:
            await propose(provider)
    finally:
        await provider.aclose()
    assert caught.value.status is None
    assert "did not answer within 0.3s" in str(caught.value)
    assert API_KEY not in str(caught.value)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_connection_refused(kind):
    with FakeVendor() as gone:
        url = base_url(kind, gone)
    provider = make(kind, url)
    try:
        with pytest.raises(ProviderError) as caught:
            await propose(provider)
    finally:
        await provider.aclose()
    error = caught.value
    assert type(error) is ProviderError
    assert error.status is None
    assert "could not reach" in str(error) and f"127.0.0.1:{gone.port}" in str(error)
    assert API_KEY not in str(error)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize(
    "body", [b"<html>Bad gateway</html>", b"{not json", {"id": "x", "object": "list"}], ids=["html", "broken", "shape"]
)
async def test_garbage_answer(fake, kind, body):
    headers = {"content-type": "text/html"} if body == b"<html>Bad gateway</html>" else None
    fake.respond(body, headers=headers)
    provider = make(kind, base_url(kind, fake))
    try:
        with pytest.raises(ProviderError) as caught:
            await propose(provider)
    finally:
        await provider.aclose()
    assert type(caught.value) is ProviderError
    assert "could not be read" in str(caught.value)
