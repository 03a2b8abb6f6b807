from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from emailmcp.users.schemas import UserId


class InferenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="What the user asks for, in their words.")
    user_id: UserId = Field(description="The user the request is for; need not exist yet.")
    context: dict[str, Any] | None = Field(
        default=None, description="Facts the planner may use (given to LLM planners as data, not instructions)."
    )
    max_tokens: int = Field(default=1024, ge=1, le=32_000)
    temperature: float = Field(default=0.0, ge=0, le=2)
    provider: Literal["rules", "openai", "anthropic"] | None = Field(
        default=None, description="Another configured planner than the server's default."
    )


class PlanStep(BaseModel):
    action: str
    parameters: dict[str, Any]
    missing: list[str]


class InferenceOut(BaseModel):
    response: str = Field(description="A sentence for the user: what would be done, or what is needed.")
    action: str | None = Field(description="The first step's action; null when no action covers the request.")
    parameters: dict[str, Any] = Field(description="Every parameter of the action, defaults spelled out.")
    missing: list[str] = Field(description="Required parameters that could not be determined (e.g. ['to']).")
    plan: list[PlanStep] = Field(description="Every step in order; the first is action/parameters/missing.")
    provider: str
    model: str
    timestamp: datetime


class ActionInfo(BaseModel):
    name: str
    description: str
    parameters: dict[str, Any] = Field(description="JSON Schema of the action's parameters.")
    side_effects: bool
    scope: str


class Capabilities(BaseModel):
    capabilities: list[str] = Field(description="The action names.")
    actions: list[ActionInfo]
    provider: str
    model: str


class ExecuteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action_type: str = Field(max_length=64)
    user_id: UserId
    parameters: dict[str, Any] = {}
    dry_run: bool = Field(default=False, description="Check and describe what would be done without doing it.")


class ExecuteOut(BaseModel):
    status: Literal["success"] = "success"
    action: str
    dry_run: bool
    result: dict[str, Any]
