"""Planners turn a prompt into proposed steps. They only propose: `service.infer` checks every step against the
action registry, and only /llm/execute-action (through the registry) ever acts."""

from dataclasses import dataclass
from typing import Protocol

from emailmcp.actions.registry import ACTIONS
from emailmcp.llm import rules
from emailmcp.llm.providers import AnthropicProvider, OpenAIProvider, ProviderAnswer, ToolSpec
from emailmcp.llm.rules import Step
from emailmcp.settings import Settings


@dataclass(frozen=True)
class Proposal:
    """What a planner proposes: steps in the shape of rules.Step, not yet checked against the registry."""

    response: str
    steps: list[Step]


class Planner(Protocol):
    name: str
    model: str

    async def propose(self, prompt: str, context: dict | None, max_tokens: int, temperature: float) -> Proposal: ...


class RulesPlanner:
    """Offline and deterministic: a grammar of the requests people make (llm/rules.py)."""

    name = "rules"
    model = "rules-v1"

    async def propose(self, prompt: str, context: dict | None, max_tokens: int, temperature: float) -> Proposal:
        plan = rules.plan_prompt(prompt)
        return Proposal(plan.response, plan.steps)


SYSTEM_PROMPT = """You plan actions for EmailMCP, a service that sends email from the user's own mailbox and \
reports on the email sent through it. Call the tools that do what the user asks, in order, or answer in text when \
no tool fits. You only propose; the application decides whether to run the calls.

Rules:
- Only use email addresses the user wrote. Never invent one. If the recipient's address is unknown, still call the \
tool and leave `to` empty.
- Requests about figures ("how many", "success rate", "stats", "report") are get_analytics. Sending the figures to \
someone with a known address is send_report. Sending the figures without a known address: call get_analytics, then \
send_report with `to` empty.
- Content the user dictates ("tell ana@example.com that ...") is send_email: put the dictated text in `body`, a short \
`subject` summarising it, and never put addresses or the words "subject:" or "body:" in them.
- "Which", "show" or "list" of messages is list_messages. "My emails" means mail sent through EmailMCP; it cannot \
read or delete anyone's inbox.
- Calendar periods map to the nearest rolling range: this week -> last_7_days, this month -> last_30_days, this \
quarter or the past three months -> last_90_days.
- For anything else (chit-chat, other channels such as calls or SMS, reading or deleting mail), do not call a tool: \
answer briefly with what you can do: send an email, email an analytics report, show analytics, check the \
connection, list recent messages, look up a message."""


def tool_specs() -> list[ToolSpec]:
    return [ToolSpec(a.name, a.description, a.schema()) for a in ACTIONS.values()]


class ToolPlanner:
    """An LLM with native tool calling, the registry's actions as its tools."""

    def __init__(self, provider: OpenAIProvider | AnthropicProvider, model: str) -> None:
        self._provider = provider
        self.name = provider.name
        self.model = model
        self._tools = tool_specs()

    async def propose(self, prompt: str, context: dict | None, max_tokens: int, temperature: float) -> Proposal:
        answer: ProviderAnswer = await self._provider.propose(
            SYSTEM_PROMPT, prompt, context, self._tools, max_tokens, temperature
        )
        steps = []
        for call in answer.calls:
            if call.arguments is None:  # not JSON: every parameter the action requires is unknown
                required = ACTIONS[call.name].schema().get("required", []) if call.name in ACTIONS else []
                steps.append(Step(call.name, {}, list(required)))
            else:
                steps.append(Step(call.name, call.arguments, []))
        return Proposal(answer.text, steps)

    async def aclose(self) -> None:
        await self._provider.aclose()


def build_planner(settings: Settings, name: str) -> RulesPlanner | ToolPlanner:
    if name == "rules":
        return RulesPlanner()
    api_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    provider_class = OpenAIProvider if name == "openai" else AnthropicProvider
    provider = provider_class(settings.llm_base_url, api_key, settings.llm_model, settings.llm_timeout_seconds)
    return ToolPlanner(provider, settings.llm_model)
