"""Authentication and authorisation over real HTTP: every route, every kind of bad key, scopes, revocation, tenants."""

import base64
import secrets
import string

import pytest

from conftest import assert_error

# Every authenticated operation, with the scope it needs. A route added to the app without a row here fails
# test_route_table_covers_every_operation, so nobody ships an endpoint whose auth is untested.
ROUTES = [
    ("POST", "/v1/users", "mail"),
    ("GET", "/v1/users", "mail"),
    ("GET", "/v1/users/{user_id}/profile", "mail"),
    ("DELETE", "/v1/users/{user_id}", "admin"),
    ("GET", "/v1/users/{user_id}/mailbox", "mail"),
    ("PUT", "/v1/users/{user_id}/mailbox", "admin"),
    ("DELETE", "/v1/users/{user_id}/mailbox", "admin"),
    ("POST", "/v1/users/{user_id}/messages", "mail"),
    ("POST", "/v1/messages", "mail"),
    ("GET", "/v1/messages", "mail"),
    ("GET", "/v1/messages/{message_id}", "mail"),
    ("POST", "/v1/messages/{message_id}/cancel", "mail"),
    ("GET", "/v1/messages/{message_id}/raw", "mail"),
    ("GET", "/v1/reports/users/{user_id}", "mail"),
    ("GET", "/v1/reports/summary", "mail"),
    ("POST", "/v1/oauth/authorize", "mail"),
    ("POST", "/v1/oauth/callback", "mail"),
    ("DELETE", "/v1/users/{user_id}/gmail", "admin"),
    ("POST", "/v1/webhooks", "admin"),
    ("GET", "/v1/webhooks", "admin"),
    ("GET", "/v1/webhooks/{webhook_id}", "admin"),
    ("PATCH", "/v1/webhooks/{webhook_id}", "admin"),
    ("DELETE", "/v1/webhooks/{webhook_id}", "admin"),
    ("POST", "/v1/webhooks/{webhook_id}/rotate-secret", "admin"),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries", "admin"),
    ("POST", "/v1/webhooks/deliveries/{delivery_id}/retry", "admin"),
]
PUBLIC = {
    ("GET", path) for path in ("/", "/health", "/ready", "/metrics", "/docs", "/openapi.json", "/v1/oauth/callback")
}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
PROBE_USER = "authprobe"
SMTP_MAILBOX = {
    "type": "smtp",
    "host": "127.0.0.1",
    "port": 587,
    "security": "starttls",
    "username": "ada",
    "password": "correct horse battery staple",
    "from_address": "ada@example.com",
}
# A valid body for each operation that takes one, so only authentication can decide the outcome.
BODIES = {
    ("POST", "/v1/users"): {"user_id": PROBE_USER},
    ("PUT", "/v1/users/{user_id}/mailbox"): SMTP_MAILBOX,
    ("POST", "/v1/users/{user_id}/messages"): {"to": ["probe@example.com"], "body": "auth probe"},
    ("POST", "/v1/messages"): {"user_id": PROBE_USER, "to": ["probe@example.com"], "body": "auth probe"},
    ("POST", "/v1/oauth/authorize"): {"user_id": PROBE_USER},
    ("POST", "/v1/oauth/callback"): {"code": "probe-code", "state": "probe-state"},
    # A public address that needs no DNS; nothing is ever delivered to it (no events are subscribed here).
    ("POST", "/v1/webhooks"): {"url": "https://8.8.8.8/hooks", "events": ["mailbox.needs_reauth"]},
    ("PATCH", "/v1/webhooks/{webhook_id}"): {"description": "auth probe"},
}
# The agent endpoints take the key in X-API-Key (llm scope); execute-action also needs a mail key (X-MCP-API-Key).
LLM_ROUTES = [
    ("GET", "/llm/capabilities", "llm"),
    ("POST", "/llm/inference", "llm"),
    ("POST", "/llm/execute-action", "llm"),
]
LLM_BODIES = {
    "/llm/inference": {"prompt": "how many emails did I send today?", "user_id": PROBE_USER},
    "/llm/execute-action": {"action_type": "check_status", "user_id": PROBE_USER},
}
KEY_SCOPES = {"mail": ("mail",), "llm": ("llm",), "admin": ("admin",), "all": ("mail", "llm", "admin")}


def route_id(route) -> str:
    return f"{route[0]} {route[1]}"


