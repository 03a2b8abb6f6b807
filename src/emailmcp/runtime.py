"""What a running process holds: settings, database, vault, key verifier, outbox, rate limiter.

Built once by the app's lifespan or by a CLI command, and handed to whatever needs it.
"""

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from emailmcp import db
from emailmcp.errors import ConfigurationError
from emailmcp.llm.service import Planners
from emailmcp.mail.service import Outbox
from emailmcp.oauth.credentials import GmailCredentials
from emailmcp.oauth.google import GoogleOAuth
from emailmcp.settings import Settings
from emailmcp.tenancy import service as tenancy_service
from emailmcp.tenancy.rate_limit import RateLimiter
from emailmcp.tenancy.service import KeyVerifier
from emailmcp.vault import Vault, derive_key
from emailmcp.wakeup import Wakeup

log = structlog.get_logger(__name__)

SECRET_KEY_FILE = "secret-key"


def write_private_file(path: Path, content: str) -> None:
    """Writes a file readable by its owner only (0600) from the moment it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    os.chmod(path, 0o600)


def create_private_file_once(path: Path, content: str) -> bool:
    """Creates a complete 0600 file unless one exists; False when another process won the race.

    The content is written to a temporary file first and then hard-linked into place, so no
    reader ever sees a partial file and concurrent creators all end up reading the same one.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    write_private_file(temporary, content)
    try:
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    finally:
        temporary.unlink()


def load_secret_key(settings: Settings) -> bytes:
    if settings.secret_key is not None:
        value = settings.secret_key.get_secret_value()
        if len(value) < 32:
            raise ConfigurationError("EMAILMCP_SECRET_KEY must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return value.encode()
    if not settings.is_sqlite:
        raise ConfigurationError(
            "EMAILMCP_SECRET_KEY is required with PostgreSQL: every replica must share it. "
            "Generate one with `openssl rand -hex 32` and keep it with your database backups."
        )
    path = settings.data_dir / SECRET_KEY_FILE
    if create_private_file_once(path, secrets.token_hex(32) + "\n"):
        log.warning(
            "secret_key_generated",
            path=str(path.resolve()),
            advice="back this file up with the database: without it, API keys and stored credentials are unusable",
        )
    return path.read_text().strip().encode()


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    vault: Vault
    key_pepper: bytes
    rate_limiter: RateLimiter
    keys: KeyVerifier
    outbox: Outbox
    outbox_signal: Wakeup
    webhook_signal: Wakeup  # new webhook deliveries in this process
    google: GoogleOAuth | None  # None until EMAILMCP_GOOGLE_CLIENT_ID is set
    gmail_credentials: GmailCredentials | None
    planners: Planners

    @classmethod
    def create(cls, settings: Settings) -> "Runtime":
        secret_key = load_secret_key(settings)
        secret_spec = settings.encryption_keys.get_secret_value() if settings.encryption_keys else None
        engine = db.create_engine(settings)
        sessionmaker = db.create_sessionmaker(engine)
        key_pepper = derive_key(secret_key, "api-key pepper")
        outbox_signal = Wakeup()
        vault = Vault.from_settings(secret_key, secret_spec)
        google = GoogleOAuth(settings) if settings.google_client_id else None
        return cls(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            vault=vault,
            key_pepper=key_pepper,
            rate_limiter=RateLimiter(settings.rate_limit, settings.redis_url),
            keys=KeyVerifier(engine, key_pepper),
            outbox=Outbox(engine, settings, outbox_signal),
            outbox_signal=outbox_signal,
            webhook_signal=Wakeup(),
            google=google,
            gmail_credentials=GmailCredentials(engine, vault, google) if google else None,
            planners=Planners(settings),
        )

    async def migrate(self) -> None:
        async with db.migration_lock(self.engine, self.settings):
            await db.apply_migrations(self.engine)

    async def prepare(self) -> str | None:
        """Migrates, and on an empty database creates the default tenant; returns its first key if so."""
        async with db.migration_lock(self.engine, self.settings):
            await db.apply_migrations(self.engine)
            async with self.sessionmaker() as session:
                key = await tenancy_service.bootstrap(session, self.key_pepper)
                await session.commit()
        return key

    async def close(self) -> None:
        """Answers what is still being accepted, then closes the database."""
        await self.outbox.close()
        await self.keys.close()
        await self.planners.close()
        await self.engine.dispose()
