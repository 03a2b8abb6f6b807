from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Row, bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from emailmcp.tenancy.models import ApiKey, Tenant, TenantSettings


async def get_tenant(session: AsyncSession, name: str) -> Tenant | None:
    return await session.scalar(select(Tenant).where(Tenant.name == name))


async def add_tenant(session: AsyncSession, name: str) -> Tenant:
    tenant = Tenant(name=name)
    session.add(tenant)
    await session.flush()
    session.add(TenantSettings(tenant_id=tenant.id))
    await session.flush()
    return tenant


async def list_tenants(session: AsyncSession) -> list[tuple[Tenant, int, int]]:
    """Each tenant with its number of active keys and of end users."""
    from emailmcp.users.models import EndUser

    active_keys = (
        select(func.count()).where(ApiKey.tenant_id == Tenant.id, ApiKey.revoked_at.is_(None)).scalar_subquery()
    )
    users = select(func.count()).where(EndUser.tenant_id == Tenant.id).scalar_subquery()
    rows = await session.execute(select(Tenant, active_keys, users).order_by(Tenant.name))
    return [(tenant, keys, user_count) for tenant, keys, user_count in rows.all()]


async def count_tenants(session: AsyncSession) -> int:
    return await session.scalar(select(func.count()).select_from(Tenant)) or 0


async def delete_tenant(session: AsyncSession, tenant_id: int) -> None:
    await session.execute(delete(Tenant).where(Tenant.id == tenant_id))


async def get_settings(session: AsyncSession, tenant_id: int) -> TenantSettings:
    settings = await session.get(TenantSettings, tenant_id)
    if settings is None:
        settings = TenantSettings(tenant_id=tenant_id)
        session.add(settings)
    return settings


async def add_key(session: AsyncSession, key: ApiKey) -> None:
    session.add(key)
    await session.flush()


# Built once: constructing a statement costs more than running it, and this one runs for every request.
_KEYS_FOR_AUTH = (
    select(
        ApiKey.id,
        ApiKey.tenant_id,
        ApiKey.secret_hash,
        ApiKey.scopes,
        ApiKey.last_used_at,
        ApiKey.revoked_at,
        Tenant.name.label("tenant_name"),
        TenantSettings.rate_limit,
        TenantSettings.recipient_domain_allowlist,
        TenantSettings.recipient_domain_denylist,
        TenantSettings.oauth_return_urls,
    )
    .join(Tenant, Tenant.id == ApiKey.tenant_id)
    .outerjoin(TenantSettings, TenantSettings.tenant_id == ApiKey.tenant_id)
    .where(ApiKey.id.in_(bindparam("key_ids", expanding=True)))
)
_TOUCH_KEYS = (
    update(ApiKey).where(ApiKey.id.in_(bindparam("key_ids", expanding=True))).values(last_used_at=bindparam("now"))
)


async def get_keys_for_auth(connection: AsyncConnection, key_ids: Iterable[str]) -> dict[str, Row]:
    """Each key with its tenant's name and settings, in one query."""
    rows = await connection.execute(_KEYS_FOR_AUTH, {"key_ids": list(key_ids)})
    return {row.id: row for row in rows}


async def list_keys(session: AsyncSession, tenant_id: int | None) -> list[tuple[ApiKey, str]]:
    query = (
        select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id).order_by(Tenant.name, ApiKey.created_at)
    )
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    return [(key, name) for key, name in (await session.execute(query)).all()]


async def get_key(session: AsyncSession, key_id: str) -> ApiKey | None:
    return await session.get(ApiKey, key_id)


async def touch_keys(connection: AsyncConnection, key_ids: list[str], now: datetime) -> None:
    await connection.execute(_TOUCH_KEYS, {"key_ids": key_ids, "now": now})
