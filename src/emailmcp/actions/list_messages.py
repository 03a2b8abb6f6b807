from pydantic import BaseModel, ConfigDict, Field

from emailmcp.actions.base import Action, ActionContext
from emailmcp.mail import service as mail
from emailmcp.mail.schemas import StatusFilter
from emailmcp.tenancy.schemas import Scope


class ListMessagesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: StatusFilter | None = Field(
        default=None, description="Only messages with this status; pending means scheduled, queued or sending."
    )
    limit: int = Field(default=10, ge=1, le=mail.MAX_PAGE, description="How many, newest first.")


async def list_messages(ctx: ActionContext, params: ListMessagesParams) -> dict:
    page = await mail.list_messages(ctx.session, ctx.tenant, ctx.user_id, params.status, None, params.limit)
    return {"messages": [message.model_dump(mode="json") for message in page.messages]}


ACTION = Action(
    name="list_messages",
    description="The user's most recent messages sent through this service (not their inbox), newest first.",
    parameters=ListMessagesParams,
    scope=Scope.mail,
    side_effects=False,
    handler=list_messages,
)
