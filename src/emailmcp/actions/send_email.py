from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from emailmcp.actions.base import Action, ActionContext
from emailmcp.mail.schemas import Address, HeaderText, MessageContent
from emailmcp.tenancy.schemas import Scope


class SendEmailParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: Annotated[list[Address], Field(min_length=1, description="Recipient addresses.")]
    cc: list[Address] = []
    bcc: list[Address] = []
    subject: Annotated[HeaderText, StringConstraints(max_length=998)] = ""
    body: Annotated[str, StringConstraints(min_length=1), Field(description="What the email says.")]
    body_type: Literal["text", "html"] = "text"
    reply_to: list[Address] = []
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = Field(
        default=None, description="Repeat the call with the same key and it sends once."
    )

    def content(self) -> MessageContent:
        return MessageContent.model_validate(self.model_dump(exclude={"idempotency_key"}))


async def send_email(ctx: ActionContext, params: SendEmailParams) -> dict:
    outbox = ctx.runtime.outbox
    if ctx.dry_run:
        return {"dry_run": True, **(await outbox.preview(ctx.tenant, ctx.user_id, params.content())).model_dump()}
    accepted = await outbox.enqueue(ctx.tenant, ctx.user_id, params.content(), ctx.entry_point, params.idempotency_key)
    return {"replayed": accepted.replayed, **accepted.message.model_dump(mode="json")}


ACTION = Action(
    name="send_email",
    description="Send an email from the user's own mailbox. It is queued at once and delivered by the service; "
    "the answer is the queued message with its id and status.",
    parameters=SendEmailParams,
    scope=Scope.mail,
    side_effects=True,
    handler=send_email,
)
