"""SQL for consent states and the Gmail tokens kept on mailboxes."""

from datetime import datetime

from sqlalchemy import Row, bindparam, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import joinedload

from emailmcp.oauth.models import OAuthState
from emailmcp.tenancy.schemas import TenantContext
from emailmcp.users.models import EndUser, Mailbox
from emailmcp.users.schemas import MailboxStatus


async def add_state(session: AsyncSession, state: OAuthState) -> None:
    session.add(state)
    await session.flush()


async def forget_expired_states(session: AsyncSession, ctx: TenantContext, now: datetime) -> None:
    await session.execute(delete(OAuthState).where(OAuthState.tenant_id == ctx.tenant_id, OAuthState.expires_at < now))


async def take_state(session: AsyncSession, state_id: str, tenant_id: int | None) -> Row | None:
    """Deletes and returns the state: whoever deletes it first is its only user.

    `tenant_id` restricts the match to one tenant (the authenticated callback); another tenant's state is then
    left alone, as if unknown.
    """
    condition = OAuthState.id == state_id
    if tenant_id is not None:
        condition = condition & (OAuthState.tenant_id == tenant_id)
    statement = (
        delete(OAuthState)
        .where(condition)
        .returning(
            OAuthState.id,
            OAuthState.tenant_id,
            OAuthState.user_pk,
            OAuthState.return_url,
            OAuthState.code_verifier,
            OAuthState.expires_at,
            OAuthState.api_key_id,
        )
    )
    return (await session.execute(statement)).one_or_none()


async def get_user_by_pk(session: AsyncSession, ctx: TenantContext, user_pk: int) -> EndUser | None:
    return await session.scalar(
        select(EndUser)
        .where(EndUser.tenant_id == ctx.tenant_id, EndUser.id == user_pk)
        .options(joinedload(EndUser.mailbox))
    )


_TOKENS = select(
    Mailbox.user_pk,
    Mailbox.tenant_id,
    Mailbox.type,
    Mailbox.from_address,
    Mailbox.status,
    Mailbox.connected_at,
    Mailbox.oauth_access_token,
    Mailbox.oauth_refresh_token,
    Mailbox.oauth_expires_at,
    Mailbox.oauth_refreshing_until,
).where(Mailbox.user_pk == bindparam("user_pk"))


async def get_tokens(conn: AsyncConnection, user_pk: int) -> Row | None:
    """The mailbox's state and tokens as stored now."""
    return (await conn.execute(_TOKENS, {"user_pk": user_pk})).one_or_none()


async def claim_refresh(
    conn: AsyncConnection, user_pk: int, connected_at: datetime, now: datetime, until: datetime
) -> bool:
    """Takes the right to refresh this connection's token until `until`, unless another process holds it."""
    result = await conn.execute(
        update(Mailbox)
        .where(
            Mailbox.user_pk == user_pk,
            Mailbox.connected_at == connected_at,
            Mailbox.status == MailboxStatus.connected,
            or_(Mailbox.oauth_refreshing_until.is_(None), Mailbox.oauth_refreshing_until < now),
        )
        .values(oauth_refreshing_until=until)
    )
    return result.rowcount == 1


async def store_refreshed(
    conn: AsyncConnection,
    user_pk: int,
    connected_at: datetime,
    access_token: str,
    refresh_token: str | None,
    expires_at: datetime,
) -> None:
    """Keeps a refreshed token, and the new refresh token when the provider rotated it; ends the refresh."""
    values = {"oauth_access_token": access_token, "oauth_expires_at": expires_at, "oauth_refreshing_until": None}
    if refresh_token is not None:
        values["oauth_refresh_token"] = refresh_token
    await conn.execute(
        update(Mailbox).where(Mailbox.user_pk == user_pk, Mailbox.connected_at == connected_at).values(values)
    )


async def end_refresh(conn: AsyncConnection, user_pk: int, connected_at: datetime) -> None:
    await conn.execute(
        update(Mailbox)
        .where(Mailbox.user_pk == user_pk, Mailbox.connected_at == connected_at)
        .values(oauth_refreshing_until=None)
    )


async def mark_needs_reauth(conn: AsyncConnection, user_pk: int, connected_at: datetime) -> bool:
    """The grant is gone (revoked, expired, password changed): the tokens are useless, the user must reconnect.

    False when the connection was replaced, or marked already, meanwhile."""
    result = await conn.execute(
        update(Mailbox)
        .where(
            Mailbox.user_pk == user_pk,
            Mailbox.connected_at == connected_at,
            Mailbox.status != MailboxStatus.needs_reauth,
        )
        .values(
            status=MailboxStatus.needs_reauth,
            oauth_access_token=None,
            oauth_refresh_token=None,
            oauth_expires_at=None,
            oauth_refreshing_until=None,
        )
    )
    return result.rowcount == 1
