"""A real OpenID Connect provider on loopback for the OAuth 2.0 / Gmail tests: panva's oidc-provider (Node), run
from tests/peers/oidc/server.mjs, set up to behave like Google's endpoints (see that file's header comment).

    with OidcProvider(["http://127.0.0.1:8000/v1/oauth/google/callback"]) as oidc:
        env = oidc.emailmcp_env()  # EMAILMCP_GOOGLE_* for the service under test
        ...
        assert oidc.grants("refresh_token") == 1

The first start installs the pinned npm packages (`npm ci`, see peers.npm) into tests/peers/oidc/node_modules,
under a file lock so that parallel test processes do not race. State (sessions, grants, tokens) lives in the Node
process's memory and is gone after `stop()`.

Each JSON line the server prints is an event in `events` (each also has "time", epoch seconds):
    {"event": "grant.success", "grant_type": "authorization_code" | "refresh_token", "account": <sub>,
     "scope": <granted scopes>, "refresh_token_in_response": bool}
    {"event": "grant.error", "grant_type": ..., "error": "invalid_grant", "error_description": ..., "detail": ...}
    {"event": "revocation.success", "token_type_hint": ...}, {"event": "access_token.destroyed"},
    {"event": "refresh_token.destroyed"}, {"event": "grant.revoked", "grant_id": ...}
    {"event": "authorization.success"}, {"event": "authorization.error", "error": "access_denied", ...}
    {"event": "interaction.started", "prompt": "login" | "consent"}
    {"event": "revocation.error" | "introspection.error" | "userinfo.error", "error": ..., "error_description": ...}
    {"event": "server_error", "message": ...}, {"event": "sync", "nonce": ...}
They arrive through a pipe a moment after the HTTP responses: `grants()` and `events_of()` call `sync()` first, so
that they count every request answered before; read `events` directly only after `sync()` or `wait_for_event()`.
"""

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2

from peers.npm import ensure_installed
from peers.smtp import free_port

PEER_DIR = Path(__file__).with_name("oidc")
GMAIL_SEND_SCOPE = "https://www.googleapis.com/auth/gmail.send"


