"""Gmail over OAuth 2.0, end to end: a real OpenID Connect provider (oidc-provider on Node, tests/peers/oidc),
driven like a browser through login and consent, a real `emailmcp serve` process, and a local fake of Gmail's
send endpoint (tests/peers/gmail.py) that checks the bearer token at the provider and relays to an SMTP sink.
"""

import base64
import hashlib
import html
import json
import re
import sqlite3
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest

from conftest import (
    BACKENDS,
    OFFLINE_GOOGLE,
    PostgresDatabase,
    Server,
    WorkerProcess,
    assert_error,
    require_postgres,
)
from emailmcp.oauth.google import id_token_email
from emailmcp.vault import SecretContext, Vault
from peers.browser import authorize_in_browser
from peers.gmail import FakeGmail
from peers.oidc import OidcProvider
from peers.smtp import SmtpSink
from peers.webhooks import WebhookReceiver

RETURN_URL = "https://app.example.com/settings/email?tab=gmail"
FAST_RETRIES = {
    "EMAILMCP_RETRY_BASE_SECONDS": "0.2",
    "EMAILMCP_WORKER_POLL_SECONDS": "0.2",
    "EMAILMCP_SMTP_ALLOW_PRIVATE_HOSTS": "true",
    "EMAILMCP_WEBHOOK_ALLOW_HTTP": "true",
    "EMAILMCP_WEBHOOK_ALLOW_PRIVATE_HOSTS": "true",
}


@dataclass
class Stack:
    server: Server
    oidc: OidcProvider
    gmail: FakeGmail
    sink: SmtpSink
    database_url: str | None  # None: SQLite in the server's data dir

    @property
    def callback_url(self) -> str:
        return f"{self.server.url}/v1/oauth/callback"

    def sql(self, statement: str, *params: object) -> list[tuple]:
        """Runs SQL on the server's database behind its back (`?` placeholders); returns the rows."""
        if self.database_url is None:
            with sqlite3.connect(self.server.data_dir / "emailmcp.db") as conn:
                return conn.execute(statement, params).fetchall()
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cursor = conn.execute(statement.replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description else []


def start_stack(
    workdir: Path, sink: SmtpSink, database_url: str | None, id_token_email: bool = True, **env: str
) -> Stack:
    """A server whose Google is the local provider and whose Gmail API is the fake."""
    server = Server(workdir, database_url, **FAST_RETRIES, **env)
    oidc = OidcProvider([f"{server.url}/v1/oauth/callback"], id_token_email=id_token_email).start()
    gmail = FakeGmail(oidc, sink.host, sink.port).start()
    server.env.update(oidc.emailmcp_env())
    server.env.update({"EMAILMCP_GMAIL_API_BASE": gmail.api_base, "EMAILMCP_PUBLIC_URL": server.url})
    server.start()
    return Stack(server, oidc, gmail, sink, database_url)


def stop_stack(stack: Stack) -> None:
    stack.server.stop()
    stack.gmail.stop()
    stack.oidc.stop()


@pytest.fixture(scope="module")
def module_sink():
    with SmtpSink() as sink:
        yield sink


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request, tmp_path_factory, module_sink):
    database = PostgresDatabase(require_postgres()) if request.param == "postgresql" else None
    stack = start_stack(tmp_path_factory.mktemp(f"gmail-{request.param}"), module_sink, database and database.url)
    yield stack
    stop_stack(stack)
    if database:
        database.drop()


@pytest.fixture
def tenant(stack, tenant_name):
    """A fresh tenant with a mail+admin key, allowed to send users back to RETURN_URL."""
    key = stack.server.create_key(tenant_name, "mail", "admin")
    stack.server.cli("tenants", "set", tenant_name, "oauth_return_urls", RETURN_URL)
    return key


@pytest.fixture
def client(stack, tenant):
    with stack.server.client(tenant) as client:
        yield client