def call(client, route, headers: dict | None = None, user_id: str = PROBE_USER):
    method, template, _ = route
    body = BODIES.get((method, template))
    return client.request(
        method,
        template.format(
            user_id=user_id,
            message_id="msg_0000000000000000000000000",
            webhook_id="wh_000000000000000000000000",
            delivery_id="whd_000000000000000000000000",
        ),
        json=body,
        headers=headers,
    )


def assert_bearer_challenge(response) -> None:
    challenge = response.headers.get("www-authenticate")
    assert challenge is not None, f"401 without WWW-Authenticate: {response.text}"
    assert challenge.split()[0] == "Bearer", challenge


def unknown_key() -> str:
    alphabet = string.ascii_lowercase + string.digits
    key_id = "".join(secrets.choice(alphabet) for _ in range(12))
    return f"emk_{key_id}_{secrets.token_urlsafe(32)}"


def list_keys(server, tenant: str) -> dict[str, dict]:
    """`emailmcp keys list --tenant` parsed into {id: {"last_used": str | None, "status": str}}."""
    lines = server.cli("keys", "list", "--tenant", tenant).stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["ID", "TENANT"], lines
    keys = {}
    for line in lines[1:]:
        fields = line.split()
        # ID TENANT SCOPES CREATED(date time) LAST-USED(date time | -) STATUS
        last_used = None if fields[5] == "-" else f"{fields[5]} {fields[6]}"
        keys[fields[0]] = {"tenant": fields[1], "last_used": last_used, "status": fields[-1]}
    return keys


def key_id_of(key: str) -> str:
    return key.split("_")[1]


@pytest.fixture(scope="module")
def auth_tenant(server) -> str:
    return f"auth-{secrets.token_hex(5)}"


@pytest.fixture(scope="module")
def keys(server, auth_tenant) -> dict[str, str]:
    """One key per scope set, plus a revoked one of the same tenant (which must not affect the others).

    All are made with the real CLI.
    """
    made = {name: server.create_key(auth_tenant, *scopes) for name, scopes in KEY_SCOPES.items()}
    revoked = server.create_key(auth_tenant, "mail", "llm", "admin")
    server.cli("keys", "revoke", key_id_of(revoked))
    made["revoked"] = revoked
    return made


def test_route_table_covers_every_operation(server):
    """The table above is the app's list of authenticated operations, and OpenAPI declares them as bearer-secured."""
    with server.client() as client:
        spec = client.get("/openapi.json").json()
    operations = {}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                operations[(method.upper(), path)] = operation
    authenticated = {op for op in operations if op not in PUBLIC}
    table = {(method, path) for method, path, _ in ROUTES + LLM_ROUTES}
    assert authenticated - table == set(), "operations without an entry in ROUTES: add them with their scope"
    assert table - authenticated == set(), "ROUTES lists operations the app does not have"
    for op in table:
        assert operations[op].get("security"), f"{op} is not declared as needing a key in OpenAPI"
    for op in PUBLIC & set(operations):
        assert not operations[op].get("security"), f"public {op} is declared as needing a key"


@pytest.mark.parametrize("route", ROUTES, ids=route_id)
def test_missing_key_is_401_with_a_bearer_challenge(server, route):
    with server.client() as client:
        response = call(client, route)
    assert_error(response, 401)
    assert_bearer_challenge(response)


BAD_CREDENTIALS = {
    "garbage": lambda keys: {"Authorization": "Bearer not-a-key"},
    "unknown": lambda keys: {"Authorization": f"Bearer {unknown_key()}"},
    "wrong-secret": lambda keys: {"Authorization": f"Bearer {keys['all'][:17]}{secrets.token_urlsafe(32)}"},
    "revoked": lambda keys: {"Authorization": f"Bearer {keys['revoked']}"},
    "basic": lambda keys: {"Authorization": "Basic " + base64.b64encode(f"{keys['all']}:x".encode()).decode()},
    "bare-key": lambda keys: {"Authorization": keys["all"]},
    "empty-bearer": lambda keys: {"Authorization": "Bearer"},
}


@pytest.mark.parametrize("kind", BAD_CREDENTIALS)
@pytest.mark.parametrize("route", ROUTES, ids=route_id)
def test_bad_credentials_are_401(server, keys, route, kind):
    with server.client() as client:
        response = call(client, route, headers=BAD_CREDENTIALS[kind](keys))
    assert_error(response, 401)
    assert_bearer_challenge(response)
    assert keys["all"] not in response.text