class OidcProvider:
    """One oidc-provider process with one confidential client (client_secret_post) whose redirect URIs are given."""

    host = "127.0.0.1"

    def __init__(self, redirect_uris: list[str], access_token_ttl: int = 3600, id_token_email: bool = True) -> None:
        self.redirect_uris = list(redirect_uris)
        self.access_token_ttl = access_token_ttl
        self.id_token_email = id_token_email  # False: the address is only in the userinfo answer
        self.client_id = f"emailmcp-test-{secrets.token_hex(6)}.apps.example.com"
        self.client_secret = secrets.token_urlsafe(24)
        self.port = 0
        self.issuer = ""
        self.metadata: dict[str, Any] = {}
        self.authorization_url = self.token_url = self.revocation_url = ""
        self.userinfo_url = self.introspection_url = self.jwks_url = ""
        self.events: list[dict[str, Any]] = []
        self._output: list[str] = []  # every line of stdout and stderr, for error messages
        self._changed = threading.Condition()
        self._process: subprocess.Popen[str] | None = None
        self._threads: list[threading.Thread] = []

    # Lifecycle.

    def start(self) -> "OidcProvider":
        ensure_installed(PEER_DIR)
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed: the OIDC test peer needs Node.js 20+")
        self.port = free_port()
        self.issuer = f"http://{self.host}:{self.port}"
        env = {
            **os.environ,
            "OIDC_PORT": str(self.port),
            "OIDC_CLIENT_ID": self.client_id,
            "OIDC_CLIENT_SECRET": self.client_secret,
            "OIDC_REDIRECT_URIS": ",".join(self.redirect_uris),
            "OIDC_ACCESS_TOKEN_TTL": str(self.access_token_ttl),
            "OIDC_ID_TOKEN_EMAIL": "1" if self.id_token_email else "0",
            "NODE_ENV": "development",
        }
        env.pop("DEBUG", None)
        self._process = subprocess.Popen(
            [node, "server.mjs"],
            cwd=PEER_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._ready: str | None = None
        self._threads = [
            threading.Thread(target=self._read_stdout, name="oidc-stdout", daemon=True),
            threading.Thread(target=self._read_stderr, name="oidc-stderr", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        with self._changed:
            ok = self._changed.wait_for(lambda: self._ready is not None or self._process.poll() is not None, 30)
        if not ok or self._ready is None:
            self.stop()
            raise RuntimeError(f"the OIDC provider did not start:\n{self.output}")
        if self._ready != self.issuer:
            self.stop()
            raise RuntimeError(f"the OIDC provider announced {self._ready!r}, expected {self.issuer!r}")
        try:
            response = httpx2.get(f"{self.issuer}/.well-known/openid-configuration", timeout=10)
            response.raise_for_status()
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"the OIDC provider's discovery document failed: {exc}\n{self.output}") from exc
        self.metadata = response.json()
        self.authorization_url = self.metadata["authorization_endpoint"]
        self.token_url = self.metadata["token_endpoint"]
        self.revocation_url = self.metadata["revocation_endpoint"]
        self.userinfo_url = self.metadata["userinfo_endpoint"]
        self.introspection_url = self.metadata["introspection_endpoint"]
        self.jwks_url = self.metadata["jwks_uri"]
        return self

    def stop(self) -> None:
        """Ends the Node process (SIGTERM, then SIGKILL after 5 s)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for thread in self._threads:
            thread.join(5)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> "OidcProvider":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def output(self) -> str:
        """Everything the process printed so far, stdout and stderr interleaved as read."""
        with self._changed:
            return "\n".join(self._output)

    # Events.

    def _read_stdout(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            with self._changed:
                self._output.append(line)
                if line.startswith("READY "):
                    self._ready = line.removeprefix("READY ").strip()
                elif line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        self.events.append(json.loads(line))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _read_stderr(self) -> None:
        process = self._process
        assert process is not None and process.stderr is not None
        for line in process.stderr:
            with self._changed:
                self._output.append(line.rstrip("\n"))

    def sync(self, timeout: float = 10) -> None:
        """Waits until every event of the requests answered so far has been read into `events`: the event lines
        reach this wrapper through a pipe a moment after the HTTP responses reach their clients, and the server
        prints a marker line on request that comes after them."""
        nonce = secrets.token_hex(8)
        httpx2.get(f"{self.issuer}/__test/sync", params={"nonce": nonce}, timeout=timeout).raise_for_status()
        self.wait_for_event(lambda event: event.get("event") == "sync" and event.get("nonce") == nonce, timeout)

    def events_of(self, name: str) -> list[dict[str, Any]]:
        """The events named `name` (e.g. "grant.success", "grant.error", "revocation.success") so far, after
        `sync()`."""
        self.sync()
        with self._changed:
            return [event for event in self.events if event.get("event") == name]

    def grants(self, grant_type: str) -> int:
        """How many token requests of `grant_type` ("authorization_code", "refresh_token") succeeded so far."""
        return sum(1 for event in self.events_of("grant.success") if event.get("grant_type") == grant_type)

    def wait_for_event(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
        """Blocks until an event (past or future) satisfies `predicate`, and returns the first that does."""

        def found() -> dict[str, Any] | None:
            return next((event for event in self.events if predicate(event)), None)

        with self._changed:
            if not self._changed.wait_for(lambda: found() is not None, timeout):
                raise AssertionError(f"no matching OIDC provider event within {timeout}s; events: {self.events}")
            event = found()
            assert event is not None
            return event

    # The service's configuration, and calls that tests make behind the service's back.

    def emailmcp_env(self) -> dict[str, str]:
        """The EMAILMCP_GOOGLE_* settings that point the service at this provider."""
        return {
            "EMAILMCP_GOOGLE_CLIENT_ID": self.client_id,
            "EMAILMCP_GOOGLE_CLIENT_SECRET": self.client_secret,
            "EMAILMCP_GOOGLE_AUTH_URL": self.authorization_url,
            "EMAILMCP_GOOGLE_TOKEN_URL": self.token_url,
            "EMAILMCP_GOOGLE_REVOKE_URL": self.revocation_url,
            "EMAILMCP_GOOGLE_USERINFO_URL": self.userinfo_url,
        }

    def _client_post(self, url: str, data: dict[str, str]) -> httpx2.Response:
        body = {**data, "client_id": self.client_id, "client_secret": self.client_secret}
        return httpx2.post(url, data=body, timeout=10)

    def revoke(self, token: str) -> None:
        """Revokes an access or refresh token (and with it every token of its grant), as the account owner would."""
        response = self._client_post(self.revocation_url, {"token": token})
        if response.status_code != 200:
            raise AssertionError(f"revocation failed: {response.status_code} {response.text}")

    def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662 introspection: {"active": False} for an unknown, expired or revoked token; otherwise active,
        sub, client_id, scope, exp, token_type, ..."""
        response = self._client_post(self.introspection_url, {"token": token})
        if response.status_code != 200:
            raise AssertionError(f"introspection failed: {response.status_code} {response.text}")
        return response.json()
