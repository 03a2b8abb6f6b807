"""SQL for end users and mailboxes. Every function takes the tenant context and filters by it."""

from datetime import datetime

from sqlalchemy import Row, bindparam, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import joinedload

from emailmcp.db import utcnow
from emailmcp.mail.models import Message
from emailmcp.mail.schemas import MessageStatus
from emailmcp.tenancy.schemas import TenantContext
from emailmcp.users.models import EndUser, Mailbox


async def get_user(session: AsyncSession, ctx: TenantContext, user_id: str) -> EndUser | None:
    return await session.scalar(
        select(EndUser)
        .where(EndUser.tenant_id == ctx.tenant_id, EndUser.user_id == user_id)
        .options(joinedload(EndUser.mailbox))
    )


async def insert_user_if_absent(session: AsyncSession, ctx: TenantContext, user_id: str, **fields: object) -> bool:
    """Inserts the user unless the tenant has one with this id; True when inserted. Safe under races."""
    dialect = postgresql if session.bind.dialect.name == "postgresql" else sqlite
    now = utcnow()
    statement = (
        dialect.insert(EndUser)
        .values(tenant_id=ctx.tenant_id, user_id=user_id, created_at=now, updated_at=now, **fields)
        .on_conflict_do_nothing(index_elements=["tenant_id", "user_id"])
        .returning(EndUser.id)
    )
    return (await session.execute(statement)).scalar() is not None


def _recent_messages(aggregate):
    """Over the user's non-cancelled messages queued since :since (correlated to the outer EndUser row)."""
    return (
        select(aggregate)
        .where(
            Message.tenant_id == EndUser.tenant_id,
            Message.user_pk == EndUser.id,
            Message.created_at >= bindparam("since", type_=Message.created_at.type),
            Message.status != "cancelled",
        )
        .scalar_subquery()
    )


# Built once: constructing a statement costs more than running it, and these run for every batch of sends.
_SENDERS = (
    select(
        EndUser.id,
        EndUser.user_id,
        EndUser.email,
        EndUser.display_name,
        Mailbox.type.label("mailbox_type"),
        Mailbox.status.label("mailbox_status"),
        Mailbox.from_address.label("mailbox_from_address"),
        _recent_messages(func.count()).label("recent_count"),
        _recent_messages(func.min(Message.created_at)).label("recent_oldest"),
    )
    .outerjoin(Mailbox, Mailbox.user_pk == EndUser.id)
    .where(EndUser.tenant_id == bindparam("tenant_id"), EndUser.user_id.in_(bindparam("user_ids", expanding=True)))
)
_INSERT_USERS = {
    dialect.dialect.name: dialect.insert(EndUser).on_conflict_do_nothing(index_elements=["tenant_id", "user_id"])
    for dialect in (postgresql, sqlite)
}


async def insert_users_if_absent(connection: AsyncConnection, ctx: TenantContext, user_ids: list[str]) -> None:
    """Creates those of the tenant's users that do not exist yet, in one statement. Safe under races."""
    now = utcnow()
    await connection.execute(
        _INSERT_USERS[connection.dialect.name],
        [dict(tenant_id=ctx.tenant_id, user_id=user_id, created_at=now, updated_at=now) for user_id in user_ids],
    )


async def get_senders(
    connection: AsyncConnection, ctx: TenantContext, user_ids: list[str], since: datetime
) -> dict[str, Row]:
    """What a send needs of each user, by user_id, in one query: the user, their mailbox, and how many
    non-cancelled messages they queued since `since` with the oldest one's time."""
    rows = await connection.execute(_SENDERS, {"tenant_id": ctx.tenant_id, "user_ids": user_ids, "since": since})
    return {row.user_id: row for row in rows}


async def list_users(session: AsyncSession, ctx: TenantContext, after_pk: int, limit: int) -> list[EndUser]:
    return list(
        await session.scalars(
            select(EndUser)
            .where(EndUser.tenant_id == ctx.tenant_id, EndUser.id > after_pk)
            .order_by(EndUser.id)
            .limit(limit)
            .options(joinedload(EndUser.mailbox))
        )
    )


async def delete_user(session: AsyncSession, ctx: TenantContext, user: EndUser) -> None:
    await session.execute(delete(EndUser).where(EndUser.tenant_id == ctx.tenant_id, EndUser.id == user.id))


async def save_mailbox(session: AsyncSession, ctx: TenantContext, user: EndUser, **fields: object) -> Mailbox:
    mailbox = user.mailbox
    if mailbox is None:
        mailbox = Mailbox(user_pk=user.id, tenant_id=ctx.tenant_id)
        session.add(mailbox)
        user.mailbox = mailbox
    for name, value in fields.items():
        setattr(mailbox, name, value)
    await session.flush()
    return mailbox


async def delete_mailbox(session: AsyncSession, ctx: TenantContext, user: EndUser) -> None:
    await session.execute(delete(Mailbox).where(Mailbox.tenant_id == ctx.tenant_id, Mailbox.user_pk == user.id))


async def sending_stats(session: AsyncSession, ctx: TenantContext, user: EndUser) -> tuple[int, datetime | None]:
    """How many of the user's messages were sent (the `successful` of an all_time report), and when they last
    asked to send one."""
    row = (
        await session.execute(
            select(func.count().filter(Message.status == MessageStatus.sent), func.max(Message.created_at)).where(
                Message.tenant_id == ctx.tenant_id, Message.user_pk == user.id
            )
        )
    ).one()
    return row[0], row[1]


async def count_mailboxes(session: AsyncSession) -> dict[tuple[str, str], int]:
    """Mailboxes of every tenant by (type, status), for /metrics."""
    rows = await session.execute(
        select(Mailbox.type, Mailbox.status, func.count()).group_by(Mailbox.type, Mailbox.status)
    )
    return {(type_, status): count for type_, status, count in rows.all()}
