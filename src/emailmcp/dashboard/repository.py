from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from emailmcp.dashboard.models import DashboardSession


async def add_session(session: AsyncSession, row: DashboardSession) -> None:
    session.add(row)
    await session.flush()


async def get_live_session(session: AsyncSession, session_id: str, now: datetime) -> DashboardSession | None:
    return await session.scalar(
        select(DashboardSession).where(DashboardSession.id == session_id, DashboardSession.expires_at > now)
    )


async def delete_session(session: AsyncSession, session_id: str) -> None:
    await session.execute(delete(DashboardSession).where(DashboardSession.id == session_id))


async def delete_expired_sessions(session: AsyncSession, now: datetime) -> None:
    await session.execute(delete(DashboardSession).where(DashboardSession.expires_at <= now))
