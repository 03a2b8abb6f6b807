from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

from emailmcp.actions.base import Action, ActionContext
from emailmcp.errors import NotFound
from emailmcp.mail import service as mail
from emailmcp.tenancy.schemas import Scope


class GetMessageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message_id: Annotated[str, StringConstraints(pattern=r"^msg_[0-9a-f]{1,28}$")]


async def get_message(ctx: ActionContext, params: GetMessageParams) -> dict:
    message = await mail.get_message(ctx.session, ctx.tenant, params.message_id)
    if message.user_id != ctx.user_id:  # another user's message is as unknown as a missing one
        raise NotFound(f"message {params.message_id!r}", code="message_not_found")
    return message.model_dump(mode="json")


ACTION = Action(
    name="get_message",
    description="One of the user's messages: its status, error if any, and every delivery attempt.",
    parameters=GetMessageParams,
    scope=Scope.mail,
    side_effects=False,
    handler=get_message,
)
