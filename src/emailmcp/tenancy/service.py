"""Tenants, their settings and their API keys.

A key reads `emk_<id>_<secret>`. Only HMAC-SHA256(pepper, key) is stored; the id, which
is not secret, finds the row, and the hashes are compared in constant time.
"""

import hashlib
import hmac
import re
import secrets
import string
from collections.abc import Iterable
from datetime import timedelta

from pydantic import ValidationError
from sqlalchemy import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from emailmcp.batching import Batcher, Pending
from emailmcp.db import utcnow
from emailmcp.tenancy import repository
from emailmcp.tenancy.models import ApiKey, Tenant
from emailmcp.tenancy.schemas import TENANT_NAME_PATTERN, ApiKeyInfo, Scope, TenantContext, TenantSettingsValues

KEY_PREFIX = "emk_"
KEY_ID_LENGTH = 12
DEFAULT_TENANT = "default"
_KEY_ID_ALPHABET = string.ascii_lowercase + string.digits
_KEY_SHAPE = re.compile(rf"^{KEY_PREFIX}([a-z0-9]{{{KEY_ID_LENGTH}}})_([A-Za-z0-9_-]{{43}})$")
# last_used_at is written at most this often per key, so busy keys do not turn every read into a write.
_TOUCH_INTERVAL = timedelta(seconds=60)


class TenancyError(Exception):
    """A CLI- or service-level refusal with a message a person can act on."""


def hash_key(pepper: bytes, plaintext: str) -> str:
    return hmac.new(pepper, plaintext.encode(), hashlib.sha256).hexdigest()


def _new_key() -> tuple[str, str]:
    key_id = "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH))
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def check_tenant_name(name: str) -> str:
    if not re.match(TENANT_NAME_PATTERN, name):
        raise TenancyError(f"tenant name {name!r} must match {TENANT_NAME_PATTERN}")
    return name


async def get_tenant(session: AsyncSession, name: str) -> Tenant:
    tenant = await repository.get_tenant(session, name)
    if tenant is None:
        raise TenancyError(f"no tenant named {name!r}")
    return tenant


async def operator_context(session: AsyncSession, name: str) -> TenantContext:
    """The operator acting for a tenant from the command line: every scope, no key."""
    tenant = await get_tenant(session, name)
    return TenantContext(tenant_id=tenant.id, tenant_name=tenant.name, key_id="", scopes=frozenset(Scope))


async def ensure_tenant(session: AsyncSession, name: str) -> Tenant:
    """The tenant, created if new; when another process creates it at the same moment, that one.

    Called before anything else is written in the session: losing that race rolls the session back."""
    existing = await repository.get_tenant(session, check_tenant_name(name))
    if existing is not None:
        return existing
    try:
        return await repository.add_tenant(session, name)
    except IntegrityError:
        await session.rollback()
        return await get_tenant(session, name)


async def create_key(
    session: AsyncSession, pepper: bytes, tenant_name: str, scopes: Iterable[Scope], name: str | None = None
) -> tuple[ApiKeyInfo, str]:
    """Creates the key (and the tenant, if new). Returns its description and the plaintext, shown once."""
    scope_list = sorted({Scope(scope) for scope in scopes})
    if not scope_list:
        raise TenancyError("a key needs at least one scope: mail, llm or admin")
    tenant = await ensure_tenant(session, tenant_name)
    key_id, plaintext = _new_key()
    key = ApiKey(
        id=key_id,
        tenant_id=tenant.id,
        name=name,
        secret_hash=hash_key(pepper, plaintext),
        scopes=[s.value for s in scope_list],
    )
    await repository.add_key(session, key)
    return _key_info(key, tenant.name), plaintext


async def bootstrap(session: AsyncSession, pepper: bytes) -> str | None:
    """On an empty database, creates tenant `default` with one all-scope key and returns it."""
    if await repository.count_tenants(session):
        return None
    _, plaintext = await create_key(session, pepper, DEFAULT_TENANT, Scope, name="bootstrap")
    return plaintext


