"""Access tokens for the Gmail transport: refreshed before they expire, once per account at a time.

Within a process, one lock per account makes concurrent sends wait for a single refresh. Across processes, the
mailbox row's `oauth_refreshing_until` is a short lease: the process that sets it refreshes, the others poll
the row until the new token is there. The refreshed token is written through the vault before anyone uses it.
"""

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from emailmcp.db import utcnow
from emailmcp.oauth import repository
from emailmcp.oauth.google import GoogleOAuth, ProviderError, ProviderUnavailable
from emailmcp.observability import TOKEN_REFRESHES
from emailmcp.users.models import Mailbox
from emailmcp.users.schemas import MailboxStatus, MailboxType
from emailmcp.vault import SecretContext, Vault
from emailmcp.webhooks.events import Event, emit, mailbox_event
from emailmcp.webhooks.schemas import EventType

log = structlog.get_logger(__name__)

# A token this close to its expiry is refreshed first, so a send never starts with a token about to lapse.
EXPIRY_SKEW = timedelta(seconds=120)
REFRESH_LEASE = timedelta(seconds=30)
POLL_SECONDS = 0.2


class NeedsReauth(Exception):
    """The user must connect their Gmail again (the grant was revoked or expired); retrying cannot help."""


class NotConnected(Exception):
    """The mailbox is no longer a connected Gmail mailbox (disconnected or replaced)."""


class CredentialsUnavailable(Exception):
    """No token for now (the provider is unreachable or refused the client); worth retrying later."""


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: datetime


def _fresh(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is not None and expires_at - EXPIRY_SKEW > now


class GmailCredentials:
    """Hands the Gmail transport a valid access token for a mailbox; owns refresh and its persistence."""

    def __init__(self, engine: AsyncEngine, vault: Vault, google: GoogleOAuth) -> None:
        self._engine = engine
        self._vault = vault
        self._google = google
        # Keyed by (user, connected_at): a reconnected mailbox is another grant, never served an old token.
        self._tokens: dict[tuple[int, datetime], _Token] = {}
        self._locks: dict[tuple[int, datetime], asyncio.Lock] = {}

    async def access_token(self, mailbox: Row, rejected: str | None = None) -> str:
        """A token to send with for this mailbox row (as claimed with the message).

        `rejected` is a token Gmail just refused (401): a different one is returned, refreshed if need be.
        Raises NeedsReauth, NotConnected or CredentialsUnavailable.
        """
        key = (mailbox.user_pk, mailbox.connected_at)
        cached = self._tokens.get(key)
        if cached and cached.value != rejected and _fresh(cached.expires_at, utcnow()):
            return cached.value
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                return await self._current_or_refreshed(key, rejected)
        except (NeedsReauth, NotConnected):
            self._tokens.pop(key, None)
            raise

    async def _current_or_refreshed(self, key: tuple[int, datetime], rejected: str | None) -> str:
        user_pk, connected_at = key
        deadline = utcnow() + REFRESH_LEASE * 2
        while True:
            cached = self._tokens.get(key)
            now = utcnow()
            if cached and cached.value != rejected and _fresh(cached.expires_at, now):
                return cached.value
            async with self._engine.connect() as conn:
                row = await repository.get_tokens(conn, user_pk)
                self._check(row, connected_at)
                stored = self._decrypt(row, "oauth_access_token")
                if stored and stored != rejected and _fresh(row.oauth_expires_at, now):
                    self._tokens[key] = _Token(stored, row.oauth_expires_at)
                    return stored
                claimed = await repository.claim_refresh(conn, user_pk, connected_at, now, now + REFRESH_LEASE)
                await conn.commit()
            if claimed:
                return await self._refresh(row)
            if utcnow() > deadline:
                raise CredentialsUnavailable("another process has been refreshing the token for too long")
            await asyncio.sleep(POLL_SECONDS)  # another process is refreshing: wait for its token

    async def _refresh(self, row: Row) -> str:
        user_pk, connected_at = row.user_pk, row.connected_at
        refresh_token = self._decrypt(row, "oauth_refresh_token")
        try:
            if not refresh_token:
                raise ProviderError("invalid_grant", "no refresh token is stored")
            tokens = await self._google.refresh(refresh_token)
        except ProviderError as exc:
            async with self._engine.begin() as conn:
                if exc.error == "invalid_grant":
                    if await repository.mark_needs_reauth(conn, user_pk, connected_at):
                        await emit(conn, [_needs_reauth_event(row, exc)])
                else:
                    await repository.end_refresh(conn, user_pk, connected_at)
            TOKEN_REFRESHES.labels(exc.error).inc()
            if exc.error == "invalid_grant":
                log.warning("gmail_needs_reauth", user_pk=user_pk, reason=exc.description)
                raise NeedsReauth("the user must reconnect their Gmail account") from None
            log.error("gmail_refresh_refused", user_pk=user_pk, error=exc.error, reason=exc.description)
            raise CredentialsUnavailable(f"Google refused the token refresh: {exc}") from None
        except ProviderUnavailable as exc:
            async with self._engine.begin() as conn:
                await repository.end_refresh(conn, user_pk, connected_at)
            TOKEN_REFRESHES.labels("unavailable").inc()
            raise CredentialsUnavailable(f"the token refresh failed: {exc}") from None
        encrypted_refresh = (
            self._encrypt(row, "oauth_refresh_token", tokens.refresh_token) if tokens.refresh_token else None
        )
        async with self._engine.begin() as conn:
            await repository.store_refreshed(
                conn,
                user_pk,
                connected_at,
                self._encrypt(row, "oauth_access_token", tokens.access_token),
                encrypted_refresh,
                tokens.expires_at,
            )
        TOKEN_REFRESHES.labels("refreshed").inc()
        log.info("gmail_token_refreshed", user_pk=user_pk, expires_at=tokens.expires_at.isoformat())
        self._tokens[(user_pk, connected_at)] = _Token(tokens.access_token, tokens.expires_at)
        return tokens.access_token

    @staticmethod
    def _check(row: Row | None, connected_at: datetime) -> None:
        if row is None or row.type != MailboxType.gmail or row.connected_at != connected_at:
            raise NotConnected("the Gmail mailbox was disconnected or replaced")
        if row.status == MailboxStatus.needs_reauth:
            raise NeedsReauth("the user must reconnect their Gmail account")
        if row.status != MailboxStatus.connected:
            raise NotConnected("the Gmail mailbox is not connected")

    def _context(self, row: Row, column: str) -> SecretContext:
        return SecretContext(Mailbox.__tablename__, column, row.tenant_id, row.user_pk)

    def _decrypt(self, row: Row, column: str) -> str | None:
        value = getattr(row, column)
        return self._vault.decrypt(value, self._context(row, column)) if value else None

    def _encrypt(self, row: Row, column: str, value: str) -> str:
        return self._vault.encrypt(value, self._context(row, column))


def _needs_reauth_event(mailbox: Row, refusal: ProviderError) -> Event:
    reason = f"invalid_grant: {refusal.description}" if refusal.description else "invalid_grant"
    return mailbox_event(EventType.mailbox_needs_reauth, mailbox, MailboxStatus.needs_reauth, reason=reason)
