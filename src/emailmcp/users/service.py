"""End users and the mailboxes they send from."""

import base64
import binascii
from datetime import datetime

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from emailmcp.db import utcnow
from emailmcp.errors import InvalidField, NotFound
from emailmcp.network import resolve_public_host
from emailmcp.tenancy.schemas import TenantContext
from emailmcp.users import repository
from emailmcp.users.models import EndUser, Mailbox
from emailmcp.users.schemas import (
    MailboxOut,
    MailboxStatus,
    MailboxType,
    Profile,
    SmtpMailboxIn,
    SmtpSettingsOut,
    UserCreate,
    UserOut,
    UserPage,
)
from emailmcp.vault import SecretContext, Vault
from emailmcp.webhooks.events import emit, mailbox_disconnected, mailbox_event
from emailmcp.webhooks.schemas import EventType

MAX_PAGE = 200


def mailbox_out(mailbox: Mailbox | None) -> MailboxOut:
    if mailbox is None:
        return MailboxOut(type=MailboxType.none, status=MailboxStatus.not_connected)
    smtp = None
    if mailbox.type == MailboxType.smtp:
        smtp = SmtpSettingsOut(
            host=mailbox.smtp_host,
            port=mailbox.smtp_port,
            security=mailbox.smtp_security,
            username=mailbox.smtp_username,
            password_set=mailbox.smtp_password is not None,
        )
    return MailboxOut(
        type=mailbox.type,
        status=mailbox.status,
        from_address=mailbox.from_address,
        connected_at=mailbox.connected_at,
        smtp=smtp,
    )


def user_out(user: EndUser) -> UserOut:
    return UserOut(
        user_id=user.user_id,
        email=user.email,
        display_name=user.display_name,
        created_at=user.created_at,
        mailbox=mailbox_out(user.mailbox),
    )


async def get_user(session: AsyncSession, ctx: TenantContext, user_id: str) -> EndUser:
    user = await repository.get_user(session, ctx, user_id)
    if user is None:
        raise NotFound(f"user {user_id!r}", code="user_not_found")
    return user


async def find_user(session: AsyncSession, ctx: TenantContext, user_id: str) -> EndUser | None:
    return await repository.get_user(session, ctx, user_id)


async def ensure_user(session: AsyncSession, ctx: TenantContext, user_id: str) -> EndUser:
    """The tenant's user with this id, created if it does not exist yet (implicit creation).

    Reads first: most calls are for existing users, and a read takes no write lock on SQLite.
    """
    user = await repository.get_user(session, ctx, user_id)
    if user is None:
        await repository.insert_user_if_absent(session, ctx, user_id)
        user = await get_user(session, ctx, user_id)
    return user


async def find_senders(
    connection: AsyncConnection, ctx: TenantContext, user_ids: list[str], since: datetime
) -> dict[str, Row]:
    """The rows a send needs of these users (see `repository.get_senders`); users that do not exist are missing."""
    return await repository.get_senders(connection, ctx, user_ids, since)


async def ensure_senders(
    connection: AsyncConnection, ctx: TenantContext, user_ids: list[str], since: datetime
) -> dict[str, Row]:
    """`ensure_user` for many users at once, as the rows a send needs (see `repository.get_senders`)."""
    senders = await repository.get_senders(connection, ctx, user_ids, since)
    missing = [user_id for user_id in user_ids if user_id not in senders]
    if missing:
        await repository.insert_users_if_absent(connection, ctx, missing)
        senders |= await repository.get_senders(connection, ctx, missing, since)
    return senders


async def upsert_user(session: AsyncSession, ctx: TenantContext, data: UserCreate) -> tuple[UserOut, bool]:
    """Creates the user, or updates the fields given for an existing one. True when created."""
    fields = {"email": data.email, "display_name": data.display_name}
    created = await repository.insert_user_if_absent(session, ctx, data.user_id, **fields)
    user = await get_user(session, ctx, data.user_id)
    if not created:
        for name, value in fields.items():
            if value is not None:
                setattr(user, name, value)
    await session.commit()
    return user_out(user), created


