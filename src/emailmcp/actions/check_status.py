from pydantic import BaseModel, ConfigDict

from emailmcp import db
from emailmcp.actions.base import Action, ActionContext
from emailmcp.tenancy.schemas import Scope
from emailmcp.users import service as users


class CheckStatusParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


async def check_status(ctx: ActionContext, params: CheckStatusParams) -> dict:
    user = await users.find_user(ctx.session, ctx.tenant, ctx.user_id)
    mailbox = users.mailbox_out(user.mailbox if user else None)
    needs_reauth = mailbox.status == "needs_reauth"
    return {
        "service": "ok",
        "database": "ok" if await db.schema_is_current(ctx.runtime.engine) else "migrations_pending",
        "gmail_configured": ctx.runtime.google is not None,
        "user_exists": user is not None,
        "mailbox": mailbox.model_dump(mode="json"),
        "action_needed": "the user must connect their Gmail again" if needs_reauth else None,
    }


ACTION = Action(
    name="check_status",
    description="Whether the service works, and the user's mailbox: its type (gmail, smtp or none) and status "
    "(connected, needs_reauth, disconnected, not_connected).",
    parameters=CheckStatusParams,
    scope=Scope.mail,
    side_effects=False,
    handler=check_status,
)