@pytest.mark.parametrize("key_name", KEY_SCOPES)
@pytest.mark.parametrize("route", ROUTES, ids=route_id)
def test_scope_decides_between_403_and_access(server, keys, route, key_name):
    with server.client(keys[key_name]) as client:
        response = call(client, route)
    if route[2] in KEY_SCOPES[key_name]:
        assert response.status_code not in (401, 403), response.text
        assert response.status_code < 500, response.text
    else:
        error = assert_error(response, 403, "insufficient_scope")
        assert route[2] in error["message"]


def test_refused_requests_change_nothing(server, keys):
    anonymous, llm_client, mail_client = server.client(), server.client(keys["llm"]), server.client(keys["mail"])
    with anonymous, llm_client, mail_client:
        assert anonymous.post("/v1/users", json={"user_id": "sneaky"}).status_code == 401
        assert llm_client.post("/v1/users", json={"user_id": "sneaky"}).status_code == 403
        # PUT mailbox creates its user implicitly; a key without admin must not get that far.
        assert mail_client.put("/v1/users/sneaky/mailbox", json=SMTP_MAILBOX).status_code == 403
        assert mail_client.get("/v1/users/sneaky/profile").status_code == 404
        assert mail_client.post("/v1/users", json={"user_id": "kept"}).status_code == 201
        assert mail_client.delete("/v1/users/kept").status_code == 403
        assert mail_client.get("/v1/users/kept/profile").status_code == 200


def test_the_bearer_scheme_is_case_insensitive(server, keys):
    with server.client() as client:
        assert client.get("/v1/users", headers={"Authorization": f"bearer {keys['mail']}"}).status_code == 200
        assert client.get("/v1/users", headers={"Authorization": f"BEARER {keys['mail']}"}).status_code == 200


def test_auth_comes_before_validation(server):
    """An anonymous caller learns nothing about the request schema."""
    with server.client() as client:
        response = client.post("/v1/users", json={"user_id": "has space", "unexpected": 1})
    assert_error(response, 401)


def test_key_lifecycle_create_use_list_revoke(server, tenant_name):
    key = server.create_key(tenant_name, "mail")
    key_id = key_id_of(key)
    assert key.startswith("emk_")
    listed = list_keys(server, tenant_name)
    assert listed[key_id]["status"] == "active"
    assert listed[key_id]["last_used"] is None
    with server.client(key) as client:
        assert client.get("/v1/users").status_code == 200
        listed = list_keys(server, tenant_name)
        assert listed[key_id]["last_used"] is not None, "keys list does not show the key as used"
        assert key not in server.cli("keys", "list", "--tenant", tenant_name).stdout
        revoked = server.cli("keys", "revoke", key_id)
        assert key_id in revoked.stdout
        # The very next request on the same (keep-alive) connection must be refused: no caching of keys.
        response = client.get("/v1/users")
        assert_error(response, 401, "invalid_api_key")
        assert_bearer_challenge(response)
    assert list_keys(server, tenant_name)[key_id]["status"] == "revoked"


def test_deleting_a_tenant_stops_its_keys(server, tenant_name):
    key = server.create_key(tenant_name, "mail")
    with server.client(key) as client:
        assert client.post("/v1/users", json={"user_id": "doomed"}).status_code == 201
        server.cli("tenants", "delete", tenant_name, "--yes")
        assert_error(client.get("/v1/users"), 401, "invalid_api_key")
    assert tenant_name not in server.cli("tenants", "list").stdout


