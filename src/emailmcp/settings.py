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
    mcp_allowed_hosts: Annotated[list[str], NoDecode] = []
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

    # Webhooks: events signed the Standard Webhooks way and delivered from an outbox
    webhook_allow_http: bool = False
    webhook_allow_private_hosts: bool = False
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_max_response_bytes: int = Field(default=64 * 1024, ge=0)
    webhook_retry_base_seconds: float = Field(default=5.0, gt=0)
    webhook_retry_window_seconds: float = Field(default=24 * 3600.0, gt=0)
    webhook_disable_after_seconds: float = Field(default=24 * 3600.0, gt=0)
    webhook_concurrency: int = Field(default=32, ge=1, le=1024)

    # Planning actions from prompts (/llm/inference)
    llm_provider: Literal["rules", "openai", "anthropic"] = "rules"
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: SecretStr | None = None
    llm_timeout_seconds: float = Field(default=30.0, gt=0)
    llm_fallback: Literal["none", "rules"] = "none"
    llm_max_prompt_chars: int = Field(default=4000, ge=1, le=100_000)

    # Gmail over OAuth 2.0; the endpoints can point at any Google-compatible provider
    public_url: str | None = Field(default=None, pattern=r"^https?://[^/?#]+(/[^?#]*)?$")
    google_client_id: str | None = None
    google_client_secret: SecretStr | None = None
    google_scopes: Annotated[list[str], NoDecode] = ["openid", "email", "https://www.googleapis.com/auth/gmail.send"]
    google_auth_url: str = "https://accounts.google.com/o/oauth2/v2/auth"
    google_token_url: str = "https://oauth2.googleapis.com/token"
    google_revoke_url: str = "https://oauth2.googleapis.com/revoke"
    google_userinfo_url: str = "https://openidconnect.googleapis.com/v1/userinfo"
    gmail_api_base: str = "https://gmail.googleapis.com"
    google_timeout_seconds: float = Field(default=10.0, gt=0)

    @field_validator("cors_origins", "mcp_allowed_hosts", mode="before")
    @classmethod
    def _split_lists(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip().startswith("["):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("public_url", "google_client_id", "llm_base_url", "llm_model", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("google_scopes", mode="before")
    @classmethod
    def _split_scopes(cls, value: object) -> object:
        """Accepts the space- or comma-separated form of OAuth scope lists."""
        if isinstance(value, str) and not value.strip().startswith("["):
            return value.replace(",", " ").split()
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

    @model_validator(mode="after")
    def _llm_needs_a_model(self) -> "Settings":
        if self.llm_provider != "rules" and not self.llm_model:
            raise ValueError(f"EMAILMCP_LLM_PROVIDER={self.llm_provider} needs EMAILMCP_LLM_MODEL (e.g. gpt-4o-mini)")
        return self

    @model_validator(mode="after")
    def _google_needs_a_secret(self) -> "Settings":
        if self.google_client_id and not self.google_client_secret:
            raise ValueError(
                "EMAILMCP_GOOGLE_CLIENT_ID needs EMAILMCP_GOOGLE_CLIENT_SECRET (from the same OAuth client)"
            )
        return self

    @property
    def public_base_url(self) -> str:
        """Where browsers reach this server: EMAILMCP_PUBLIC_URL, else its own address."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def oauth_callback_url(self) -> str:
        """The redirect URI registered at Google: where its consent screen sends the user back."""
        return f"{self.public_base_url}/v1/oauth/callback"

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
