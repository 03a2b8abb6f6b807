"""End users over real HTTP: upsert, listing, profiles, deletion, SMTP mailboxes."""

import pytest


@pytest.fixture
def mail_admin(server, tenant_name):
    key = server.create_key(tenant_name, "mail", "admin")
    with server.client(key) as client:
        yield client


def test_create_is_an_idempotent_upsert(mail_admin):
    first = mail_admin.post("/v1/users", json={"user_id": "user123", "email": "u@example.com"})
    assert first.status_code == 201
    assert first.json()["user_id"] == "user123"
    again = mail_admin.post("/v1/users", json={"user_id": "user123"})
    assert again.status_code == 200
    assert again.json()["email"] == "u@example.com"
    renamed = mail_admin.post("/v1/users", json={"user_id": "user123", "display_name": "Ada"})
    assert renamed.status_code == 200
    assert renamed.json()["display_name"] == "Ada"
    assert renamed.json()["email"] == "u@example.com"


@pytest.mark.parametrize("user_id", ["ada@example.com", "0b8a6c5e-3f1d-4e7a-9c2b-1d2e3f4a5b6c", "org:team+1.x_y-z"])
def test_user_ids_may_be_emails_and_uuids(mail_admin, user_id):
    assert mail_admin.post("/v1/users", json={"user_id": user_id}).status_code == 201
    assert mail_admin.get(f"/v1/users/{user_id}/profile").json()["user_id"] == user_id


@pytest.mark.parametrize("user_id", ["", "has space", "a/b", "x" * 129, "semi;colon"])
def test_invalid_user_id_is_422_naming_the_field(mail_admin, user_id):
    response = mail_admin.post("/v1/users", json={"user_id": user_id})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "body.user_id"


def test_profile_has_the_seed_fields(mail_admin):
    mail_admin.post("/v1/users", json={"user_id": "p1", "email": "p1@example.com"})
    profile = mail_admin.get("/v1/users/p1/profile").json()
    assert profile["user_id"] == "p1"
    assert profile["email_address"] == "p1@example.com"
    assert profile["gmail_connected"] is False
    assert profile["connection_date"] is None
    assert profile["last_used"] is None
    assert profile["total_emails_sent"] == 0
    assert profile["mailbox"] == {
        "type": "none",
        "status": "not_connected",
        "from_address": None,
        "connected_at": None,
        "smtp": None,
    }


def test_unknown_user_is_404_not_defaults(mail_admin):
    response = mail_admin.get("/v1/users/ghost/profile")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "user_not_found"


def test_listing_pages_with_a_cursor(mail_admin):
    ids = [f"list-{n:02d}" for n in range(7)]
    for user_id in ids:
        mail_admin.post("/v1/users", json={"user_id": user_id})
    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = mail_admin.get("/v1/users", params=params).json()
        seen += [user["user_id"] for user in page["users"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    bad = mail_admin.get("/v1/users", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422
    assert bad.json()["error"]["details"][0]["field"] == "cursor"


SMTP_MAILBOX = {
    "type": "smtp",
    "host": "smtp.example.com",
    "port": 587,
    "security": "starttls",
    "username": "ada",
    "password": "correct horse battery staple",
    "from_address": "ada@example.com",
}


def test_smtp_mailbox_is_stored_without_exposing_the_password(server, tenant_name):
    key = server.create_key(tenant_name, "mail", "admin")
    with server.client(key) as client:
        # smtp.example.com does not resolve here; the private-host guard is off for this server below.
        refused = client.put("/v1/users/mb1/mailbox", json=SMTP_MAILBOX | {"host": "127.0.0.1"})
        assert refused.status_code == 422
        assert refused.json()["error"]["details"][0]["field"] == "host"
        assert "127.0.0.1" in refused.json()["error"]["message"]


def test_smtp_mailbox_lifecycle(start_server):
    server = start_server(EMAILMCP_SMTP_ALLOW_PRIVATE_HOSTS="true")
    with server.client(server.bootstrap_key) as client:
        stored = client.put("/v1/users/mb2/mailbox", json=SMTP_MAILBOX | {"host": "127.0.0.1"})
        assert stored.status_code == 200, stored.text
        body = stored.json()
        assert body["type"] == "smtp" and body["status"] == "connected"
        assert body["smtp"] == {
            "host": "127.0.0.1",
            "port": 587,
            "security": "starttls",
            "username": "ada",
            "password_set": True,
        }
        assert SMTP_MAILBOX["password"] not in stored.text
        fetched = client.get("/v1/users/mb2/mailbox")
        assert fetched.json() == body
        profile = client.get("/v1/users/mb2/profile").json()
        assert profile["email_address"] == "ada@example.com"
        assert profile["mailbox"]["type"] == "smtp"
        assert client.delete("/v1/users/mb2/mailbox").status_code == 204
        assert client.get("/v1/users/mb2/mailbox").json()["type"] == "none"
        assert client.delete("/v1/users/mb2/mailbox").status_code == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"port": 0}, "port"),
        ({"security": "ssl3"}, "security"),
        ({"from_address": "nope"}, "from_address"),
        ({"username": "a\r\nBcc: x@example.com"}, "username"),
        ({"host": "bad host"}, "host"),
        ({"type": "imap"}, "type"),
    ],
)
def test_bad_mailbox_fields_are_named(mail_admin, change, field):
    response = mail_admin.put("/v1/users/mb3/mailbox", json=SMTP_MAILBOX | change)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == f"body.{field}"
    assert mail_admin.get("/v1/users/mb3/profile").status_code == 404


def test_delete_erases_the_user_and_their_mailbox(start_server):
    server = start_server(EMAILMCP_SMTP_ALLOW_PRIVATE_HOSTS="true")
    with server.client(server.bootstrap_key) as client:
        client.put("/v1/users/gone/mailbox", json=SMTP_MAILBOX | {"host": "127.0.0.1"})
        assert client.delete("/v1/users/gone").status_code == 204
        assert client.get("/v1/users/gone/profile").status_code == 404
        assert client.delete("/v1/users/gone").status_code == 404
        recreated = client.post("/v1/users", json={"user_id": "gone"})
        assert recreated.status_code == 201
        assert recreated.json()["mailbox"]["type"] == "none"