def test_revoking_an_unknown_key_fails(server):
    result = server.cli("keys", "revoke", "nosuchkey123", check=False)
    assert result.returncode != 0
    assert "nosuchkey123" in result.stderr


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_tenants_are_isolated(start_server, make_database, backend):
    server = start_server(make_database(backend), EMAILMCP_SMTP_ALLOW_PRIVATE_HOSTS="true")
    suffix = secrets.token_hex(4)
    key_a = server.create_key(f"tenant-a-{suffix}", "mail", "admin")
    key_b = server.create_key(f"tenant-b-{suffix}", "mail", "admin")
    with server.client(key_a) as a, server.client(key_b) as b:
        user_a = {"user_id": "user123", "email": "a-secret@example.com", "display_name": "Ada A"}
        created = a.post("/v1/users", json=user_a)
        assert created.status_code == 201, created.text
        assert a.put("/v1/users/user123/mailbox", json=SMTP_MAILBOX).status_code == 200
        profile_a = a.get("/v1/users/user123/profile").json()
        mailbox_a = a.get("/v1/users/user123/mailbox").json()
        assert mailbox_a["type"] == "smtp"

        # B cannot see, read or delete A's user: 404, never 403, so existence does not leak.
        for response in (
            b.get("/v1/users/user123/profile"),
            b.get("/v1/users/user123/mailbox"),
            b.delete("/v1/users/user123/mailbox"),
            b.delete("/v1/users/user123"),
        ):
            assert_error(response, 404)
            assert "a-secret@example.com" not in response.text
        listing = b.get("/v1/users")
        assert listing.status_code == 200
        assert listing.json()["users"] == []

        # B's user123 is a different person.
        own = b.post("/v1/users", json={"user_id": "user123"})
        assert own.status_code == 201, own.text
        assert own.json()["email"] is None
        assert own.json()["display_name"] is None
        assert own.json()["mailbox"]["type"] == "none"
        updated = b.post("/v1/users", json={"user_id": "user123", "email": "b@example.com"})
        assert updated.status_code == 200
        profile_b = b.get("/v1/users/user123/profile").json()
        assert profile_b["email_address"] == "b@example.com"
        assert profile_b["mailbox"]["type"] == "none"
        assert "a-secret@example.com" not in b.get("/v1/users").text
        assert [user["user_id"] for user in b.get("/v1/users").json()["users"]] == ["user123"]
        assert b.get("/v1/users/user123/mailbox").json()["type"] == "none"
        assert b.delete("/v1/users/user123/mailbox").status_code == 404
        assert b.delete("/v1/users/user123").status_code == 204

        # A's data is untouched by all of it.
        assert a.get("/v1/users/user123/profile").json() == profile_a
        assert a.get("/v1/users/user123/mailbox").json() == mailbox_a
        users_a = a.get("/v1/users").json()["users"]
        assert [(u["user_id"], u["email"]) for u in users_a] == [("user123", "a-secret@example.com")]


def call_llm(client, route, headers: dict | None = None):
    method, path, _ = route
    return client.request(method, path, json=LLM_BODIES.get(path), headers=headers)


@pytest.mark.parametrize("route", LLM_ROUTES, ids=route_id)
def test_llm_endpoints_take_an_llm_key_in_x_api_key(server, keys, route):
    with server.client() as client:
        missing = call_llm(client, route, {"X-MCP-API-Key": keys["all"]})
        assert_error(missing, 401)
        assert "X-API-Key" in missing.headers["www-authenticate"]
        assert_error(call_llm(client, route, {"X-API-Key": unknown_key()}), 401, "invalid_api_key")
        assert_error(call_llm(client, route, {"X-API-Key": keys["revoked"]}), 401, "invalid_api_key")
        # A bearer key is not an llm key, whatever its scopes.
        assert_error(call_llm(client, route, {"Authorization": f"Bearer {keys['all']}"}), 401)
        assert_error(call_llm(client, route, {"X-API-Key": keys["mail"]}), 403, "insufficient_scope")
        both = {"X-API-Key": keys["llm"], "X-MCP-API-Key": keys["mail"]}
        assert call_llm(client, route, both).status_code == 200


def test_execute_action_needs_a_mail_key_of_the_same_tenant(server, keys, tenant_name):
    route = ("POST", "/llm/execute-action", "llm")
    other_tenant_mail = server.create_key(tenant_name, "mail")
    with server.client() as client:
        without = call_llm(client, route, {"X-API-Key": keys["llm"]})
        assert_error(without, 401)
        assert_bearer_challenge(without)
        llm_as_mail = call_llm(client, route, {"X-API-Key": keys["llm"], "X-MCP-API-Key": keys["llm"]})
        assert_error(llm_as_mail, 403, "insufficient_scope")
        mixed = call_llm(client, route, {"X-API-Key": keys["llm"], "X-MCP-API-Key": other_tenant_mail})
        assert_error(mixed, 403, "tenant_mismatch")
        bearer = call_llm(client, route, {"X-API-Key": keys["llm"], "Authorization": f"Bearer {keys['mail']}"})
        assert bearer.status_code == 200, bearer.text