def unique_user(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def authorize(client, user_id: str, **extra: object) -> dict:
    response = client.post("/v1/oauth/authorize", json={"user_id": user_id, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def consent(stack: Stack, client, user_id: str, login: str, action: str = "consent", **extra: object) -> str:
    """Starts the flow and walks the provider's pages; returns the callback URL the browser is sent to."""
    flow = authorize(client, user_id, **extra)
    return authorize_in_browser(flow["authorization_url"], login, stop_at=stack.callback_url, action=action)


def open_callback(callback_url: str) -> httpx2.Response:
    """What the user's browser does with the callback URL: one GET, redirects not followed."""
    return httpx2.get(callback_url, follow_redirects=False, timeout=30)


def connect(stack: Stack, client, user_id: str, login: str) -> dict:
    response = open_callback(consent(stack, client, user_id, login))
    assert response.status_code == 200, response.text
    profile = client.get(f"/v1/users/{user_id}/profile").json()
    assert profile["gmail_connected"] is True, profile
    return profile


def mailbox(client, user_id: str) -> dict:
    return client.get(f"/v1/users/{user_id}/mailbox").json()


def send(client, user_id: str, **content: object) -> dict:
    response = client.post(f"/v1/users/{user_id}/messages", json={"to": ["ada@example.com"]} | content)
    assert response.status_code == 202, response.text
    return response.json()


def wait_for_status(client, message_id: str, *statuses: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        message = client.get(f"/v1/messages/{message_id}").json()
        if message["status"] in statuses:
            return message
        if time.monotonic() > deadline:
            raise AssertionError(f"message {message_id} not {'/'.join(statuses)} in {timeout}s: {message}")
        time.sleep(0.1)


def arrived(sink: SmtpSink, message_id: str, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for received in list(sink.messages):
            if received.message["Message-ID"] == message_id:
                return received
        time.sleep(0.05)
    raise AssertionError(f"{message_id} never reached the SMTP sink")


def user_pk(stack: Stack, user_id: str) -> int:
    return stack.sql("SELECT id FROM end_users WHERE user_id = ?", user_id)[0][0]


def expire_access_token(stack: Stack, user_id: str) -> None:
    stack.sql(
        "UPDATE mailboxes SET oauth_expires_at = ? WHERE user_pk = ?",
        "2000-01-01 00:00:00.000000",
        user_pk(stack, user_id),
    )


def stored_tokens(stack: Stack, user_id: str) -> dict[str, str | None]:
    """The user's tokens as the server decrypts them, from the database and the server's own secret key."""
    if stack.database_url is None:
        secret = (stack.server.data_dir / "secret-key").read_text().strip().encode()
    else:
        secret = stack.server.env["EMAILMCP_SECRET_KEY"].encode()
    vault = Vault.from_settings(secret, None)
    pk = user_pk(stack, user_id)
    tenant_id, access, refresh = stack.sql(
        "SELECT tenant_id, oauth_access_token, oauth_refresh_token FROM mailboxes WHERE user_pk = ?", pk
    )[0]
    return {
        column: vault.decrypt(value, SecretContext("mailboxes", column, tenant_id, pk)) if value else None
        for column, value in (("oauth_access_token", access), ("oauth_refresh_token", refresh))
    }


# -- connecting ----------------------------------------------------------------------------------------------------


def test_connect_then_send_from_the_gmail_address_with_bcc_and_threads(stack, client):
    user = unique_user()
    flow = authorize(client, user, redirect_uri=RETURN_URL, login_hint="ana@example.com")
    query = parse_qs(urlsplit(flow["authorization_url"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["access_type"] == ["offline"]
    assert query["prompt"] == ["consent"] and query["state"] == [flow["state"]]
    assert query["scope"][0].split() == ["openid", "email", "https://www.googleapis.com/auth/gmail.send"]
    assert query["redirect_uri"] == [stack.callback_url] and query["login_hint"] == ["ana@example.com"]
    assert len(flow["state"]) >= 22  # at least 128 bits, url-safe base64

    callback = authorize_in_browser(flow["authorization_url"], "ana@example.com", stop_at=stack.callback_url)
    response = open_callback(callback)
    assert response.status_code == 302, response.text
    back = urlsplit(response.headers["location"])
    assert back.netloc == "app.example.com" and back.path == "/settings/email"
    assert parse_qs(back.query) == {"tab": ["gmail"], "status": ["connected"], "user_id": [user]}

    profile = client.get(f"/v1/users/{user}/profile").json()
    assert profile["gmail_connected"] is True and profile["email_address"] == "ana@example.com"
    assert profile["mailbox"] | {"connected_at": None} == {
        "type": "gmail",
        "status": "connected",
        "from_address": "ana@example.com",
        "connected_at": None,
        "smtp": None,
    }

    first = send(client, user, subject="Quarterly plan", cc=["cy@example.com"], bcc=["hidden@example.com"])
    assert first["transport"] == "gmail" and first["from_address"] == "ana@example.com"
    sent = wait_for_status(client, first["id"], "sent")
    received = arrived(stack.sink, first["message_id"])
    assert received.sender == "ana@example.com"
    assert sorted(received.recipients) == ["ada@example.com", "cy@example.com", "hidden@example.com"]
    assert received.message["Bcc"] is None and "hidden@example.com" not in received.raw.decode()
    assert sent["provider_message_id"] and sent["provider_thread_id"]

    reply = send(client, user, subject="Re: Quarterly plan", in_reply_to=first["message_id"])
    replied = wait_for_status(client, reply["id"], "sent")
    assert replied["provider_thread_id"] == sent["provider_thread_id"]
    asked = [r for r in stack.gmail.sent if r.message["Message-ID"] == reply["message_id"]]
    assert [r.thread_id for r in asked] == [sent["provider_thread_id"]]
    first_call = [r for r in stack.gmail.sent if r.message["Message-ID"] == first["message_id"]]
    assert [r.thread_id for r in first_call] == [None]


def test_callback_without_a_return_url_answers_a_page(stack, client):
    user = unique_user()
    response = open_callback(consent(stack, client, user, "bo@example.com"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "bo@example.com" in response.text and "connected" in response.text


def test_apps_that_receive_the_code_complete_with_a_post(stack, client):
    user = unique_user()
    callback = parse_qs(urlsplit(consent(stack, client, user, "cy@example.com")).query)
    response = client.post("/v1/oauth/callback", json={"code": callback["code"][0], "state": callback["state"][0]})
    assert response.status_code == 200, response.text
    assert response.json() | {"mailbox": None} == {
        "user_id": user,
        "status": "connected",
        "email": "cy@example.com",
        "mailbox": None,
    }
    again = client.post("/v1/oauth/callback", json={"code": callback["code"][0], "state": callback["state"][0]})
    assert_error(again, 400, "invalid_state")
    assert_error(client.post("/v1/oauth/callback", json={"code": "x", "state": "y", "user_id": "other"}), 422)


def test_a_return_url_must_be_one_of_the_tenants(client):
    response = client.post(
        "/v1/oauth/authorize", json={"user_id": unique_user(), "redirect_uri": "https://evil.example.net/steal"}
    )
    error = assert_error(response, 422, "redirect_uri_not_allowed")
    assert error["details"][0]["field"] == "redirect_uri"


def test_forged_replayed_expired_and_denied_callbacks_store_nothing(stack, client):
    user = unique_user()
    forged = open_callback(f"{stack.callback_url}?code=anything&state=forged-{uuid.uuid4().hex}")
    assert forged.status_code == 400 and forged.headers["content-type"].startswith("text/html")
    assert "unknown" in forged.text

    denied = open_callback(consent(stack, client, user, "di@example.com", action="deny", redirect_uri=RETURN_URL))
    assert denied.status_code == 302
    assert parse_qs(urlsplit(denied.headers["location"]).query) | {"tab": None} == {
        "tab": None,
        "status": ["error"],
        "error": ["access_denied"],
        "user_id": [user],
    }
    denied_page = open_callback(consent(stack, client, user, "di@example.com", action="deny"))
    assert denied_page.status_code == 400 and "not granted" in denied_page.text

    expiring = consent(stack, client, user, "di@example.com")
    state = parse_qs(urlsplit(expiring).query)["state"][0]
    stack.sql(
        "UPDATE oauth_states SET expires_at = ? WHERE id = ?",
        "2000-01-01 00:00:00.000000",
        hashlib.sha256(state.encode()).hexdigest(),
    )
    expired = open_callback(expiring)
    assert expired.status_code == 400 and "expired" in expired.text
    assert mailbox(client, user)["status"] == "not_connected"

    used = consent(stack, client, user, "di@example.com")
    assert open_callback(used).status_code == 200
    connected_at = mailbox(client, user)["connected_at"]
    replayed = open_callback(used)
    assert replayed.status_code == 400 and "already used" in replayed.text
    assert mailbox(client, user)["connected_at"] == connected_at
    assert stack.sql("SELECT COUNT(*) FROM oauth_states WHERE user_pk = ?", user_pk(stack, user)) == [(0,)]


def test_a_state_never_connects_another_tenants_or_another_users_mailbox(stack, client, tenant_name):
    mine, neighbour = unique_user("mine"), unique_user("neighbour")
    client.post("/v1/users", json={"user_id": neighbour})
    callback = parse_qs(urlsplit(consent(stack, client, mine, "me@example.com")).query)
    other_key = stack.server.create_key(f"{tenant_name}-other", "mail", "admin")
    with stack.server.client(other_key) as other:
        other.post("/v1/users", json={"user_id": mine})  # same user_id, another tenant
        stolen = other.post("/v1/oauth/callback", json={"code": callback["code"][0], "state": callback["state"][0]})
        assert_error(stolen, 400, "invalid_state")
        assert mailbox(other, mine)["status"] == "not_connected"
    # The other tenant's attempt did not use the state up: its own tenant can still complete it, for its user only.
    response = client.post("/v1/oauth/callback", json={"code": callback["code"][0], "state": callback["state"][0]})
    assert response.status_code == 200 and response.json()["user_id"] == mine
    assert mailbox(client, mine)["status"] == "connected"
    assert mailbox(client, neighbour)["status"] == "not_connected"


def test_tokens_are_stored_encrypted(stack, client):
    user = unique_user()
    connect(stack, client, user, "enc@example.com")
    wait_for_status(client, send(client, user)["id"], "sent")
    tokens = stored_tokens(stack, user)
    assert stack.oidc.introspect(tokens["oauth_refresh_token"])["active"] is True
    used = [r.token for r in stack.gmail.sent if r.account == "enc@example.com"]
    assert used == [tokens["oauth_access_token"]]
    if stack.database_url is not None:
        import psycopg

        with psycopg.connect(stack.database_url) as conn:
            dump = "\n".join(
                str(row) for table in ("mailboxes", "oauth_states") for row in conn.execute(f"SELECT * FROM {table}")
            ).encode()
    else:
        dump = b"".join(path.read_bytes() for path in stack.server.data_dir.glob("emailmcp.db*"))
    for token in tokens.values():
        assert token.encode() not in dump


def test_the_address_comes_from_userinfo_when_the_id_token_has_none(tmp_path_factory, module_sink):
    stack = start_stack(tmp_path_factory.mktemp("gmail-userinfo"), module_sink, None, id_token_email=False)
    try:
        with stack.server.client(stack.server.bootstrap_key) as client:
            profile = connect(stack, client, unique_user(), "info@example.com")
            assert profile["email_address"] == "info@example.com"
    finally:
        stop_stack(stack)


def test_a_permission_left_ungranted_connects_nothing_and_gives_the_grant_back(tmp_path_factory, module_sink):
    """The provider knows nothing of one requested scope, so it is not granted: as when a Google user unticks it."""
    scopes = "openid email https://www.googleapis.com/auth/gmail.send https://www.googleapis.com/auth/gmail.labels"
    stack = start_stack(tmp_path_factory.mktemp("gmail-scope"), module_sink, None, EMAILMCP_GOOGLE_SCOPES=scopes)
    try:
        with stack.server.client(stack.server.bootstrap_key) as client:
            user = unique_user()
            response = open_callback(consent(stack, client, user, "partial@example.com"))
            assert response.status_code == 400
            assert "gmail.labels" in response.text and "not granted" in response.text
            assert mailbox(client, user)["status"] == "not_connected"
        stack.oidc.wait_for_event(lambda event: event["event"] == "revocation.success")
    finally:
        stop_stack(stack)


# -- delivery with tokens that expire, are refused or are revoked --------------------------------------------------


def test_an_expired_token_is_refreshed_once_for_a_whole_drain(stack, client):
    user = unique_user()
    connect(stack, client, user, "drain@example.com")
    before = stack.oidc.grants("refresh_token")
    old = stored_tokens(stack, user)["oauth_access_token"]
    expire_access_token(stack, user)
    queued = [send(client, user, subject=f"drain {n}") for n in range(20)]
    for message in queued:
        wait_for_status(client, message["id"], "sent")
    assert stack.oidc.grants("refresh_token") - before == 1
    fresh = stored_tokens(stack, user)["oauth_access_token"]
    assert fresh != old
    assert {r.token for r in stack.gmail.sent if r.account == "drain@example.com"} == {fresh}
    expires_at = stack.sql("SELECT oauth_expires_at FROM mailboxes WHERE user_pk = ?", user_pk(stack, user))[0][0]
    if isinstance(expires_at, str):
        expires_at = datetime.fromisoformat(expires_at).replace(tzinfo=UTC)
    assert expires_at > datetime.now(UTC) + timedelta(minutes=30)


def test_a_refused_token_is_refreshed_once_and_the_send_retried(stack, client):
    user = unique_user()
    connect(stack, client, user, "401@example.com")
    before = stack.oidc.grants("refresh_token")
    stack.gmail.fail_next(401)
    message = wait_for_status(client, send(client, user)["id"], "sent")
    assert [a["outcome"] for a in client.get(f"/v1/messages/{message['id']}").json()["attempt_history"]] == ["sent"]
    assert stack.oidc.grants("refresh_token") - before == 1


def test_rate_limits_and_server_errors_are_retried_honouring_retry_after(stack, client):
    user = unique_user()
    connect(stack, client, user, "429@example.com")
    stack.gmail.fail_next(500)
    stack.gmail.fail_next(429, retry_after=2)
    message = wait_for_status(client, send(client, user)["id"], "sent", timeout=45)
    history = client.get(f"/v1/messages/{message['id']}").json()["attempt_history"]
    assert [a["outcome"] for a in history] == ["transient_failure", "transient_failure", "sent"]
    assert (
        "500" in history[0]["detail"] and "429" in history[1]["detail"] and "rateLimitExceeded" in history[1]["detail"]
    )
    waited = datetime.fromisoformat(history[2]["started_at"]) - datetime.fromisoformat(history[1]["finished_at"])
    assert waited >= timedelta(seconds=1.9)


def test_a_message_gmail_refuses_fails_with_googles_reason(stack, client):
    user = unique_user()
    connect(stack, client, user, "400@example.com")
    stack.gmail.fail_next(400)
    message = wait_for_status(client, send(client, user)["id"], "failed")
    assert "gmail 400" in message["error"] and message["attempts"] == 1


def test_a_revoked_grant_needs_reauth_and_stops_retrying(stack, client):
    user = unique_user()
    connect(stack, client, user, "gone@example.com")
    wait_for_status(client, send(client, user)["id"], "sent")
    token = stored_tokens(stack, user)["oauth_access_token"]
    stack.oidc.revoke(token)  # the user removed the app's access in their Google account
    before = stack.oidc.grants("refresh_token")

    failed = wait_for_status(client, send(client, user)["id"], "failed")
    assert failed["error"] == "mailbox_needs_reauth" and failed["attempts"] == 1
    assert stack.oidc.grants("refresh_token") == before  # the refresh was refused, not granted
    profile = client.get(f"/v1/users/{user}/profile").json()
    assert profile["gmail_connected"] is False and profile["mailbox"]["status"] == "needs_reauth"
    assert stored_tokens(stack, user) == {"oauth_access_token": None, "oauth_refresh_token": None}
    assert_error(client.post(f"/v1/users/{user}/messages", json={"to": ["a@example.com"]}), 409, "mailbox_needs_reauth")
    metrics = httpx2.get(f"{stack.server.url}/metrics").text
    line = next(
        row for row in metrics.splitlines() if row.startswith('emailmcp_mailboxes{status="needs_reauth",type="gmail"}')
    )
    assert float(line.split()[-1]) >= 1
    assert 'emailmcp_gmail_token_refreshes_total{outcome="invalid_grant"}' in metrics

    # Connecting again fixes it.
    connect(stack, client, user, "gone@example.com")
    wait_for_status(client, send(client, user)["id"], "sent")


def test_webhooks_tell_the_app_when_gmail_connects_needs_the_user_again_and_disconnects(stack, client):
    mailbox_events = ["mailbox.connected", "mailbox.needs_reauth", "mailbox.disconnected"]
    with WebhookReceiver() as receiver:
        response = client.post(
            "/v1/webhooks", json={"url": receiver.url, "events": [*mailbox_events, "message.failed"]}
        )
        assert response.status_code == 201, response.text
        secret = response.json()["secret"]

        def events(count: int) -> list[dict]:
            return [receiver.verify(delivery, secret) for delivery in receiver.wait_for(count)]

        user = unique_user()
        connect(stack, client, user, "hooks@example.com")
        [connected] = events(1)
        assert connected["type"] == "mailbox.connected"
        gmail_mailbox = {"type": "gmail", "from_address": "hooks@example.com"}
        assert connected["data"] == {"user_id": user, "mailbox": gmail_mailbox | {"status": "connected"}}

        # The user removes the app's access at Google: the next send finds out and the app hears of it.
        stack.oidc.revoke(stored_tokens(stack, user)["oauth_access_token"])
        failed = wait_for_status(client, send(client, user)["id"], "failed")
        by_type = {event["type"]: event for event in events(3)}
        needs_reauth = by_type["mailbox.needs_reauth"]["data"]
        assert needs_reauth["user_id"] == user
        assert needs_reauth["mailbox"] == gmail_mailbox | {"status": "needs_reauth"}
        assert needs_reauth["reason"].startswith("invalid_grant")
        message = by_type["message.failed"]["data"]["message"]
        assert (message["id"], message["error"]) == (failed["id"], "mailbox_needs_reauth")

        connect(stack, client, user, "hooks@example.com")
        assert client.delete(f"/v1/users/{user}/gmail").status_code == 200
        later = {event["type"]: event for event in events(5)[3:]}  # the order of arrival is not guaranteed
        assert set(later) == {"mailbox.connected", "mailbox.disconnected"}
        assert later["mailbox.disconnected"]["data"] == {
            "user_id": user,
            "mailbox": gmail_mailbox | {"status": "disconnected"},
            "reason": "disconnected",
        }
        assert len({event["id"] for event in events(5)}) == 5


def test_disconnect_revokes_at_google_and_fails_queued_mail(stack, client):
    user = unique_user()
    connect(stack, client, user, "bye@example.com")
    refresh_token = stored_tokens(stack, user)["oauth_refresh_token"]
    later = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    queued = send(client, user, send_at=later)

    response = client.delete(f"/v1/users/{user}/gmail")
    assert response.status_code == 200, response.text
    assert response.json() == {"user_id": user, "status": "disconnected", "revoked": True}
    assert stack.oidc.introspect(refresh_token)["active"] is False
    assert stored_tokens(stack, user) == {"oauth_access_token": None, "oauth_refresh_token": None}
    assert mailbox(client, user)["status"] == "disconnected"

    failed = wait_for_status(client, queued["id"], "failed")
    assert failed["error"] == "mailbox_not_connected"
    assert not [r for r in stack.gmail.requests if r.message and r.message["Message-ID"] == queued["message_id"]]
    assert_error(
        client.post(f"/v1/users/{user}/messages", json={"to": ["a@example.com"]}), 409, "mailbox_not_connected"
    )
    assert_error(client.delete(f"/v1/users/{unique_user()}/gmail"), 404)


def test_deleting_the_user_revokes_their_grant_first(stack, client):
    user = unique_user()
    connect(stack, client, user, "erase@example.com")
    refresh_token = stored_tokens(stack, user)["oauth_refresh_token"]
    assert client.delete(f"/v1/users/{user}").status_code == 204
    assert stack.oidc.introspect(refresh_token)["active"] is False


def test_replacing_gmail_with_smtp_revokes_and_erases_the_tokens(stack, client):
    user = unique_user()
    connect(stack, client, user, "switch@example.com")
    refresh_token = stored_tokens(stack, user)["oauth_refresh_token"]
    smtp = {"type": "smtp", "host": "127.0.0.1", "port": stack.sink.port, "security": "none"}
    response = client.put(f"/v1/users/{user}/mailbox", json=smtp | {"from_address": "switch@example.com"})
    assert response.status_code == 200, response.text
    assert stack.oidc.introspect(refresh_token)["active"] is False
    assert stored_tokens(stack, user) == {"oauth_access_token": None, "oauth_refresh_token": None}


# -- configuration and several processes ---------------------------------------------------------------------------


def test_not_configured_answers_503(start_server, tenant_name):
    server = start_server()
    key = server.create_key(tenant_name, "mail", "admin")
    with server.client(key) as client:
        error = assert_error(client.post("/v1/oauth/authorize", json={"user_id": "u1"}), 503, "gmail_not_configured")
    assert "EMAILMCP_GOOGLE_CLIENT_ID" in error["message"]
    page = open_callback(f"{server.url}/v1/oauth/callback?code=x&state=y")
    assert page.status_code == 503 and "EMAILMCP_GOOGLE_CLIENT_ID" in page.text


def test_google_unreachable_during_the_callback_is_a_502_page(start_server, tenant_name):
    server = start_server(**OFFLINE_GOOGLE)
    key = server.create_key(tenant_name, "mail")
    with server.client(key) as client:
        state = authorize(client, "u1")["state"]
    page = open_callback(f"{server.url}/v1/oauth/callback?code=x&state={state}")
    assert page.status_code == 502 and "could not be reached" in page.text
    assert "not-a-real-secret" not in server.log_text()


@pytest.mark.postgres
def test_two_workers_refresh_a_shared_token_once(tmp_path_factory, module_sink):
    """Workers in two processes need the same expired token at once: one refreshes, the other waits for it."""
    database = PostgresDatabase(require_postgres())
    stack = start_stack(tmp_path_factory.mktemp("gmail-two"), module_sink, database.url)
    workers = []
    try:
        server = stack.server
        key = server.create_key("two-workers", "mail", "admin")
        with server.client(key) as client:
            user = unique_user()
            connect(stack, client, user, "shared@example.com")
            server.stop()  # its embedded worker must not take part: start it again without one
            server.args = ("--no-worker",)
            server.start()
            expire_access_token(stack, user)
            queued = [send(client, user, subject=f"shared {n}") for n in range(40)]
            before = stack.oidc.grants("refresh_token")
            workers = [WorkerProcess(server, 8, number) for number in (1, 2)]
            for message in queued:
                wait_for_status(client, message["id"], "sent", timeout=60)
        assert stack.oidc.grants("refresh_token") - before == 1
        refreshed_in = [w for w in workers if "gmail_token_refreshed" in w.log_text()]
        assert len(refreshed_in) == 1
    finally:
        for worker in workers:
            worker.close()
        stop_stack(stack)
        database.drop()


def _id_token(claims: dict) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.signature"


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"aud": "client-1", "email": "Ada@Example.com", "email_verified": True}, "ada@example.com"),
        ({"aud": ["other", "client-1"], "email": "ada@example.com", "email_verified": "true"}, "ada@example.com"),
        ({"aud": "someone-else", "email": "ada@example.com", "email_verified": True}, None),
        ({"aud": "client-1", "email": "ada@example.com", "email_verified": False}, None),
        ({"aud": "client-1"}, None),
    ],
)
def test_only_a_verified_address_for_this_client_is_taken_from_an_id_token(claims, expected):
    assert id_token_email(_id_token(claims), "client-1") == expected


@pytest.mark.parametrize("token", [None, "", "not-a-jwt", "a.!!!.c", "a.bm90IGpzb24.c", "a.MQ.c"])
def test_an_unreadable_id_token_yields_no_address(token):
    assert id_token_email(token, "client-1") is None


def _csrf(page: httpx2.Response) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def test_the_dashboard_connects_gmail_and_comes_back_to_the_users_page(stack, tenant):
    """The dashboard's "Connect Gmail": its own page as the return URL (no oauth_return_urls entry needed), the
    consent at the provider, then back on the user's page, connected; "Disconnect Gmail" revokes at the provider."""
    user = unique_user("dash")
    with httpx2.Client(base_url=stack.server.url, follow_redirects=False, timeout=30) as browser:
        signed_in = browser.post(
            "/dashboard/sign-in",
            data={"api_key": tenant, "csrf_token": _csrf(browser.get("/dashboard/sign-in"))},
        )
        assert signed_in.status_code == 303
        csrf = _csrf(browser.get("/dashboard/users"))
        assert browser.post("/dashboard/users", data={"user_id": user, "csrf_token": csrf}).status_code == 303
        start = browser.post(f"/dashboard/users/{user}/gmail", data={"csrf_token": csrf})
        assert start.status_code == 303
        callback = authorize_in_browser(start.headers["location"], "dana@example.com", stop_at=stack.callback_url)
        back = open_callback(callback)  # a page that moves on by itself (see test_dashboard.py for why)
        location = f"{stack.server.url}/dashboard/users/{user}?status=connected&amp;user_id={user}"
        assert back.status_code == 200 and f'content="0;url={location}"' in back.text
        page = browser.get(html.unescape(location))
        assert "Gmail is connected." in page.text and "dana@example.com" in page.text
        revoked_before = len(stack.oidc.events_of("revocation.success"))
        assert browser.post(f"/dashboard/users/{user}/mailbox/remove", data={"csrf_token": csrf}).status_code == 303
        assert "status-disconnected" in browser.get(f"/dashboard/users/{user}").text
    assert len(stack.oidc.events_of("revocation.success")) > revoked_before
