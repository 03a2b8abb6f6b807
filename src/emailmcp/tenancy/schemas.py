import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, field_validator

TENANT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class Scope(StrEnum):
    mail = "mail"
    llm = "llm"
    admin = "admin"


class TenantSettingsValues(BaseModel):
    """The per-tenant settings; each field is a column of tenant_settings. None means the service default."""

    model_config = ConfigDict(extra="forbid", from_attributes=True)

    rate_limit: str | None = None
    recipient_domain_allowlist: list[str] | None = None
    recipient_domain_denylist: list[str] | None = None

    @field_validator("recipient_domain_allowlist", "recipient_domain_denylist", mode="before")
    @classmethod
    def _domains(cls, value: object) -> object:
        """Accepts a list or the comma-separated form the CLI passes; domains are kept lower-case."""
        if isinstance(value, str):
            value = [part for part in (item.strip() for item in value.split(",")) if part]
        if isinstance(value, list):
            for domain in value:
                if not isinstance(domain, str) or not _DOMAIN.match(domain.lower()):
                    raise ValueError(f"not a domain name: {domain!r}")
            return [domain.lower() for domain in value]
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, value: str | None) -> str | None:
        from limits import parse_many

        if value is None:
            return None
        if value.strip() == "0":
            return "0"
        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError("expected a limit such as '6000/minute' or '100/second;5000/hour', or 0 for none") from exc
        return value


@dataclass(frozen=True)
class TenantContext:
    """Who is calling: the tenant every query is scoped to, the key that proved it, and the tenant's settings
    as read with the key."""

    tenant_id: int
    tenant_name: str
    key_id: str
    scopes: frozenset[Scope]
    settings: TenantSettingsValues = field(default_factory=TenantSettingsValues)


class ApiKeyInfo(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    tenant: str
    name: str | None
    scopes: list[Scope]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
