"""The `emailmcp` command line against real servers' databases: keys, tenants, working directories,
and running from an installed wheel."""

import json
import os
import re
import sqlite3
import subprocess
import sys
import zipfile
from contextlib import closing
from pathlib import Path

import pytest

from emailmcp import db
from peers.webhooks import WebhookReceiver

KEY_LINE = re.compile(r"^emk_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")
PROJECT = Path(__file__).resolve().parents[1]

DEFAULTS = {
    "rate_limit": None,
    "recipient_domain_allowlist": None,
    "recipient_domain_denylist": None,
    "oauth_return_urls": None,
}


def assert_clean_failure(result: subprocess.CompletedProcess, *mentions: str) -> str:
    """A refusal: non-zero exit, a message naming the problem, no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    for mention in mentions:
        assert mention in output, output
    return output


def key_rows(output: str) -> dict[str, list[str]]:
    """`keys list` rows by key id: the whitespace-separated columns of each row."""
    rows = {}
    for line in output.splitlines():
        columns = line.split()
        if columns and re.fullmatch(r"[a-z0-9]{12}", columns[0]):
            rows[columns[0]] = columns
    return rows


def show(server, tenant: str) -> tuple[dict, str]:
    """`tenants show`: its JSON document, and the key listing after it."""
    output = server.cli("tenants", "show", tenant).stdout
    document, end = json.JSONDecoder().raw_decode(output)
    return document, output[end:]


# -- keys -------------------------------------------------------------------------------------------


def test_keys_create_prints_the_key_as_the_last_line(server, tenant_name):
    result = server.cli("keys", "create", "--tenant", tenant_name, "--scope", "mail", "--scope", "llm")
    lines = result.stdout.splitlines()
    assert lines, result.stderr
    key = lines[-1]
    assert KEY_LINE.match(key), result.stdout
    assert result.stdout.endswith(key + "\n"), "nothing may follow the key"
    assert key not in result.stderr
    # `KEY=$(emailmcp keys create ...)` gives exactly the key.
    assert result.stdout.strip() == key
    with server.client(key) as client:
        assert client.get("/v1/users").status_code == 200
        assert client.delete("/v1/users/nobody").status_code == 403  # no admin scope


def test_keys_list_shows_ids_and_scopes_but_no_secrets(server, tenant_name):
    mine = server.create_key(tenant_name, "mail", "llm")
    admin = server.create_key(tenant_name, "admin")
    other_tenant = f"{tenant_name}-o"
    foreign = server.create_key(other_tenant, "mail")
    everything = server.cli("keys", "list").stdout
    only_mine = server.cli("keys", "list", "--tenant", tenant_name).stdout
    for output in (everything, only_mine):
        for key in (mine, admin, foreign):
            assert key not in output
            assert KEY_LINE.match(key).group(2) not in output
        rows = key_rows(output)
        assert rows[mine[4:16]][1:3] == [tenant_name, "llm,mail"]
        assert rows[admin[4:16]][1:3] == [tenant_name, "admin"]
        assert rows[mine[4:16]][-1] == "active"
    assert foreign[4:16] in key_rows(everything)
    assert set(key_rows(only_mine)) == {mine[4:16], admin[4:16]}
    assert set(key_rows(server.cli("keys", "list", "--tenant", other_tenant).stdout)) == {foreign[4:16]}
    assert_clean_failure(server.cli("keys", "list", "--tenant", "no-such-tenant", check=False), "no-such-tenant")


def test_keys_revoke(server, tenant_name):
    key = server.create_key(tenant_name, "mail")
    other = server.create_key(tenant_name, "mail")
    key_id = key[4:16]
    with server.client(key) as client:
        assert client.get("/v1/users").status_code == 200
    result = server.cli("keys", "revoke", key_id)
    assert key_id in result.stdout and tenant_name in result.stdout
    with server.client(key) as client:
        assert client.get("/v1/users").status_code == 401
    with server.client(other) as client:
        assert client.get("/v1/users").status_code == 200
    rows = key_rows(server.cli("keys", "list", "--tenant", tenant_name).stdout)
    assert rows[key_id][-1] == "revoked"
    assert rows[other[4:16]][-1] == "active"
    # Revoking again is harmless and keeps it revoked.
    server.cli("keys", "revoke", key_id)
    with server.client(key) as client:
        assert client.get("/v1/users").status_code == 401


@pytest.mark.parametrize("key_id", ["zzzzzzzzzzzz", "not-a-key-id"])
def test_revoking_an_unknown_key_fails_with_a_message(server, key_id):
    assert_clean_failure(server.cli("keys", "revoke", key_id, check=False), key_id)


BAD_KEY_REQUESTS = [
    (["--tenant", "bad name", "--scope", "mail"], ["bad name"]),
    (["--tenant", "x" * 65, "--scope", "mail"], ["x" * 65]),
    (["--tenant", "ok-name", "--scope", "root"], ["root"]),
    (["--tenant", "ok-name"], ["--scope"]),
]


def test_keys_create_refuses_bad_input(server):
    before = server.cli("keys", "list").stdout
    for args, mentions in BAD_KEY_REQUESTS:
        result = server.cli("keys", "create", *args, check=False)
        assert_clean_failure(result, *mentions)
        assert not any(KEY_LINE.match(line) for line in result.stdout.splitlines()), args
    assert key_rows(server.cli("keys", "list").stdout).keys() == key_rows(before).keys()


# -- tenants ----------------------------------------------------------------------------------------


def test_tenants_list_and_show(server, tenant_name):
    key = server.create_key(tenant_name, "mail", "admin")
    with server.client(key) as client:
        client.post("/v1/users", json={"user_id": "one"})
        client.post("/v1/users", json={"user_id": "two"})
    llm = server.create_key(tenant_name, "llm")
    revoked = server.create_key(tenant_name, "mail")
    server.cli("keys", "revoke", revoked[4:16])

    listing = server.cli("tenants", "list").stdout
    row = next(line.split() for line in listing.splitlines() if line.split()[:1] == [tenant_name])
    assert row[1:3] == ["2", "2"], listing  # active keys, users
    assert "default" in listing.split()

    document, keys = show(server, tenant_name)
    assert document == {"tenant": tenant_name, "settings": DEFAULTS}
    rows = key_rows(keys)
    assert set(rows) == {key[4:16], llm[4:16], revoked[4:16]}
    assert rows[revoked[4:16]][-1] == "revoked" and rows[llm[4:16]][-1] == "active"
    assert rows[key[4:16]][2] == "admin,mail"
    for plaintext in (key, llm, revoked):
        assert KEY_LINE.match(plaintext).group(2) not in keys


def test_tenant_settings_set_and_unset(server, tenant_name):
    key = server.create_key(tenant_name, "mail")
    result = server.cli("tenants", "set", tenant_name, "rate_limit", "2/minute")
    assert json.loads(result.stdout) == DEFAULTS | {"rate_limit": "2/minute"}
    assert show(server, tenant_name)[0]["settings"] == DEFAULTS | {"rate_limit": "2/minute"}
    # The running server applies it at once.
    with server.client(key) as client:
        statuses = [client.get("/v1/users").status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert client.get("/v1/users").headers["RateLimit-Limit"] == "2"

    server.cli("tenants", "set", tenant_name, "rate_limit", "100/minute")
    assert show(server, tenant_name)[0]["settings"] == DEFAULTS | {"rate_limit": "100/minute"}
    result = server.cli("tenants", "unset", tenant_name, "rate_limit")
    assert json.loads(result.stdout) == DEFAULTS
    assert show(server, tenant_name)[0]["settings"] == DEFAULTS
    with server.client(key) as client:
        response = client.get("/v1/users")
        assert response.status_code == 200
        assert response.headers["RateLimit-Limit"] == "6000"


BAD_SETTINGS = [
    (["colour", "blue"], ["colour", "rate_limit"]),
    (["rate_limit", "lots"], ["rate_limit"]),
    (["rate_limit", "--", "-5/minute"], ["rate_limit"]),
    (["rate_limit", "100/fortnight"], ["rate_limit"]),
    (["rate_limit", ""], ["rate_limit"]),
    (["oauth_return_urls", "javascript:alert(1)"], ["oauth_return_urls", "javascript:alert(1)"]),
    (["oauth_return_urls", "https://app.example.com/#fragment"], ["oauth_return_urls"]),
]


def test_tenants_set_refuses_unknown_settings_and_bad_values(server, tenant_name):
    server.create_key(tenant_name, "mail")
    server.cli("tenants", "set", tenant_name, "rate_limit", "100/minute")
    for args, mentions in BAD_SETTINGS:
        assert_clean_failure(server.cli("tenants", "set", tenant_name, *args, check=False), *mentions)
    assert_clean_failure(server.cli("tenants", "unset", tenant_name, "colour", check=False), "colour")
    assert show(server, tenant_name)[0]["settings"] == DEFAULTS | {"rate_limit": "100/minute"}


def test_tenant_commands_on_an_unknown_tenant_fail(server):
    name = "no-such-tenant-x"
    commands = (
        ["show", name],
        ["set", name, "rate_limit", "5/minute"],
        ["unset", name, "rate_limit"],
        ["delete", name, "--yes"],
    )
    for args in commands:
        assert_clean_failure(server.cli("tenants", *args, check=False), name)
    assert name not in server.cli("tenants", "list").stdout


def test_tenants_delete_removes_its_users_and_keys(server, tenant_name):
    key = server.create_key(tenant_name, "mail", "admin")
    survivor_tenant = f"{tenant_name}-s"
    survivor = server.create_key(survivor_tenant, "mail")
    with server.client(key) as client:
        assert client.post("/v1/users", json={"user_id": "doomed", "email": "d@example.com"}).status_code == 201
    with server.client(survivor) as client:
        assert client.post("/v1/users", json={"user_id": "doomed"}).status_code == 201

    result = server.cli("tenants", "delete", tenant_name, "--yes")
    assert tenant_name in result.stdout
    with server.client(key) as client:
        assert client.get("/v1/users").status_code == 401
    assert tenant_name not in server.cli("tenants", "list").stdout.split()
    assert key[4:16] not in server.cli("keys", "list").stdout
    with server.client(survivor) as client:
        assert [u["user_id"] for u in client.get("/v1/users").json()["users"]] == ["doomed"]

    # A tenant made again under the same name starts empty.
    fresh = server.create_key(tenant_name, "mail")
    with server.client(fresh) as client:
        assert client.get("/v1/users").json()["users"] == []
        assert client.get("/v1/users/doomed/profile").status_code == 404


def test_tenants_delete_asks_first(server, tenant_name):
    key = server.create_key(tenant_name, "mail")
    refused = server.cli("tenants", "delete", tenant_name, input="n\n", check=False)
    assert refused.returncode != 0
    assert "Traceback" not in refused.stdout + refused.stderr
    with server.client(key) as client:
        assert client.get("/v1/users").status_code == 200
    server.cli("tenants", "delete", tenant_name, input="y\n")
    with server.client(key) as client:
        assert client.get("/v1/users").status_code == 401


# -- working directories ----------------------------------------------------------------------------


# -- webhooks ---------------------------------------------------------------------------------------


def test_webhooks_from_the_command_line(start_server, tenant_name):
    server = start_server(
        EMAILMCP_WEBHOOK_ALLOW_HTTP="true",
        EMAILMCP_WEBHOOK_ALLOW_PRIVATE_HOSTS="true",
        EMAILMCP_WEBHOOK_RETRY_BASE_SECONDS="0.2",
        EMAILMCP_WORKER_POLL_SECONDS="0.2",
    )
    key = server.create_key(tenant_name, "mail", "admin")

    def cli(*args: str) -> dict:
        return json.loads(server.cli("webhooks", *args).stdout)

    with WebhookReceiver(answer=503) as receiver:
        created = cli(
            "create", "--tenant", tenant_name, receiver.url, "--event", "message.sent", "--description", "CLI"
        )
        assert created["secret"].startswith("whsec_") and created["events"] == ["message.sent"]
        [listed] = cli("list", "--tenant", tenant_name)["webhooks"]
        assert listed["id"] == created["id"] and "secret" not in listed
        with server.client(key) as client:  # the API sees what the command line made, and the other way round
            assert client.get(f"/v1/webhooks/{created['id']}").json()["description"] == "CLI"
            assert client.post("/v1/users/ada/messages", json={"to": ["a@example.com"]}).status_code == 202
        receiver.wait_for(1, accepted_only=False)

        paused = cli("update", "--tenant", tenant_name, created["id"], "--disable")
        assert paused["enabled"] is False
        [delivery] = cli("deliveries", "--tenant", tenant_name, created["id"])["deliveries"]
        assert delivery["attempt_log"][0]["status_code"] == 503
        refused = server.cli("webhooks", "retry", "--tenant", tenant_name, delivery["id"], check=False)
        assert_clean_failure(refused, "disabled")

        receiver.answer = 200
        assert cli("update", "--tenant", tenant_name, created["id"], "--enable")["enabled"] is True
        [accepted] = receiver.wait_for(1)
        assert receiver.verify(accepted, created["secret"])["data"]["user_id"] == "ada"

        rotated = cli("rotate-secret", "--tenant", tenant_name, created["id"])
        assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
        assert server.cli("webhooks", "delete", "--tenant", tenant_name, created["id"]).stdout.startswith("deleted")
        assert_clean_failure(
            server.cli("webhooks", "show", "--tenant", tenant_name, created["id"], check=False), "not found"
        )

    refusals = (
        (["create", "--tenant", tenant_name, "ftp://example.com/x", "--event", "message.sent"], "url:"),
        (["create", "--tenant", tenant_name, "http://127.0.0.1/x", "--event", "message.nope"], "message.nope"),
        (["list", "--tenant", "no-such-tenant-x"], "no-such-tenant-x"),
    )
    for args, mention in refusals:
        assert_clean_failure(server.cli("webhooks", *args, check=False), mention)
    assert cli("list", "--tenant", tenant_name)["webhooks"] == []


def test_every_command_works_from_the_root_directory(start_server, tenant_name):
    """server.cli runs every other test from outside the server's directory; this runs each command from /."""
    server = start_server()
    root = Path("/")
    assert "database is at the current schema" in server.cli("migrate", cwd=root).stdout
    key = server.cli("keys", "create", "--tenant", tenant_name, "--scope", "mail", cwd=root).stdout.splitlines()[-1]
    assert KEY_LINE.match(key)
    assert key[4:16] in server.cli("keys", "list", cwd=root).stdout
    assert key[4:16] in server.cli("keys", "list", "--tenant", tenant_name, cwd=root).stdout
    assert tenant_name in server.cli("tenants", "list", cwd=root).stdout
    server.cli("tenants", "set", tenant_name, "rate_limit", "50/minute", cwd=root)
    assert show(server, tenant_name)[0]["settings"] == DEFAULTS | {"rate_limit": "50/minute"}
    server.cli("tenants", "unset", tenant_name, "rate_limit", cwd=root)
    assert "tenant" in server.cli("tenants", "show", tenant_name, cwd=root).stdout
    assert re.fullmatch(r"k9:[A-Za-z0-9_-]{43}\n", server.cli("secrets", "generate-key", "k9", cwd=root).stdout)
    assert "re-encrypted" in server.cli("secrets", "rotate", cwd=root).stdout
    server.cli("keys", "revoke", key[4:16], cwd=root)
    with server.client(key) as client:
        assert client.get("/v1/users").status_code == 401
    server.cli("tenants", "delete", tenant_name, "--yes", cwd=root)
    assert tenant_name not in server.cli("tenants", "list", cwd=root).stdout


