"""Database engine, sessions, shared column types and the migrations runner."""

import asyncio
import fcntl
import os
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, DateTime, MetaData, Select, bindparam, event, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from emailmcp.settings import Settings

_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Any fixed 64-bit number; every replica must use the same one.
_MIGRATION_LOCK_ID = zlib.crc32(b"emailmcp-migrations")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_NAMING)


def utcnow() -> datetime:
    return datetime.now(UTC)


def longest_due_ids(id_column, due_column, kinds: list[tuple]) -> Select:
    """The ids of the `limit` (a bind parameter) rows due longest, among several kinds of due rows (each a tuple of
    conditions): the claim of an outbox.

    Each kind is read in index order and cut at `limit` before the merge, so a claim reads a few index entries
    rather than sorting the whole backlog. FOR UPDATE SKIP LOCKED on PostgreSQL (SQLite leaves it out)."""
    firsts = []
    for conditions in kinds:
        first = (
            select(id_column, due_column)
            .where(*conditions)
            .order_by(due_column)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
            .subquery()
        )
        firsts.append(select(first.c[id_column.name], first.c[due_column.name]))
    due = firsts[0].union_all(*firsts[1:]).subquery()
    return select(due.c[id_column.name]).order_by(due.c[due_column.name]).limit(bindparam("limit"))


# What an id or cursor from a client may hold before it reaches a query: printable ASCII, so no NUL (PostgreSQL can
# neither store nor compare it) and no control characters.
TOKEN_PATTERN = r"^[\x21-\x7e]{1,64}$"


def time_ordered_id(prefix: str) -> str:
    """`<prefix>_` + milliseconds + randomness: sorting by id is sorting by creation."""
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{os.urandom(6).hex()}"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.resolved_database_url
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if settings.sqlite_path:
            settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 10})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("emailmcp") / "migrations"))
    return config


@lru_cache(maxsize=1)
def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _upgrade(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@asynccontextmanager
async def migration_lock(engine: AsyncEngine, settings: Settings) -> AsyncIterator[None]:
    """Serialises schema changes and first-start bootstrap across processes starting together.

    PostgreSQL: a session advisory lock. SQLite: an flock on a file beside the database.
    """
    if settings.is_sqlite:
        database = settings.sqlite_path
        lock_path = (
            database.with_name(database.name + ".migrate-lock") if database else settings.data_dir / ".migrate-lock"
        )
        lock = _file_lock(lock_path)
        await asyncio.to_thread(lock.__enter__)
        try:
            yield
        finally:
            lock.__exit__(None, None, None)
        return
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
        await conn.commit()
        try:
            yield
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _MIGRATION_LOCK_ID})
            await conn.commit()


async def apply_migrations(engine: AsyncEngine) -> None:
    """Upgrades to head. Call it inside migration_lock."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def schema_is_current(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        try:
            current = await conn.scalar(text("SELECT version_num FROM alembic_version"))
        except DBAPIError:
            return False
    return current == head_revision()
