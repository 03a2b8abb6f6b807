"""LLM providers for the planners of `POST /llm/inference`: send one prompt with native tool calling, get back a
neutral answer (the model's text and its tool calls, parsed but not validated).

Two providers, each on its vendor's official async SDK:

- `OpenAIProvider`: any OpenAI-compatible Chat Completions server (OpenAI, vLLM, Ollama, llama.cpp, ...).
- `AnthropicProvider`: Anthropic's Messages API.

Both take a system prompt, the user's prompt with an optional context dict (sent as a delimited JSON block in the
user message, never in the system prompt), and tool definitions (`ToolSpec`: name, description, JSON Schema).
Errors come out as `ProviderError` (the vendor refused, failed, could not be reached or answered garbage) or
`ProviderTimeout` (no answer in time), with messages that never carry the API key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import openai

__all__ = [
    "AnthropicProvider",
    "OpenAIProvider",
    "ProviderAnswer",
    "ProviderError",
    "ProviderTimeout",
    "ToolCall",
    "ToolSpec",
    "parse_arguments",
    "user_message",
]

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_ANTHROPIC_BASE_URL = "https://api.anthropic.com"
# Local OpenAI-compatible servers need no key, but the SDK refuses to start without one.
PLACEHOLDER_API_KEY = "unused"
MAX_ERROR_CHARS = 300
# Key-shaped tokens that vendors echo back in their error messages (OpenAI's 401 shows a masked key).
_KEYLIKE = re.compile(r"\bsk-[A-Za-z0-9_\-*.]{6,}")


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict  # JSON Schema (object) of the tool's arguments


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict | None  # None when the model's arguments were not a JSON object (malformed); raw text in `raw`
    raw: str  # the arguments as the model sent them (JSON text)


@dataclass(frozen=True)
class ProviderAnswer:
    text: str  # the model's plain-text answer ("" when none)
    calls: list[ToolCall]  # in order; empty when the model answered in text only
    model: str  # the model that answered


class ProviderError(Exception):
    """The vendor answered an error (after the SDK's retries), could not be reached, or answered garbage.

    `str(error)` is a short readable message without secrets; `status` is the vendor's HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ProviderTimeout(ProviderError):
    """The vendor did not answer in time."""


# Helpers shared by both providers.


def user_message(prompt: str, context: dict | None) -> str:
    """The user turn: the prompt, then the caller's context (when there is any) as one JSON block of its own."""
    if not context:
        return prompt
    block = json.dumps(context, ensure_ascii=False, sort_keys=True, default=str)
    return f"{prompt}\n\nContext (JSON):\n{block}"


def parse_arguments(raw: Any) -> tuple[dict | None, str]:
    """A tool call's arguments as (dict, or None when they are not a JSON object; the text as sent).

    The wire format is JSON text; some OpenAI-compatible servers send an object instead, which is taken as it is.
    Empty text (sent by some local servers for a tool without parameters) counts as no arguments: {}."""
    if isinstance(raw, dict):
        return raw, json.dumps(raw, ensure_ascii=False)
    if raw is None:
        return {}, ""
    if not isinstance(raw, str):
        return None, _dump(raw)
    if not raw.strip():
        return {}, raw
    try:
        value = json.loads(raw)
    except ValueError:
        return None, raw
    return (value if isinstance(value, dict) else None), raw


def _dump(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _origin(url: str) -> str:
    """scheme://host[:port] of a URL, without any user info or path, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


class _Provider:
    """What both providers share: the settings, and turning SDK errors into ProviderError without secrets."""

    name = ""
    label = ""
    _sdk: Any  # the vendor's SDK module, imported by the subclass

    def __init__(self, base_url: str | None, api_key: str | None, model: str, timeout: float, max_retries: int):
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self._api_key = api_key or PLACEHOLDER_API_KEY

    def _clean(self, text: str) -> str:
        text = " ".join(str(text).split())
        if len(self._api_key) >= 6 and self._api_key != PLACEHOLDER_API_KEY:
            text = text.replace(self._api_key, "[redacted]")
        text = _KEYLIKE.sub("[redacted]", text)
        if len(text) > MAX_ERROR_CHARS:
            text = text[: MAX_ERROR_CHARS - 3] + "..."
        return text

    def _status_error(self, status: int, body: object, fallback: str) -> ProviderError:
        detail = _vendor_message(body) or fallback
        return ProviderError(f"{self.label} answered HTTP {status}: {self._clean(detail)}", status=status)

    def _connection_error(self, error: Exception) -> ProviderError:
        cause = error.__cause__ or error.__context__
        reason = str(cause) if cause is not None and str(cause) else "connection error"
        return ProviderError(f"could not reach {self.label} at {_origin(self._url)}: {self._clean(reason)}")

    def _timeout_error(self) -> ProviderTimeout:
        return ProviderTimeout(f"{self.label} at {_origin(self._url)} did not answer within {self.timeout:g}s")

    def _garbage(self, what: str) -> ProviderError:
        return ProviderError(f"{self.label} sent an answer that could not be read: {what}")

    def _failure(self, error: Exception) -> ProviderError | None:
        """The SDK's exception as ours (both vendors' SDKs have the same hierarchy); None for anything else."""
        sdk = self._sdk
        if isinstance(error, sdk.APITimeoutError):  # before APIConnectionError, of which it is a kind
            return self._timeout_error()
        if isinstance(error, sdk.APIStatusError):
            detail = getattr(error, "api_message", None) or error.message
            return self._status_error(error.status_code, error.body, detail)
        if isinstance(error, sdk.APIConnectionError):
            return self._connection_error(error)
        if isinstance(error, sdk.APIError):  # e.g. a response that failed validation
            return self._garbage(self._clean(error.message))
        if isinstance(error, ValueError):  # a body announced as JSON that is not
            return self._garbage("the body is not valid JSON")
        return None

    @property
    def _url(self) -> str:
        return str(self._client.base_url)


def _vendor_message(body: object) -> str:
    """The human-readable message of an error body, in OpenAI's, Anthropic's or a compatible server's format."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            message = inner.get("message")
            if isinstance(message, str) and message:
                return message
        elif isinstance(inner, str) and inner:
            return inner  # e.g. {"error": "model not found"}
        message = body.get("message") or body.get("detail")
        if isinstance(message, str):
            return message
        return ""
    if isinstance(body, str):
        return body
    return ""


# OpenAI and compatible servers.


class OpenAIProvider(_Provider):
    """Chat Completions with tools. Sends `max_tokens` (what every compatible server accepts); if the server refuses
    it in favour of `max_completion_tokens` (OpenAI's reasoning models), or refuses a non-default `temperature`, the
    request is sent again once without that parameter's problem, and later requests go the working way directly."""

    name = "openai"
    label = "the OpenAI-compatible server"

    def __init__(
        self, base_url: str | None, api_key: str | None, model: str, timeout: float, max_retries: int = 1
    ) -> None:
        super().__init__(base_url, api_key, model, timeout, max_retries)
        self._tokens_parameter = "max_tokens"
        self._send_temperature = True
        import openai  # noqa: PLC0415 (the SDK takes seconds to import; only a configured provider pays for it)

        self._sdk = openai
        self._client = openai.AsyncOpenAI(
            api_key=self._api_key,
            base_url=base_url or DEFAULT_OPENAI_BASE_URL,
            timeout=timeout,
            max_retries=max_retries,
        )

    async def propose(
        self,
        system: str,
        prompt: str,
        context: dict | None,
        tools: list[ToolSpec],
        max_tokens: int,
        temperature: float,
    ) -> ProviderAnswer:
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": user_message(prompt, context)})
        request: dict[str, Any] = {"model": self.model, "messages": messages}
        if tools:
            request["tools"] = [
                {
                    "type": "function",
                    "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
                }
                for tool in tools
            ]
            request["tool_choice"] = "auto"

        for _ in range(3):  # at most one extra request per parameter that the server refuses
            options = dict(request)
            options[self._tokens_parameter] = max_tokens
            if self._send_temperature:
                options["temperature"] = temperature
            try:
                completion = await self._client.chat.completions.create(**options)
            except Exception as error:
                if isinstance(error, self._sdk.BadRequestError) and self._adapt(error):
                    continue
                failure = self._failure(error)
                if failure is None:
                    raise
                raise failure from None
            return self._answer(completion)
        raise ProviderError(f"{self.label} refused every variant of the request")  # pragma: no cover

    def _adapt(self, error: openai.BadRequestError) -> bool:
        """Whether a 400 was about a parameter that can be changed (and changes it for this and later requests)."""
        param = error.param or ""
        message = _vendor_message(error.body).lower()
        if self._tokens_parameter == "max_tokens" and (
            param == "max_tokens" or ("max_tokens" in message and "max_completion_tokens" in message)
        ):
            self._tokens_parameter = "max_completion_tokens"
            return True
        if self._send_temperature and (
            param == "temperature" or ("temperature" in message and "unsupported" in message)
        ):
            self._send_temperature = False
            return True
        return False

    def _answer(self, completion: Any) -> ProviderAnswer:
        choices = getattr(completion, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise self._garbage("no choices")
        message = getattr(choices[0], "message", None)
        if message is None:
            raise self._garbage("no message in the first choice")
        calls: list[ToolCall] = []
        for call in getattr(message, "tool_calls", None) or []:
            function = getattr(call, "function", None)
            if getattr(call, "type", "function") != "function" or function is None:
                continue  # custom (free-form) tools are never offered, so never expected
            name = getattr(function, "name", None)
            if not isinstance(name, str) or not name:
                raise self._garbage("a tool call without a function name")
            arguments, raw = parse_arguments(getattr(function, "arguments", None))
            calls.append(ToolCall(name=name, arguments=arguments, raw=raw))
        legacy = getattr(message, "function_call", None)  # the deprecated single-call form of older servers
        if not calls and legacy is not None and isinstance(getattr(legacy, "name", None), str):
            arguments, raw = parse_arguments(getattr(legacy, "arguments", None))
            calls.append(ToolCall(name=legacy.name, arguments=arguments, raw=raw))
        text = _text(getattr(message, "content", None)) or _text(getattr(message, "refusal", None))
        model = getattr(completion, "model", None)
        return ProviderAnswer(text=text, calls=calls, model=model if isinstance(model, str) and model else self.model)

    async def aclose(self) -> None:
        await self._client.close()


def _text(content: Any) -> str:
    """Text content: a string, or (from some compatible servers) a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            text = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
            if isinstance(text, str):
                parts.append(text)
        return "".join(parts)
    return ""


# Anthropic.


class AnthropicProvider(_Provider):
    """The Messages API with tools.

    `temperature` is accepted and not sent: the current SDK (2.x) has no sampling parameters any more, and the API
    version it speaks (anthropic-version 2026-10-21) answers 400 to temperature, top_p or top_k, even at defaults.
    The SDK sends the key as `Authorization: Bearer`."""

    name = "anthropic"
    label = "Anthropic"

    def __init__(
        self, base_url: str | None, api_key: str | None, model: str, timeout: float, max_retries: int = 1
    ) -> None:
        super().__init__(base_url, api_key, model, timeout, max_retries)
        import anthropic  # noqa: PLC0415 (the SDK takes seconds to import; only a configured provider pays for it)

        self._sdk = anthropic
        self._client = anthropic.AsyncAnthropic(
            api_key=self._api_key,  # explicit, so that the SDK looks for no credentials in the environment or on disk
            base_url=base_url or DEFAULT_ANTHROPIC_BASE_URL,
            timeout=timeout,
            max_retries=max_retries,
        )

    async def propose(
        self,
        system: str,
        prompt: str,
        context: dict | None,
        tools: list[ToolSpec],
        max_tokens: int,
        temperature: float,  # noqa: ARG002 (see the class's docstring)
    ) -> ProviderAnswer:
        request: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": user_message(prompt, context)}],
        }
        if system:
            request["system"] = system
        if tools:
            request["tools"] = [
                {"name": tool.name, "description": tool.description, "input_schema": tool.parameters} for tool in tools
            ]
        try:
            message = await self._client.messages.create(**request)
        except Exception as error:
            failure = self._failure(error)
            if failure is None:
                raise
            raise failure from None
        return self._answer(message)

    def _answer(self, message: Any) -> ProviderAnswer:
        content = getattr(message, "content", None)
        if not isinstance(content, list):
            raise self._garbage("no content")
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in content:
            kind = getattr(block, "type", None)
            if kind == "text":
                text = getattr(block, "text", None)
                if isinstance(text, str) and text:
                    texts.append(text)
            elif kind == "tool_use":
                name = getattr(block, "name", None)
                if not isinstance(name, str) or not name:
                    raise self._garbage("a tool_use block without a name")
                input_ = getattr(block, "input", None)
                if isinstance(input_, dict):
                    calls.append(ToolCall(name=name, arguments=input_, raw=json.dumps(input_, ensure_ascii=False)))
                else:
                    calls.append(ToolCall(name=name, arguments=None, raw=_dump(input_)))
            # thinking, redacted_thinking and server-side tool blocks carry nothing for the planner
        model = getattr(message, "model", None)
        return ProviderAnswer(
            text="\n".join(texts), calls=calls, model=model if isinstance(model, str) and model else self.model
        )

    async def aclose(self) -> None:
        await self._client.close()