def _encode_cursor(pk: int) -> str:
    return base64.urlsafe_b64encode(f"u{pk}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if raw.startswith("u") and raw[1:].isdigit():
            return int(raw[1:])
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise InvalidField("cursor", "not a cursor returned by this endpoint")


async def list_users(session: AsyncSession, ctx: TenantContext, cursor: str | None, limit: int) -> UserPage:
    after = _decode_cursor(cursor) if cursor else 0
    users = await repository.list_users(session, ctx, after, limit + 1)
    next_cursor = _encode_cursor(users[limit - 1].id) if len(users) > limit else None
    return UserPage(users=[user_out(user) for user in users[:limit]], next_cursor=next_cursor)


async def get_profile(session: AsyncSession, ctx: TenantContext, user_id: str) -> Profile:
    user = await get_user(session, ctx, user_id)
    total_sent, last_send = await repository.sending_stats(session, ctx, user)
    mailbox = user.mailbox
    gmail_connected = (
        mailbox is not None and mailbox.type == MailboxType.gmail and mailbox.status == MailboxStatus.connected
    )
    return Profile(
        user_id=user.user_id,
        email_address=(mailbox.from_address if mailbox else None) or user.email,
        display_name=user.display_name,
        gmail_connected=gmail_connected,
        connection_date=mailbox.connected_at if mailbox else None,
        last_used=last_send,
        total_emails_sent=total_sent,
        created_at=user.created_at,
        mailbox=mailbox_out(mailbox),
    )


async def delete_user(session: AsyncSession, ctx: TenantContext, user_id: str) -> None:
    """Erases the user and, through the database's cascades, everything of theirs."""
    user = await get_user(session, ctx, user_id)
    await emit(session, mailbox_disconnected(user.mailbox, "user_deleted"))
    await repository.delete_user(session, ctx, user)
    await session.commit()


async def get_mailbox(session: AsyncSession, ctx: TenantContext, user_id: str) -> MailboxOut:
    return mailbox_out((await get_user(session, ctx, user_id)).mailbox)


async def set_smtp_mailbox(
    session: AsyncSession,
    ctx: TenantContext,
    vault: Vault,
    user_id: str,
    data: SmtpMailboxIn,
    allow_private_hosts: bool,
) -> MailboxOut:
    """Stores the user's own SMTP mailbox; the password only as a vault ciphertext bound to this row."""
    if not allow_private_hosts:
        try:
            await resolve_public_host(data.host, data.port)
        except ValueError as exc:
            raise InvalidField("host", str(exc), code="host_not_allowed") from None
    user = await ensure_user(session, ctx, user_id)
    password = None
    if data.password is not None:
        password = vault.encrypt(
            data.password, SecretContext(Mailbox.__tablename__, "smtp_password", ctx.tenant_id, user.id)
        )
    mailbox = await repository.save_mailbox(
        session,
        ctx,
        user,
        type=MailboxType.smtp.value,
        status=MailboxStatus.connected.value,
        connected_at=utcnow(),
        from_address=str(data.from_address),
        smtp_host=data.host,
        smtp_port=data.port,
        smtp_security=data.security.value,
        smtp_username=data.username,
        smtp_password=password,
        oauth_access_token=None,
        oauth_refresh_token=None,
        oauth_expires_at=None,
        oauth_refreshing_until=None,
    )
    await emit(session, [mailbox_event(EventType.mailbox_connected, mailbox, MailboxStatus.connected)])
    await session.commit()
    return mailbox_out(mailbox)


async def delete_mailbox(session: AsyncSession, ctx: TenantContext, user_id: str) -> None:
    user = await get_user(session, ctx, user_id)
    if user.mailbox is None:
        raise NotFound(f"a mailbox for user {user_id!r}", code="mailbox_not_found")
    await emit(session, mailbox_disconnected(user.mailbox, "removed"))
    await repository.delete_mailbox(session, ctx, user)
    await session.commit()
