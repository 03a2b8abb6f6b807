"""Connecting a user's Gmail: the consent flow, disconnecting, and revoking the grant when the user goes."""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from emailmcp.db import utcnow
from emailmcp.errors import APIError, InvalidField, NotFound
from emailmcp.oauth import repository
from emailmcp.oauth.google import GoogleOAuth, ProviderError, ProviderUnavailable, Tokens
from emailmcp.oauth.models import OAuthState
from emailmcp.oauth.schemas import AuthorizeIn, AuthorizeOut
from emailmcp.tenancy.schemas import TenantContext
from emailmcp.users import repository as users_repository
from emailmcp.users import service as users_service
from emailmcp.users.models import EndUser, Mailbox
from emailmcp.users.schemas import MailboxOut, MailboxStatus, MailboxType, SmtpMailboxIn
from emailmcp.vault import SecretContext, Vault
from emailmcp.webhooks.events import emit, mailbox_disconnected, mailbox_event
from emailmcp.webhooks.schemas import EventType

log = structlog.get_logger(__name__)

STATE_TTL = timedelta(minutes=10)


class ConnectFailed(Exception):
    """A callback that connected nothing.

    `return_url` and `user_id` are set only when the state was valid, so a forged state can never redirect.
    """

    def __init__(
        self, code: str, message: str, status: int = 400, user_id: str | None = None, return_url: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.user_id = user_id
        self.return_url = return_url


@dataclass(frozen=True)
class Connected:
    user_id: str
    email: str
    return_url: str | None
    mailbox: MailboxOut


def require_google(google: GoogleOAuth | None) -> GoogleOAuth:
    if google is None:
        raise APIError(
            503,
            "gmail_not_configured",
            "Gmail is not configured on this server: set EMAILMCP_GOOGLE_CLIENT_ID, EMAILMCP_GOOGLE_CLIENT_SECRET "
            "and EMAILMCP_PUBLIC_URL (see the README, 'Connect Gmail').",
        )
    return google


def _state_id(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


async def start_authorization(
    session: AsyncSession,
    ctx: TenantContext,
    google: GoogleOAuth | None,
    vault: Vault,
    data: AuthorizeIn,
    own_page: bool = False,
) -> AuthorizeOut:
    """Opens a consent flow for the user: a single-use state bound to tenant, user and return URL, with PKCE.

    The return URL must be one of the tenant's `oauth_return_urls`, unless `own_page` says it is a page of this
    server (the dashboard's), built by the server itself."""
    google = require_google(google)
    allowed = ctx.settings.oauth_return_urls or []
    if data.redirect_uri is not None and not own_page and data.redirect_uri not in allowed:
        raise InvalidField(
            "redirect_uri",
            "not one of this tenant's allowed return URLs (tenant setting oauth_return_urls, "
            "set with `emailmcp tenants set <tenant> oauth_return_urls <url,...>`)",
            code="redirect_uri_not_allowed",
        )
    user = await users_service.ensure_user(session, ctx, data.user_id)
    now = utcnow()
    await repository.forget_expired_states(session, ctx, now)
    state = secrets.token_urlsafe(32)
    code_verifier = secrets.token_urlsafe(64)
    state_id = _state_id(state)
    row = OAuthState(
        id=state_id,
        tenant_id=ctx.tenant_id,
        user_pk=user.id,
        return_url=data.redirect_uri,
        code_verifier=vault.encrypt(
            code_verifier, SecretContext(OAuthState.__tablename__, "code_verifier", ctx.tenant_id, state_id)
        ),
        api_key_id=ctx.key_id,
        created_at=now,
        expires_at=now + STATE_TTL,
    )
    await repository.add_state(session, row)
    await session.commit()
    return AuthorizeOut(
        authorization_url=google.authorization_url(state, code_verifier, data.login_hint),
        state=state,
        expires_at=row.expires_at,
    )


async def complete_authorization(
    session: AsyncSession,
    google: GoogleOAuth | None,
    vault: Vault,
    state: str | None,
    code: str | None,
    provider_error: str | None = None,
    tenant_id: int | None = None,
) -> Connected:
    """Finishes a consent flow: takes the state (once), exchanges the code, stores the tokens through the vault
    and connects the user's Gmail mailbox. Raises ConnectFailed with nothing stored otherwise.

    `tenant_id` is the caller's tenant on the authenticated callback; the public one trusts the state alone.
    """
    google = require_google(google)
    if not state:
        raise ConnectFailed("invalid_state", "The request carries no state: start again from your application.")
    taken = await repository.take_state(session, _state_id(state), tenant_id)
    await session.commit()  # the state is used up, whatever happens next
    if taken is None:
        raise ConnectFailed(
            "invalid_state", "This sign-in link is unknown or was already used: start again from your application."
        )
    ctx = _flow_context(taken)
    user = await repository.get_user_by_pk(session, ctx, taken.user_pk)
    if user is None:  # deleted since; its states go with it, so only a race gets here
        raise ConnectFailed("invalid_state", "The user this sign-in was for no longer exists.")
    fail = _failure(user.user_id, taken.return_url)
    if taken.expires_at <= utcnow():
        raise fail("state_expired", "This sign-in link expired (they last 10 minutes): start again.")
    if provider_error:
        if provider_error == "access_denied":
            raise fail("access_denied", "Access to the Gmail account was not granted.")
        raise fail("provider_error", f"Google answered with an error: {provider_error}.")
    if not code:
        raise fail("invalid_request", "The request carries no authorization code.")
    code_verifier = vault.decrypt(
        taken.code_verifier, SecretContext(OAuthState.__tablename__, "code_verifier", taken.tenant_id, taken.id)
    )
    tokens, email = await _exchange(google, code, code_verifier, fail)
    mailbox = await _connect(session, ctx, vault, user, tokens, email)
    log.info("gmail_connected", tenant_id=user.tenant_id, user_id=user.user_id)
    return Connected(user_id=user.user_id, email=email, return_url=taken.return_url, mailbox=mailbox)


def _flow_context(taken) -> TenantContext:
    """The tenant context a callback acts in: the tenant, and the key, that started the flow."""
    return TenantContext(tenant_id=taken.tenant_id, tenant_name="", key_id=taken.api_key_id or "", scopes=frozenset())


def _failure(user_id: str, return_url: str | None):
    def fail(code: str, message: str, status: int = 400) -> ConnectFailed:
        return ConnectFailed(code, message, status, user_id, return_url)

    return fail


async def _exchange(google: GoogleOAuth, code: str, code_verifier: str, fail) -> tuple[Tokens, str]:
    try:
        tokens = await google.exchange(code, code_verifier)
    except ProviderError as exc:
        raise fail("exchange_failed", f"Google refused the authorization code ({exc.error}): start again.") from None
    except ProviderUnavailable as exc:
        raise fail("provider_unavailable", f"Google could not be reached: {exc}. Try again.", 502) from None
    missing = google.missing_scopes(tokens)
    problem = None
    if missing:
        problem = fail(
            "scope_not_granted",
            f"These permissions were not granted: {', '.join(missing)}. Connect again and allow them.",
        )
    elif not tokens.refresh_token:
        problem = fail("no_refresh_token", "Google gave no refresh token: remove the app's access and connect again.")
    if problem is None:
        try:
            return tokens, await google.account_email(tokens)
        except ProviderError as exc:
            problem = fail("email_not_verified", f"The Google account has no verified address: {exc.description}.")
        except ProviderUnavailable as exc:
            problem = fail("provider_unavailable", f"Google could not be reached: {exc}. Try again.", 502)
    await _revoke_quietly(google, tokens.refresh_token or tokens.access_token)
    raise problem


async def _connect(
    session: AsyncSession, ctx: TenantContext, vault: Vault, user: EndUser, tokens: Tokens, email: str
) -> MailboxOut:
    def encrypt(column: str, value: str) -> str:
        return vault.encrypt(value, SecretContext(Mailbox.__tablename__, column, ctx.tenant_id, user.id))

    mailbox = await users_repository.save_mailbox(
        session,
        ctx,
        user,
        type=MailboxType.gmail.value,
        status=MailboxStatus.connected.value,
        connected_at=utcnow(),
        from_address=email,
        smtp_host=None,
        smtp_port=None,
        smtp_security=None,
        smtp_username=None,
        smtp_password=None,
        oauth_access_token=encrypt("oauth_access_token", tokens.access_token),
        oauth_refresh_token=encrypt("oauth_refresh_token", tokens.refresh_token),
        oauth_expires_at=tokens.expires_at,
        oauth_refreshing_until=None,
    )
    await emit(session, [mailbox_event(EventType.mailbox_connected, mailbox, MailboxStatus.connected)])
    await session.commit()
    return users_service.mailbox_out(mailbox)


async def _revoke_quietly(google: GoogleOAuth, token: str | None) -> bool:
    """Revokes at Google; False (and a warning) when Google could not be reached or refused."""
    if not token:
        return True
    try:
        await google.revoke(token)
    except (ProviderError, ProviderUnavailable) as exc:
        log.warning("gmail_revoke_failed", reason=str(exc))
        return False
    return True


def grant_token(ctx: TenantContext, vault: Vault, user: EndUser) -> str | None:
    """The token that stands for the user's Gmail grant (the refresh token, else the access token), if any."""
    mailbox = user.mailbox
    if mailbox is None or mailbox.type != MailboxType.gmail:
        return None
    column = "oauth_refresh_token" if mailbox.oauth_refresh_token else "oauth_access_token"
    stored = getattr(mailbox, column)
    return (
        vault.decrypt(stored, SecretContext(Mailbox.__tablename__, column, ctx.tenant_id, user.id)) if stored else None
    )


async def revoke_grant(google: GoogleOAuth | None, token: str | None) -> bool:
    """Revokes a Gmail grant at Google; True when revoked or there was none."""
    if token is None:
        return True
    if google is None:
        log.warning("gmail_revoke_skipped", reason="EMAILMCP_GOOGLE_CLIENT_ID is not set")
        return False
    return await _revoke_quietly(google, token)


async def replace_with_smtp(
    session: AsyncSession,
    ctx: TenantContext,
    google: GoogleOAuth | None,
    vault: Vault,
    user_id: str,
    body: SmtpMailboxIn,
    allow_private_hosts: bool,
) -> MailboxOut:
    """Sets the user's own SMTP mailbox; a Gmail connection it replaces is revoked at Google."""
    user = await users_service.find_user(session, ctx, user_id)
    grant = grant_token(ctx, vault, user) if user else None
    mailbox = await users_service.set_smtp_mailbox(session, ctx, vault, user_id, body, allow_private_hosts)
    await revoke_grant(google, grant)
    return mailbox


async def remove_mailbox(
    session: AsyncSession, ctx: TenantContext, google: GoogleOAuth | None, vault: Vault, user_id: str
) -> None:
    """Removes the user's mailbox; a Gmail connection is revoked at Google first."""
    grant = grant_token(ctx, vault, await users_service.get_user(session, ctx, user_id))
    await users_service.delete_mailbox(session, ctx, user_id)
    await revoke_grant(google, grant)


async def disconnect(
    session: AsyncSession, ctx: TenantContext, google: GoogleOAuth | None, vault: Vault, user_id: str
) -> bool:
    """Revokes the user's Gmail grant at Google, erases the tokens and marks the mailbox disconnected; their queued
    messages then fail with mailbox_not_connected. True when Google confirmed the revocation."""
    user = await users_service.get_user(session, ctx, user_id)
    if user.mailbox is None or user.mailbox.type != MailboxType.gmail:
        raise NotFound(f"a Gmail connection for user {user_id!r}", code="gmail_not_connected")
    revoked = await revoke_grant(google, grant_token(ctx, vault, user))
    await emit(session, mailbox_disconnected(user.mailbox, "disconnected"))
    await users_repository.save_mailbox(
        session,
        ctx,
        user,
        status=MailboxStatus.disconnected.value,
        oauth_access_token=None,
        oauth_refresh_token=None,
        oauth_expires_at=None,
        oauth_refreshing_until=None,
    )
    await session.commit()
    log.info("gmail_disconnected", tenant_id=ctx.tenant_id, user_id=user_id, revoked=revoked)
    return revoked