# -- from an installed wheel ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(PROJECT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("emailmcp-*.whl")
    return built


def test_the_wheel_ships_the_migrations(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("env.py", "script.py.mako", "versions/0001_core.py"):
        assert f"emailmcp/migrations/{required}" in names
    versions = {n for n in names if n.startswith("emailmcp/migrations/versions/") and n.endswith(".py")}
    source_dir = PROJECT / "src/emailmcp/migrations/versions"
    in_source = {f"emailmcp/migrations/versions/{p.name}" for p in source_dir.glob("*.py")}
    assert versions == in_source


def test_the_wheel_ships_the_dashboards_pages_and_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    package = PROJECT / "src/emailmcp/dashboard"
    for folder in ("templates", "static"):
        for path in (package / folder).rglob("*"):
            if path.is_file():
                assert f"emailmcp/dashboard/{path.relative_to(package)}" in names


def test_migrate_from_the_installed_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILMCP_") and k != "PYTHONPATH"} | {
        "PYTHONPATH": str(site),
        "EMAILMCP_DATA_DIR": str(data_dir),
        "EMAILMCP_LOG_FORMAT": "json",
    }

    def run(code: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", code, *args], cwd="/", env=env, capture_output=True, text=True, timeout=120
        )

    imported = run("import emailmcp; print(emailmcp.__file__)")
    assert imported.returncode == 0, imported.stderr
    assert Path(imported.stdout.strip()).resolve() == (site / "emailmcp" / "__init__.py").resolve()

    show_origin = "import sys, emailmcp.db; print(emailmcp.db.__file__, file=sys.stderr); "
    migrated = run(show_origin + "from emailmcp.cli import app; app()", "migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "database is at the current schema" in migrated.stdout
    assert str(site / "emailmcp" / "db.py") in migrated.stderr
    assert "Traceback" not in migrated.stderr
    with closing(sqlite3.connect(data_dir / "emailmcp.db")) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(db.head_revision(),)]
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"tenants", "api_keys", "tenant_settings", "end_users", "mailboxes"} <= tables

    created = run("from emailmcp.cli import app; app()", "keys", "create", "--tenant", "wheel", "--scope", "mail")
    assert created.returncode == 0, created.stderr
    assert KEY_LINE.match(created.stdout.splitlines()[-1])
