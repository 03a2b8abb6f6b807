"""Every setting of the service, read from EMAILMCP_* environment variables or a .env file."""

from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from emailmcp.errors import ConfigurationError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMAILMCP_", env_file=".env", extra="ignore")

    data_dir: Path = Path("./data")
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    secret_key: SecretStr | None = None
    encryption_keys: SecretStr | None = None
    rate_limit: str = "6000/minute"
    redis_url: str | None = None
    cors_origins: Annotated[list[str], NoDecode] = []
    max_body_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    log_level: str = "info"
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    smtp_allow_private_hosts: bool = False

    # Delivery
    default_transport: Literal["capture", "smtp", "none"] = "capture"
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: Literal["none", "starttls", "tls"] = "starttls"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "emailmcp@localhost"
    smtp_ca_file: Path | None = None
    worker_lease_seconds: int = Field(default=60, ge=5)
    worker_poll_seconds: float = Field(default=1.0, gt=0)
    max_attempts: int = Field(default=8, ge=1)
    retry_base_seconds: float = Field(default=30.0, ge=0)
    daily_send_cap: int = Field(default=500, ge=0)
    max_recipients: int = Field(default=100, ge=1)
    max_message_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    retention_days: int = Field(default=30, ge=1)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip().startswith("["):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("rate_limit")
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        from limits import parse_many

        if value.strip() in ("", "0"):
            return "0"
        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"not a rate limit such as '6000/minute': {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _relay_needs_a_host(self) -> "Settings":
        if self.default_transport == "smtp" and not self.smtp_host:
            raise ValueError("EMAILMCP_DEFAULT_TRANSPORT=smtp needs EMAILMCP_SMTP_HOST (the relay to send through)")
        return self

    @cached_property
    def resolved_database_url(self) -> str:
        """The async SQLAlchemy URL, accepting the plain forms people paste."""
        url = self.database_url or f"sqlite:///{(self.data_dir / 'emailmcp.db').resolve()}"
        for plain, driver in (
            ("postgres://", "postgresql+psycopg://"),
            ("postgresql://", "postgresql+psycopg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if url.startswith(plain):
                return driver + url[len(plain) :]
        if url.startswith(("postgresql+psycopg://", "sqlite+aiosqlite://")):
            return url
        raise ConfigurationError("EMAILMCP_DATABASE_URL must be a postgresql:// or sqlite:/// URL")

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file, or None for PostgreSQL or an in-memory database."""
        if not self.is_sqlite:
            return None
        database = make_url(self.resolved_database_url).database
        return Path(database).resolve() if database and database != ":memory:" else None

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")


def load_settings() -> Settings:
    return Settings()
