from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints

from emailmcp.users.schemas import MailboxOut, UserId


class AuthorizeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: UserId = Field(description="Your identifier for the user; created if it does not exist yet.")
    redirect_uri: str | None = Field(
        default=None,
        max_length=2000,
        description="Where the user's browser returns after connecting: one of the tenant's `oauth_return_urls`. "
        "Without it, the callback answers a small page saying the mailbox is connected.",
    )
    login_hint: EmailStr | None = Field(
        default=None, description="Preselects this Google account on the consent screen."
    )


class AuthorizeOut(BaseModel):
    authorization_url: str = Field(description="Send the user's browser here to connect their Gmail account.")
    state: str = Field(description="Single-use; travels through Google back to the callback.")
    expires_at: datetime = Field(description="The consent must be completed before this time.")


class CallbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    state: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class ConnectedOut(BaseModel):
    user_id: str
    status: str = Field(description="`connected`.")
    email: str = Field(description="The connected Gmail address; mail from this user is sent from it.")
    mailbox: MailboxOut


class DisconnectedOut(BaseModel):
    user_id: str
    status: str = Field(description="`disconnected`.")
    revoked: bool = Field(description="Whether Google confirmed the revocation; the tokens are erased either way.")
