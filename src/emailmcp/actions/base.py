"""What an action is: the one definition every agent-facing entry point derives from."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from emailmcp.mail.schemas import EntryPoint
from emailmcp.tenancy.schemas import Scope, TenantContext

if TYPE_CHECKING:  # the runtime holds the planners, which are built from the actions
    from emailmcp.runtime import Runtime


@dataclass(frozen=True)
class ActionContext:
    """Who an action runs for: the tenant (from a key with the action's scope), its user, and the entry point."""

    runtime: "Runtime"
    session: AsyncSession
    tenant: TenantContext
    user_id: str
    entry_point: EntryPoint
    dry_run: bool = False


@dataclass(frozen=True)
class Action:
    name: str
    description: str
    parameters: type[BaseModel]  # its JSON Schema is the contract for LLM tools, MCP tools and execute-action
    scope: Scope  # the scope a key needs to run it
    side_effects: bool  # False: it only reads (MCP read-only hint; safe to run without confirmation)
    handler: Callable[[ActionContext, Any], Awaitable[dict]]  # takes the validated parameters model

    def schema(self) -> dict:
        return self.parameters.model_json_schema()
