from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from emailmcp.db import TOKEN_PATTERN
from emailmcp.oauth import service as gmail
from emailmcp.openapi import ERROR_RESPONSES
from emailmcp.tenancy.dependencies import AdminContext, CurrentRuntime, MailContext, Session
from emailmcp.users import service
from emailmcp.users.schemas import USER_ID_PATTERN, MailboxOut, Profile, SmtpMailboxIn, UserCreate, UserOut, UserPage

router = APIRouter(prefix="/v1/users", tags=["users"], responses=ERROR_RESPONSES)

UserIdPath = Annotated[str, Path(pattern=USER_ID_PATTERN, description="Your identifier for the user.")]


@router.post(
    "",
    response_model=UserOut,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": UserOut, "description": "The user already existed."}},
)
async def create_user(body: UserCreate, ctx: MailContext, session: Session, response: Response) -> UserOut:
    """Creates the user, or updates the given fields of an existing one (201 created, 200 existed)."""
    user, created = await service.upsert_user(session, ctx, body)
    if not created:
        response.status_code = status.HTTP_200_OK
    return user


@router.get("", response_model=UserPage)
async def list_users(
    ctx: MailContext,
    session: Session,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(pattern=TOKEN_PATTERN)] = None,
) -> UserPage:
    return await service.list_users(session, ctx, cursor, limit)


@router.get("/{user_id}/profile", response_model=Profile)
async def get_profile(user_id: UserIdPath, ctx: MailContext, session: Session) -> Profile:
    return await service.get_profile(session, ctx, user_id)


@router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_user(user_id: UserIdPath, ctx: AdminContext, session: Session, runtime: CurrentRuntime) -> None:
    """Erases the user and everything of theirs (mailbox and credentials included), revoking their Gmail access
    at Google first."""
    grant = gmail.grant_token(ctx, runtime.vault, await service.get_user(session, ctx, user_id))
    await gmail.revoke_grant(runtime.google, grant)
    await service.delete_user(session, ctx, user_id)


@router.get("/{user_id}/mailbox", response_model=MailboxOut)
async def get_mailbox(user_id: UserIdPath, ctx: MailContext, session: Session) -> MailboxOut:
    """The user's mailbox, never with its secrets."""
    return await service.get_mailbox(session, ctx, user_id)


@router.put("/{user_id}/mailbox", response_model=MailboxOut)
async def set_mailbox(
    user_id: UserIdPath, body: SmtpMailboxIn, ctx: AdminContext, session: Session, runtime: CurrentRuntime
) -> MailboxOut:
    """Sets the user's own SMTP mailbox; the password is encrypted at rest and never returned. A Gmail connection
    it replaces is revoked at Google."""
    return await gmail.replace_with_smtp(
        session, ctx, runtime.google, runtime.vault, user_id, body, runtime.settings.smtp_allow_private_hosts
    )


@router.delete("/{user_id}/mailbox", status_code=status.HTTP_204_NO_CONTENT)
async def delete_mailbox(user_id: UserIdPath, ctx: AdminContext, session: Session, runtime: CurrentRuntime) -> None:
    """Removes the user's mailbox; a Gmail connection is revoked at Google first."""
    await gmail.remove_mailbox(session, ctx, runtime.google, runtime.vault, user_id)
