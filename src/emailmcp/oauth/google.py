"""Google's OAuth 2.0 endpoints (or any compatible provider's), through Authlib's client."""

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx2
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

from emailmcp.db import utcnow
from emailmcp.settings import Settings

# Scopes every provider grants under another name, or that only identify the account; the others must be granted.
_IDENTITY_SCOPES = {"openid", "email", "profile"}


class ProviderError(Exception):
    """The provider refused: `error` is its OAuth error code (invalid_grant, ...), `description` its text."""

    def __init__(self, error: str, description: str | None = None) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description


class ProviderUnavailable(Exception):
    """The provider could not be reached in time, or answered something other than OAuth."""


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str | None  # None when the provider kept the one it gave before
    expires_at: datetime
    scopes: frozenset[str]
    id_token: str | None


def _tokens(answer: dict) -> Tokens:
    expires_in = answer.get("expires_in")
    return Tokens(
        access_token=answer["access_token"],
        refresh_token=answer.get("refresh_token"),
        expires_at=utcnow() + timedelta(seconds=int(expires_in) if expires_in else 3600),
        scopes=frozenset(str(answer.get("scope", "")).split()),
        id_token=answer.get("id_token"),
    )


def id_token_email(id_token: str | None, client_id: str) -> str | None:
    """The verified email claim of an ID token received straight from the token endpoint.

    OpenID Connect Core 3.1.3.7 lets a client that received the token over TLS from the token endpoint rely on
    that instead of the signature; the audience is still checked. None when the claim is absent or unverified.
    """
    if not id_token:
        return None
    try:
        payload = id_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    if not isinstance(claims, dict):
        return None
    audience = claims.get("aud")
    if client_id not in (audience if isinstance(audience, list) else [audience]):
        return None
    if claims.get("email") and claims.get("email_verified") in (True, "true"):
        return str(claims["email"]).lower()
    return None


class GoogleOAuth:
    """The operator's OAuth client at Google: consent URLs, code exchange, refresh, revocation, userinfo."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client_id = settings.google_client_id
        self.scopes = settings.google_scopes
        self._secret = settings.google_client_secret.get_secret_value() if settings.google_client_secret else None
        self._timeout = httpx2.Timeout(settings.google_timeout_seconds)
        # Loading the CA bundle takes ~50 ms of blocking CPU: done once here, not for every client below.
        self._tls = httpx2.create_ssl_context()

    def _client(self, **kwargs) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.client_id,
            client_secret=self._secret,
            token_endpoint_auth_method="client_secret_post",
            revocation_endpoint_auth_method="client_secret_post",
            redirect_uri=self.settings.oauth_callback_url,
            code_challenge_method="S256",
            timeout=self._timeout,
            verify=self._tls,
            **kwargs,
        )

    def authorization_url(self, state: str, code_verifier: str, login_hint: str | None) -> str:
        extra = {"login_hint": login_hint} if login_hint else {}
        client = self._client(scope=" ".join(self.scopes))
        url, _ = client.create_authorization_url(
            self.settings.google_auth_url,
            state=state,
            code_verifier=code_verifier,
            access_type="offline",
            prompt="consent",
            include_granted_scopes="true",
            **extra,
        )
        return url

    def missing_scopes(self, tokens: Tokens) -> list[str]:
        """Requested scopes the user did not grant (Google lets them untick each one)."""
        return [scope for scope in self.scopes if scope not in _IDENTITY_SCOPES and scope not in tokens.scopes]

    async def exchange(self, code: str, code_verifier: str) -> Tokens:
        async with self._client() as client:
            return _tokens(
                await self._call(
                    client.fetch_token(self.settings.google_token_url, code=code, code_verifier=code_verifier)
                )
            )

    async def refresh(self, refresh_token: str) -> Tokens:
        async with self._client() as client:
            return _tokens(
                await self._call(client.refresh_token(self.settings.google_token_url, refresh_token=refresh_token))
            )

    async def revoke(self, token: str) -> None:
        """Revokes the grant behind a token; an already invalid token counts as revoked."""
        async with self._client() as client:
            response = await self._call(client.revoke_token(self.settings.google_revoke_url, token=token))
        if response.status_code >= 500:
            raise ProviderUnavailable(f"the revocation endpoint answered HTTP {response.status_code}")

    async def account_email(self, tokens: Tokens) -> str:
        """The connected account's address: from the ID token when it carries a verified one, else userinfo."""
        email = id_token_email(tokens.id_token, self.client_id)
        if email:
            return email
        async with httpx2.AsyncClient(timeout=self._timeout, verify=self._tls) as http:
            try:
                response = await http.get(
                    self.settings.google_userinfo_url, headers={"Authorization": f"Bearer {tokens.access_token}"}
                )
                claims = response.json() if response.status_code == 200 else {}
            except (httpx2.HTTPError, ValueError) as exc:
                raise ProviderUnavailable(f"the userinfo endpoint failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise ProviderUnavailable(f"the userinfo endpoint answered HTTP {response.status_code}")
        if not claims.get("email") or claims.get("email_verified") not in (True, "true"):
            raise ProviderError("email_not_verified", "the account has no verified email address")
        return str(claims["email"]).lower()

    @staticmethod
    async def _call(request):
        try:
            return await request
        except OAuthError as exc:
            raise ProviderError(exc.error, exc.description) from None
        except httpx2.HTTPStatusError as exc:
            raise ProviderUnavailable(f"the token endpoint answered HTTP {exc.response.status_code}") from None
        except (httpx2.HTTPError, ValueError) as exc:
            raise ProviderUnavailable(f"the token endpoint failed: {type(exc).__name__}") from None
