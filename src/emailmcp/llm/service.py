"""Planning (POST /llm/inference) and running (POST /llm/execute-action) actions for agents."""

import structlog
from pydantic import ValidationError

from emailmcp.actions import registry
from emailmcp.actions.base import ActionContext
from emailmcp.db import utcnow
from emailmcp.errors import APIError, InvalidField
from emailmcp.llm.planners import Planner, Proposal, RulesPlanner, Step, build_planner
from emailmcp.llm.providers import ProviderError, ProviderTimeout
from emailmcp.llm.schemas import ActionInfo, Capabilities, InferenceIn, InferenceOut, PlanStep
from emailmcp.settings import Settings

log = structlog.get_logger(__name__)

_ADDRESS_FIELDS = ("to", "cc", "bcc", "reply_to")
# Placeholders for required parameters a planner could not determine, so `parameters` always has every key.
_UNKNOWN = {"to": [], "body": "", "message_id": ""}


class Planners:
    """The planners this server is configured for: `rules` always, plus EMAILMCP_LLM_PROVIDER's."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.default = settings.llm_provider
        self._planners: dict[str, Planner] = {"rules": RulesPlanner()}
        if self.default != "rules":
            self._planners[self.default] = build_planner(settings, self.default)

    def get(self, name: str | None) -> Planner:
        planner = self._planners.get(name or self.default)
        if planner is None:
            raise InvalidField("provider", f"{name!r} is not configured here; available: {', '.join(self._planners)}")
        return planner

    async def close(self) -> None:
        for planner in self._planners.values():
            if hasattr(planner, "aclose"):
                await planner.aclose()


def capabilities(planners: Planners) -> Capabilities:
    planner = planners.get(None)
    return Capabilities(
        capabilities=list(registry.ACTIONS),
        actions=[
            ActionInfo(
                name=a.name,
                description=a.description,
                parameters=a.schema(),
                side_effects=a.side_effects,
                scope=a.scope.value,
            )
            for a in registry.ACTIONS.values()
        ],
        provider=planner.name,
        model=planner.model,
    )


def checked_step(step: Step) -> PlanStep | None:
    """A proposed step as the registry accepts it: every parameter spelled out with its default, addresses as
    lower-cased lists, and what does not validate reported in `missing`. None for an action that does not exist."""
    action = registry.ACTIONS.get(step.action)
    if action is None:
        return None
    model = action.parameters
    given = {k: v for k, v in step.parameters.items() if k in model.model_fields and k not in step.missing}
    for name in _ADDRESS_FIELDS:
        if isinstance(given.get(name), str):
            given[name] = [given[name]] if given[name] else []
        if isinstance(given.get(name), list):
            given[name] = [str(a).strip().lower() for a in given[name] if str(a).strip()]
    missing = list(step.missing)
    try:
        parameters = model.model_validate(given).model_dump(mode="json")
    except ValidationError as exc:
        bad = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
        missing += [name for name in model.model_fields if name in bad and name not in missing]
        kept = {k: v for k, v in given.items() if k not in bad}
        parameters = {
            name: kept.get(
                name, _UNKNOWN.get(name) if field.is_required() else field.get_default(call_default_factory=True)
            )
            for name, field in model.model_fields.items()
        }
        parameters = {k: (v.value if hasattr(v, "value") else v) for k, v in parameters.items()}
    return PlanStep(action=action.name, parameters=parameters, missing=missing)


def _with_figures_first(steps: list[PlanStep]) -> list[PlanStep]:
    """The seed's rule: a report with no recipient yet shows the figures first (get_analytics, then send_report)."""
    if steps and steps[0].action == "send_report" and "to" in steps[0].missing:
        window = {k: steps[0].parameters[k] for k in ("time_range", "start_date", "end_date")}
        return [PlanStep(action="get_analytics", parameters=window, missing=[]), *steps]
    return steps


async def infer(planners: Planners, request: InferenceIn) -> InferenceOut:
    settings = planners.settings
    if len(request.prompt) > settings.llm_max_prompt_chars:
        raise InvalidField("prompt", f"at most {settings.llm_max_prompt_chars} characters")
    planner = planners.get(request.provider)
    proposal, provider = await _propose(planners, planner, request)
    steps = _with_figures_first([s for s in map(checked_step, proposal.steps) if s is not None])
    first = steps[0] if steps else None
    return InferenceOut(
        response=proposal.response or _describe(steps),
        action=first.action if first else None,
        parameters=first.parameters if first else {},
        missing=first.missing if first else [],
        plan=steps,
        provider=provider,
        model=planner.model if provider == planner.name else RulesPlanner.model,
        timestamp=utcnow(),
    )


async def _propose(planners: Planners, planner: Planner, request: InferenceIn) -> tuple[Proposal, str]:
    try:
        proposal = await planner.propose(request.prompt, request.context, request.max_tokens, request.temperature)
        return proposal, planner.name
    except ProviderError as exc:
        log.warning("planner_failed", provider=planner.name, error=str(exc))
        if planners.settings.llm_fallback == "rules":
            fallback = planners.get("rules")
            return await fallback.propose(request.prompt, request.context, 0, 0.0), "rules"
        if isinstance(exc, ProviderTimeout):
            raise APIError(504, "planner_timeout", f"The {planner.name} planner did not answer in time.") from None
        raise APIError(502, "planner_failed", f"The {planner.name} planner failed: {exc}") from None


def _describe(steps: list[PlanStep]) -> str:
    if not steps:
        return (
            "I can send an email, email an analytics report, show your email analytics, check your mailbox "
            "connection, list your recent messages or look up one message."
        )
    first = steps[0]
    if first.missing:
        return f"To {first.action.replace('_', ' ')} I still need: {', '.join(first.missing)}."
    return f"Ready to {first.action.replace('_', ' ')}."


async def execute(ctx: ActionContext, action_type: str, parameters: dict) -> dict:
    return await registry.run(registry.get(action_type), ctx, parameters)