class KeyVerifier:
    """Verifies API keys against the database on every request, never from a cache, so a revoked key stops
    working at once in every process. Concurrent requests share one lookup query (see `emailmcp.batching`)."""

    def __init__(self, engine: AsyncEngine, pepper: bytes) -> None:
        self._engine = engine
        self._pepper = pepper
        self._lookups: Batcher[str] = Batcher(self._lookup)

    async def verify(self, plaintext: str) -> TenantContext | None:
        """The caller's tenant context (with its tenant's settings), or None for a malformed, unknown or revoked key."""
        match = _KEY_SHAPE.match(plaintext)
        if match is None:
            return None
        row = await self._lookups.submit(match.group(1))
        # For an unknown id, spend the same time as a real comparison so unknown ids are not told apart.
        valid = hmac.compare_digest(hash_key(self._pepper, plaintext), row.secret_hash if row else "0" * 64)
        if row is None or not valid:
            return None
        return _context(row)

    async def context_of_key(self, key_id: str) -> TenantContext | None:
        """The tenant context of a key already proven by its secret (a dashboard session's), or None once revoked."""
        row = await self._lookups.submit(key_id)
        return _context(row) if row is not None else None

    async def _lookup(self, batch: list[Pending[str]]) -> None:
        async with self._engine.connect() as connection:
            rows = await repository.get_keys_for_auth(connection, {pending.item for pending in batch})
            now = utcnow()
            stale = [
                row.id for row in rows.values() if row.last_used_at is None or now - row.last_used_at > _TOUCH_INTERVAL
            ]
            if stale:
                await repository.touch_keys(connection, stale, now)
                await connection.commit()
        for pending in batch:
            pending.resolve(rows.get(pending.item))

    async def close(self) -> None:
        await self._lookups.close()


def _context(row: Row) -> TenantContext | None:
    if row.revoked_at is not None:
        return None
    return TenantContext(
        tenant_id=row.tenant_id,
        tenant_name=row.tenant_name,
        key_id=row.id,
        scopes=frozenset(Scope(s) for s in row.scopes),
        settings=TenantSettingsValues.model_construct(
            rate_limit=row.rate_limit,
            recipient_domain_allowlist=row.recipient_domain_allowlist,
            recipient_domain_denylist=row.recipient_domain_denylist,
            oauth_return_urls=row.oauth_return_urls,
        ),
    )


def _key_info(key: ApiKey, tenant_name: str) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=key.id,
        tenant=tenant_name,
        name=key.name,
        scopes=key.scopes,
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
    )


async def list_keys(session: AsyncSession, tenant_name: str | None = None) -> list[ApiKeyInfo]:
    tenant_id = (await get_tenant(session, tenant_name)).id if tenant_name else None
    return [_key_info(key, name) for key, name in await repository.list_keys(session, tenant_id)]


async def revoke_key(session: AsyncSession, key_id: str) -> ApiKeyInfo:
    key = await repository.get_key(session, key_id)
    if key is None:
        raise TenancyError(f"no key with id {key_id!r}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        await session.flush()
    tenant = await session.get(Tenant, key.tenant_id)
    return _key_info(key, tenant.name)


async def list_tenants(session: AsyncSession) -> list[tuple[Tenant, int, int]]:
    return await repository.list_tenants(session)


async def tenant_settings(session: AsyncSession, name: str) -> TenantSettingsValues:
    tenant = await get_tenant(session, name)
    return TenantSettingsValues.model_validate(await repository.get_settings(session, tenant.id))


async def set_tenant_setting(session: AsyncSession, name: str, setting: str, value: str | None) -> TenantSettingsValues:
    """Validates one setting against its type and stores it; None restores the service default."""
    if setting not in TenantSettingsValues.model_fields:
        known = ", ".join(TenantSettingsValues.model_fields)
        raise TenancyError(f"unknown setting {setting!r}; settings are: {known}")
    tenant = await get_tenant(session, name)
    try:
        checked = TenantSettingsValues.model_validate({setting: value})
    except ValidationError as exc:
        raise TenancyError(f"{setting}: {exc.errors()[0]['msg']}") from None
    row = await repository.get_settings(session, tenant.id)
    setattr(row, setting, getattr(checked, setting))
    await session.flush()
    return TenantSettingsValues.model_validate(row)


async def delete_tenant(session: AsyncSession, name: str) -> None:
    tenant = await get_tenant(session, name)
    await repository.delete_tenant(session, tenant.id)
