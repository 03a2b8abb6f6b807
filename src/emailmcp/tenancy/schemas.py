import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, field_validator

TENANT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_RETURN_URL = re.compile(r"^https?://[^/?#\s]+(/[^#\s]*)?$")
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
    oauth_return_urls: list[str] | None = None

    @field_validator("recipient_domain_allowlist", "recipient_domain_denylist", "oauth_return_urls", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        """Lists also come in the comma-separated form the CLI passes."""
        if isinstance(value, str):
            return [part for part in (item.strip() for item in value.split(",")) if part]
        return value

    @field_validator("recipient_domain_allowlist", "recipient_domain_denylist")
    @classmethod
    def _domains(cls, value: list[str] | None) -> list[str] | None:
        """Domain names, kept lower-case."""
        for domain in value or []:
            if not _DOMAIN.match(domain.lower()):
                raise ValueError(f"not a domain name: {domain!r}")
        return [domain.lower() for domain in value] if value is not None else None

    @field_validator("oauth_return_urls")
    @classmethod
    def _return_urls(cls, value: list[str] | None) -> list[str] | None:
        """Where users may be sent back after connecting Gmail: absolute http(s) URLs, compared exactly."""
        for url in value or []:
            if not _RETURN_URL.match(url):
                raise ValueError(f"not an absolute http(s) URL without a fragment: {url!r}")
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
