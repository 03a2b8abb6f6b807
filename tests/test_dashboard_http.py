"""The dashboard over plain HTTP, without a browser, against a real `emailmcp serve`: signing in with an API key
(cookie flags, the key never echoed, refusals), CSRF on every form, signing out and key revocation ending sessions,
what each scope may see and do, errors shown as pages, tenancy, and the Ask box from a prompt to a queued message."""

import hashlib
import html
import re
import sqlite3
import time
import uuid
from contextlib import closing
from datetime import UTC, datetime
from html.parser import HTMLParser

import httpx2
import pytest

from conftest import BACKENDS, LEAKS, Server, backend_database_url, unique
from peers.webhooks import WebhookReceiver

# Kept off, so that the SMTP form's refusal of a private host can be seen.
PRIVATE_HOSTS_REFUSED = {"EMAILMCP_SMTP_ALLOW_PRIVATE_HOSTS": "false"}
# A public address that resolves without DNS; the tests store it as a mailbox and never send through it.
PUBLIC_SMTP = {"type": "smtp", "host": "8.8.8.8", "port": 587, "security": "starttls"}
SESSION = "emailmcp_session"
SIGN_IN = "emailmcp_sign_in"


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, start_module_server) -> Server:
    return start_module_server(backend_database_url(request), **PRIVATE_HOSTS_REFUSED)


def session_rows(server: Server) -> list[tuple]:
    """Every row of dashboard_sessions, read behind the server's back."""
    url = server.env.get("EMAILMCP_DATABASE_URL")
    if url is None:
        with sqlite3.connect(f"file:{server.data_dir / 'emailmcp.db'}?mode=ro", uri=True) as db:
            return db.execute("SELECT * FROM dashboard_sessions").fetchall()
    import psycopg

    with psycopg.connect(url) as db:
        return db.execute("SELECT * FROM dashboard_sessions").fetchall()


def new_key(server: Server, *scopes: str) -> str:
    """A key of a fresh tenant, so that tests do not see each other's users and messages."""
    return server.create_key(unique("t"), *scopes)


class Forms(HTMLParser):
    """The forms of a page: each one's action, its fields as a browser would submit them, and each control's
    attributes (for aria-invalid)."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[dict] = []
        self._form: dict | None = None
        self._textarea: str | None = None
        self._select: str | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "form":
            self._form = {"action": attributes.get("action"), "fields": {}, "controls": {}}
            self.forms.append(self._form)
            return
        if self._form is None or tag not in ("input", "textarea", "select", "option"):
            return
        fields, controls = self._form["fields"], self._form["controls"]
        name = attributes.get("name")
        if tag == "input" and name:
            fields[name] = attributes.get("value") or ""
            controls[name] = attributes
        elif tag == "textarea" and name:
            self._textarea = name
            fields[name] = ""
            controls[name] = attributes
        elif tag == "select" and name:
            self._select = name
            fields[name] = None
            controls[name] = attributes
        elif tag == "option" and self._select and (fields[self._select] is None or "selected" in attributes):
            fields[self._select] = attributes.get("value") or ""  # the first option, unless one is selected

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "textarea":
            self._textarea = None
        elif tag == "select":
            self._select = None

    def handle_data(self, data: str) -> None:
        if self._form is not None and self._textarea:
            self._form["fields"][self._textarea] += data


def forms(text: str, action: str) -> list[dict]:
    return [form for form in Forms(text).forms if form["action"] == action]


def the_form(text: str, action: str) -> dict:
    found = forms(text, action)
    assert len(found) == 1, f"expected one form posting to {action}, found {len(found)}:\n{text}"
    return found[0]


def set_cookies(response: httpx2.Response, name: str) -> list[str]:
    return [header for header in response.headers.get_list("set-cookie") if header.startswith(f"{name}=")]


def cookie_attributes(header: str) -> tuple[str, dict[str, str]]:
    """The value and the attributes (lower-cased names) of one Set-Cookie header."""
    first, *rest = [part.strip() for part in header.split(";")]
    attributes = {}
    for part in rest:
        name, _, value = part.partition("=")
        attributes[name.lower()] = value
    return first.partition("=")[2], attributes


def sign_in(server: Server, key: str) -> httpx2.Client:
    """A signed-in client, as a browser would get one: the form, its CSRF token, then the POST."""
    client = server.client()
    form = the_form(html_page(client.get("/dashboard/sign-in")).text, "/dashboard/sign-in")
    response = client.post("/dashboard/sign-in", data={"api_key": key, "csrf_token": form["fields"]["csrf_token"]})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/dashboard"
    assert client.cookies.get(SESSION)
    return client


def csrf_of(client: httpx2.Client) -> str:
    """The session's CSRF token, from the sign-out form every signed-in page carries."""
    return the_form(html_page(client.get("/dashboard/ask")).text, "/dashboard/sign-out")["fields"]["csrf_token"]


def html_page(response: httpx2.Response, status: int = 200) -> httpx2.Response:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith("text/html"), response.headers
    return response


def error_page(response: httpx2.Response, status: int) -> str:
    """An error shown as an HTML page: never the API's JSON, never internals. Returns its unescaped text."""
    html_page(response, status)
    assert not response.text.lstrip().startswith("{"), response.text
    assert '{"error"' not in response.text and "<html" in response.text
    for leak in LEAKS:
        assert leak not in response.text, f"error page leaks internals ({leak!r}): {response.text}"
    return html.unescape(response.text)


def redirects_to_sign_in(response: httpx2.Response) -> None:
    assert response.status_code == 303, f"{response.status_code}: {response.text}"
    assert response.headers["location"] == "/dashboard/sign-in"


def rest_create_user(server: Server, key: str, user_id: str) -> None:
    with server.client(key) as rest:
        response = rest.post("/v1/users", json={"user_id": user_id})
        assert response.status_code in (200, 201), response.text


def rest_status(server: Server, key: str, path: str) -> int:
    with server.client(key) as rest:
        return rest.get(path).status_code


# 1. The session cookie.


def test_session_cookie_is_httponly_strict_and_never_the_key(server):
    key = new_key(server, "mail", "admin", "llm")
    secret = key.split("_", 2)[2]
    with server.client() as client:
        page = html_page(client.get("/dashboard/sign-in"))
        (sign_in_cookie,) = set_cookies(page, SIGN_IN)
        _, attributes = cookie_attributes(sign_in_cookie)
        assert "httponly" in attributes and attributes["samesite"].lower() == "strict"
        assert attributes["path"] == "/dashboard" and "secure" not in attributes

        token = the_form(page.text, "/dashboard/sign-in")["fields"]["csrf_token"]
        response = client.post("/dashboard/sign-in", data={"api_key": key, "csrf_token": token})
        assert response.status_code == 303 and response.headers["location"] == "/dashboard"
        (session_cookie,) = set_cookies(response, SESSION)
        value, attributes = cookie_attributes(session_cookie)
        assert "httponly" in attributes, session_cookie
        assert attributes["samesite"].lower() == "strict", session_cookie
        assert attributes["path"] == "/dashboard", session_cookie
        assert "secure" not in attributes, f"Secure over plain http would lose the cookie: {session_cookie}"
        assert int(attributes["max-age"]) == 8 * 3600
        assert value and value != key and key not in value and secret not in value
        # The one-time sign-in cookie is spent.
        (spent,) = set_cookies(response, SIGN_IN)
        assert cookie_attributes(spent)[1].get("max-age") == "0", spent
        assert key not in str(response.headers) and key not in response.text

        # The server keeps only the token's SHA-256, not the token and not the key.
        rows = session_rows(server)
        mine = [row for row in rows if hashlib.sha256(value.encode()).hexdigest() in row]
        assert len(mine) == 1, rows
        assert not any(value in str(cell) or secret in str(cell) for row in rows for cell in row)

        # No page after sign-in shows the key, in its body or its headers.
        user_id = unique("u")
        rest_create_user(server, key, user_id)
        for path in (
            "/dashboard",
            "/dashboard/users",
            "/dashboard/messages",
            "/dashboard/ask",
            f"/dashboard/users/{user_id}",
        ):
            shown = html_page(client.get(path))
            for needle in (key, secret):
                assert needle not in shown.text, path
                assert needle not in str(shown.headers), path
        assert user_id in client.get(f"/dashboard/users/{user_id}").text


# 2. Refused sign-ins.


def test_a_wrong_key_is_refused_with_a_readable_page_and_no_session(server):
    key = new_key(server, "mail")
    with server.client() as client:
        token = the_form(client.get("/dashboard/sign-in").text, "/dashboard/sign-in")["fields"]["csrf_token"]
        wrong = key[:-4] + ("aaaa" if not key.endswith("aaaa") else "bbbb")
        response = client.post("/dashboard/sign-in", data={"api_key": wrong, "csrf_token": token})
        text = error_page(response, 401)
        assert "That API key is unknown or revoked." in text
        assert wrong not in response.text
        assert set_cookies(response, SESSION) == [] and client.cookies.get(SESSION) is None
        # The form is shown again, ready for another try.
        assert the_form(response.text, "/dashboard/sign-in")["fields"]["csrf_token"]
        redirects_to_sign_in(client.get("/dashboard"))

        # An empty key, too.
        token = the_form(response.text, "/dashboard/sign-in")["fields"]["csrf_token"]
        empty = client.post("/dashboard/sign-in", data={"api_key": "  ", "csrf_token": token})
        error_page(empty, 401)
        assert set_cookies(empty, SESSION) == []


@pytest.mark.parametrize("case", ["no form token", "wrong form token", "no sign-in cookie"])
def test_sign_in_without_its_csrf_token_is_refused(server, case):
    key = new_key(server, "mail")
    with server.client() as client:
        token = the_form(client.get("/dashboard/sign-in").text, "/dashboard/sign-in")["fields"]["csrf_token"]
        data = {"api_key": key}
        if case == "wrong form token":
            data["csrf_token"] = token[:-2] + ("xx" if not token.endswith("xx") else "yy")
        elif case == "no sign-in cookie":
            data["csrf_token"] = token
            client.cookies.clear()
        response = client.post("/dashboard/sign-in", data=data)
        text = error_page(response, 403)
        assert "The form expired; please sign in again." in text
        assert set_cookies(response, SESSION) == [] and client.cookies.get(SESSION) is None
        redirects_to_sign_in(client.get("/dashboard"))


def test_pages_without_a_session_send_the_browser_to_sign_in(server):
    with server.client() as client:
        for path in ("/dashboard", "/dashboard/users", "/dashboard/users/someone", "/dashboard/ask"):
            redirects_to_sign_in(client.get(path))
        redirects_to_sign_in(client.post("/dashboard/users", data={"user_id": "x"}))
        # A session cookie the server never issued is no session.
        redirects_to_sign_in(client.get("/dashboard", headers={"Cookie": f"{SESSION}=made-up"}))
        # htmx swaps would put the sign-in page inside the current one: it is told to navigate instead.
        for path in ("/dashboard", "/dashboard/messages/rows"):
            response = client.get(path, headers={"HX-Request": "true"})
            assert response.status_code == 204, response.text
            assert response.headers["hx-redirect"] == "/dashboard/sign-in"
            assert response.content == b""


# 3. CSRF.


def test_a_post_needs_the_sessions_csrf_token(server):
    key = new_key(server, "mail")
    with closing(sign_in(server, key)) as client:
        csrf = csrf_of(client)
        refused = unique("u")
        for extra in ({}, {"csrf_token": ""}, {"csrf_token": "not-the-token"}):
            text = error_page(client.post("/dashboard/users", data={"user_id": refused, **extra}), 403)
            assert "Form expired" in text and "Reload the page and try again." in text
        wrong_header = {"X-CSRF-Token": "not-the-token"}
        error_page(client.post("/dashboard/users", data={"user_id": refused}, headers=wrong_header), 403)
        # A wrong header is not rescued by a right form field.
        both = client.post("/dashboard/users", data={"user_id": refused, "csrf_token": csrf}, headers=wrong_header)
        error_page(both, 403)
        assert rest_status(server, key, f"/v1/users/{refused}/profile") == 404

        # Another session's token (same key, another browser) does not do either.
        with closing(sign_in(server, key)) as other:
            assert csrf_of(other) != csrf
            foreign = client.post("/dashboard/users", data={"user_id": refused, "csrf_token": csrf_of(other)})
            error_page(foreign, 403)
        assert rest_status(server, key, f"/v1/users/{refused}/profile") == 404

        by_form = unique("u")
        response = client.post("/dashboard/users", data={"user_id": by_form, "csrf_token": csrf})
        assert response.status_code == 303, response.text
        assert response.headers["location"] == f"/dashboard/users/{by_form}"
        assert rest_status(server, key, f"/v1/users/{by_form}/profile") == 200

        by_header = unique("u")
        response = client.post("/dashboard/users", data={"user_id": by_header}, headers={"X-CSRF-Token": csrf})
        assert response.status_code == 303, response.text
        assert response.headers["location"] == f"/dashboard/users/{by_header}"
        assert rest_status(server, key, f"/v1/users/{by_header}/profile") == 200

        # The token the pages embed is this one, in every form and in htmx's headers.
        users = html_page(client.get("/dashboard/users")).text
        assert the_form(users, "/dashboard/users")["fields"]["csrf_token"] == csrf
        assert f'"X-CSRF-Token": "{csrf}"' in html.unescape(users)


# 4. Ending sessions.


def test_signing_out_deletes_the_session(server):
    key = new_key(server, "mail")
    with closing(sign_in(server, key)) as client:
        cookie = client.cookies.get(SESSION)
        # Signing out is a form too: a cross-site POST cannot sign anyone out.
        error_page(client.post("/dashboard/sign-out"), 403)
        html_page(client.get("/dashboard"))

        response = client.post("/dashboard/sign-out", data={"csrf_token": csrf_of(client)})
        redirects_to_sign_in(response)
        (deleted,) = set_cookies(response, SESSION)
        _, attributes = cookie_attributes(deleted)
        assert attributes.get("max-age") == "0" and attributes["path"] == "/dashboard", deleted
        redirects_to_sign_in(client.get("/dashboard"))
    # The old cookie, replayed by someone who kept it, is no longer a session.
    with server.client(headers={"Cookie": f"{SESSION}={cookie}"}) as replay:
        redirects_to_sign_in(replay.get("/dashboard"))
        redirects_to_sign_in(replay.get("/dashboard/users"))


def test_revoking_the_key_ends_its_sessions_at_once(server):
    tenant = unique("t")
    key = server.create_key(tenant, "mail")
    other_key = server.create_key(tenant, "mail")
    with closing(sign_in(server, key)) as client, closing(sign_in(server, other_key)) as other:
        html_page(client.get("/dashboard"))
        server.cli("keys", "revoke", key.split("_")[1])
        redirects_to_sign_in(client.get("/dashboard"))
        redirects_to_sign_in(client.get("/dashboard/users"))
        # Only the sessions of that key end.
        html_page(other.get("/dashboard"))
        # And the revoked key cannot sign in again.
        token = the_form(client.get("/dashboard/sign-in").text, "/dashboard/sign-in")["fields"]["csrf_token"]
        again = client.post("/dashboard/sign-in", data={"api_key": key, "csrf_token": token})
        assert "That API key is unknown or revoked." in error_page(again, 401)


# 5. Scopes.


def test_mailbox_forms_follow_the_admin_scope(server):
    tenant = unique("t")
    admin_key = server.create_key(tenant, "mail", "admin")
    mail_key = server.create_key(tenant, "mail")
    user_id = unique("u")
    with server.client(admin_key) as rest:
        stored = rest.put(f"/v1/users/{user_id}/mailbox", json=PUBLIC_SMTP | {"from_address": "ada@example.com"})
        assert stored.status_code == 200, stored.text
    with closing(sign_in(server, mail_key)) as client:
        page = html_page(client.get(f"/dashboard/users/{user_id}")).text
        assert "ada@example.com" in page  # the mailbox is there to see...
        assert forms(page, f"/dashboard/users/{user_id}/mailbox") == []  # ...but not to change
        assert forms(page, f"/dashboard/users/{user_id}/mailbox/remove") == []
        assert "Remove SMTP mailbox" not in page and "Disconnect Gmail" not in page
        assert "Save SMTP mailbox" not in page
        # Posting the forms anyway is refused, with a page, and changes nothing.
        csrf = csrf_of(client)
        refused = client.post(f"/dashboard/users/{user_id}/mailbox/remove", data={"csrf_token": csrf})
        assert "admin" in error_page(refused, 403)
        refused = client.post(
            f"/dashboard/users/{user_id}/mailbox",
            data={"csrf_token": csrf, "host": "8.8.4.4", "port": "587", "from_address": "eve@example.com"},
        )
        assert "admin" in error_page(refused, 403)
    with server.client(admin_key) as rest:
        mailbox = rest.get(f"/v1/users/{user_id}/mailbox").json()
        assert mailbox["type"] == "smtp" and mailbox["from_address"] == "ada@example.com", mailbox
    with closing(sign_in(server, admin_key)) as client:
        page = html_page(client.get(f"/dashboard/users/{user_id}")).text
        smtp = the_form(page, f"/dashboard/users/{user_id}/mailbox")
        assert {"host", "port", "security", "username", "password", "from_address"} <= set(smtp["fields"])
        assert smtp["fields"]["csrf_token"] == csrf_of(client)
        the_form(page, f"/dashboard/users/{user_id}/mailbox/remove")
        assert "Remove SMTP mailbox" in page


def test_the_ask_box_needs_the_llm_scope(server):
    key = new_key(server, "mail", "admin")
    with closing(sign_in(server, key)) as client:
        page = html_page(client.get("/dashboard/ask")).text
        assert "lacks the <code>llm</code> scope" in page
        assert forms(page, "/dashboard/ask") == []
        refused = client.post(
            "/dashboard/ask",
            data={"prompt": "send an email to a@example.com", "user_id": "u", "csrf_token": csrf_of(client)},
        )
        assert "lacks the 'llm' scope" in error_page(refused, 403)


def test_a_key_without_mail_scope_gets_a_403_page(server):
    key = new_key(server, "llm")
    with closing(sign_in(server, key)) as client:
        for path in ("/dashboard", "/dashboard/users", "/dashboard/messages", "/dashboard/users/someone"):
            text = error_page(client.get(path), 403)
            assert "The key you signed in with lacks the 'mail' scope." in text, path


# 6. Errors are pages.


def test_an_unknown_user_is_a_404_page_naming_them(server):
    key = new_key(server, "mail", "admin")
    with closing(sign_in(server, key)) as client:
        text = error_page(client.get("/dashboard/users/nobody-here"), 404)
        assert "nobody-here" in text
        text = error_page(client.get("/dashboard/messages/no-such-message"), 404)
        assert "no-such-message" in text


@pytest.mark.parametrize(
    ("fields", "shown"),
    [
        ({"host": "8.8.8.8", "from_address": "not-an-address"}, "from_address"),
        ({"host": "127.0.0.1", "from_address": "ada@example.com"}, "127.0.0.1"),
        ({"host": "127.0.0.1", "from_address": "not-an-address"}, "from_address"),
    ],
    ids=["invalid from_address", "private host", "both"],
)
def test_a_refused_smtp_form_shows_the_error_on_the_users_page(server, fields, shown):
    key = new_key(server, "mail", "admin")
    user_id = unique("u")
    rest_create_user(server, key, user_id)
    with closing(sign_in(server, key)) as client:
        data = {"csrf_token": csrf_of(client), "port": "587", "security": "starttls", "username": "", **fields}
        response = client.post(f"/dashboard/users/{user_id}/mailbox", data=data)
        html_page(response, 422)
        for leak in LEAKS:
            assert leak not in response.text
        text = html.unescape(response.text)
        assert f"<h1>{user_id}</h1>" in text  # in place: the user's own page, not an error page
        alerts = re.findall(r'<p class="error" role="alert">(.*?)</p>', text, re.S)
        assert len(alerts) == 1 and shown in alerts[0], alerts
        assert "<details open>" in text  # the SMTP form stays open, to correct it
        the_form(response.text, f"/dashboard/users/{user_id}/mailbox")
    with server.client(key) as rest:
        mailbox = rest.get(f"/v1/users/{user_id}/mailbox").json()
    assert mailbox["type"] == "none", mailbox


@pytest.mark.parametrize("form", ["mailbox", "gmail"])
def test_mailbox_forms_refuse_a_user_id_the_api_refuses(server, form):
    """The REST API answers 422 for such ids (path.user_id); the dashboard must not create users it cannot name,
    and must answer with a page, not a 500."""
    key = new_key(server, "mail", "admin")
    with closing(sign_in(server, key)) as client:
        data = {"csrf_token": csrf_of(client), "host": "8.8.8.8", "port": "587", "from_address": "ada@example.com"}
        response = client.post(f"/dashboard/users/a%20b/{form}", data=data)
        assert response.status_code in (404, 422), f"{response.status_code}: {response.text[:300]}"
        error_page(response, response.status_code)
    with server.client(key) as rest:
        assert rest.get("/v1/users").json()["users"] == []


# 7. Tenancy.


def test_ids_with_a_nul_or_control_character_are_refused_with_a_page(server):
    with closing(sign_in(server, new_key(server, "mail", "admin"))) as client:
        csrf = csrf_of(client)
        for method, path in (
            ("GET", "/dashboard/messages/msg_%00"),
            ("POST", "/dashboard/webhooks/wh_%00/enable"),
            ("POST", "/dashboard/webhooks/deliveries/whd_%01/retry"),
        ):
            response = client.request(method, path, data={"csrf_token": csrf} if method == "POST" else None)
            error_page(response, 422)


def test_another_tenants_user_and_message_are_not_found(server):
    key_a = new_key(server, "mail")
    key_b = new_key(server, "mail")
    user_id = unique("u")
    with server.client(key_a) as rest:
        sent = rest.post(f"/v1/users/{user_id}/messages", json={"to": ["x@example.com"], "body": "x"})
        assert sent.status_code == 202, sent.text
        message_id = sent.json()["id"]
    with closing(sign_in(server, key_a)) as owner:
        html_page(owner.get(f"/dashboard/users/{user_id}"))
        html_page(owner.get(f"/dashboard/messages/{message_id}"))
    with closing(sign_in(server, key_b)) as stranger:
        assert user_id in error_page(stranger.get(f"/dashboard/users/{user_id}"), 404)
        text = error_page(stranger.get(f"/dashboard/messages/{message_id}"), 404)
        assert "x@example.com" not in text
        assert user_id not in html_page(stranger.get("/dashboard/users")).text
        assert message_id not in html_page(stranger.get("/dashboard/messages")).text
        # Filtering by the other tenant's user matches nothing, as for a user not seen yet.
        filtered = html_page(stranger.get("/dashboard/messages", params={"user_id": user_id})).text
        assert message_id not in filtered and "No messages match" in filtered


# 8. The Ask box.


def ask(client: httpx2.Client, user_id: str, prompt: str) -> dict:
    response = client.post("/dashboard/ask", data={"prompt": prompt, "user_id": user_id, "csrf_token": csrf_of(client)})
    return the_form(html_page(response).text, "/dashboard/ask/run")


def queued(server: Server, key: str, user_id: str) -> list[dict]:
    with server.client(key) as rest:
        response = rest.get("/v1/messages", params={"user_id": user_id})
        assert response.status_code == 200, response.text
        return response.json()["messages"]


def test_ask_plans_a_form_and_runs_it_only_when_confirmed(server):
    key = new_key(server, "mail", "llm")
    user_id = unique("u")
    rest_create_user(server, key, user_id)
    with closing(sign_in(server, key)) as client:
        step = ask(client, user_id, "Send an email to someone@example.com saying hello")
        assert step["fields"]["action"] == "send_email"
        assert step["fields"]["user_id"] == user_id
        assert step["fields"]["to"] == "someone@example.com"
        assert step["controls"]["to"].get("aria-invalid") is None
        assert "hello" in step["fields"]["body"].lower()
        assert queued(server, key, user_id) == []  # planning sends nothing

        response = html_page(client.post("/dashboard/ask/run", data=step["fields"]))
        match = re.search(r'Message queued: <a href="/dashboard/messages/([^"]+)"', response.text)
        assert match, response.text
        message_id = match.group(1)
    with server.client(key) as rest:
        message = rest.get(f"/v1/messages/{message_id}").json()
    assert message["entry_point"] == "dashboard", message
    assert message["user_id"] == user_id and message["to"] == ["someone@example.com"], message
    assert [m["id"] for m in queued(server, key, user_id)] == [message_id]


def test_ask_marks_a_missing_address_and_will_not_run_without_it(server):
    key = new_key(server, "mail", "llm")
    user_id = unique("u")
    rest_create_user(server, key, user_id)
    with closing(sign_in(server, key)) as client:
        step = ask(client, user_id, "send an email saying hello")
        assert step["fields"]["action"] == "send_email"
        assert step["fields"]["to"] == ""
        assert step["controls"]["to"].get("aria-invalid") == "true"
        assert queued(server, key, user_id) == []

        # Confirming it as it is: the same form comes back with the field marked, and nothing is sent.
        response = client.post("/dashboard/ask/run", data=step["fields"])
        html_page(response, 422)
        again = the_form(response.text, "/dashboard/ask/run")
        assert again["controls"]["to"].get("aria-invalid") == "true"
        assert again["fields"]["body"] == step["fields"]["body"]
    assert queued(server, key, user_id) == []


@pytest.mark.parametrize("user_id", ["", "a b", "a/b", "x" * 129], ids=["empty", "space", "slash", "129 chars"])
def test_the_confirm_step_refuses_a_user_id_the_api_refuses(server, user_id):
    """The step form carries user_id in a hidden field, which the browser can change: /llm/execute-action refuses
    such ids with 422, and so must the dashboard, rather than create a user the API cannot name."""
    key = new_key(server, "mail", "llm")
    with closing(sign_in(server, key)) as client:
        data = {"csrf_token": csrf_of(client), "action": "send_email", "user_id": user_id}
        response = client.post("/dashboard/ask/run", data=data | {"to": "someone@example.com", "body": "hello"})
        assert response.status_code == 422, f"{response.status_code}: {response.text}"
        html_page(response, 422)
        assert "Message queued" not in response.text
    with server.client(key) as rest:
        assert rest.get("/v1/messages").json()["messages"] == []
        assert rest.get("/v1/users").json()["users"] == []


def test_a_confirmed_reading_action_shows_its_figures_as_a_table(server):
    key = new_key(server, "mail", "llm")
    user_id = f"fig-{uuid.uuid4().hex[:8]}"
    with server.client(key) as rest:
        for to in ("a@example.com", "b@example.com"):
            assert rest.post(f"/v1/users/{user_id}/messages", json={"to": [to], "body": "x"}).status_code == 202
        deadline = time.monotonic() + 20  # the capture transport "sends" both at once
        while {m["status"] for m in queued(server, key, user_id)} != {"sent"} and time.monotonic() < deadline:
            time.sleep(0.1)
    with closing(sign_in(server, key)) as client:
        data = {"csrf_token": csrf_of(client), "action": "get_analytics", "user_id": user_id, "time_range": "today"}
        page = html_page(client.post("/dashboard/ask/run", data=data)).text
    today = datetime.now(UTC).date().isoformat()
    assert "Done: get analytics" in page
    row = re.search(rf"<th scope=\"row\">{today}</th><td>(\d+)</td><td>(\d+)</td>", page)
    assert row is not None and row.groups() == ("2", "0")
    assert "<dt>Emails</dt><dd>2</dd>" in page


def test_confirming_a_send_twice_sends_once(server):
    """A double click or a reload posts the confirmed form again: its idempotency key makes the second a replay."""
    key = new_key(server, "mail", "llm")
    user_id = unique("u")
    with closing(sign_in(server, key)) as client:
        step = ask(client, user_id, "Send an email to someone@example.com saying hello")
        assert step["fields"]["idempotency_key"]
        for _ in range(2):
            html_page(client.post("/dashboard/ask/run", data=step["fields"] | {"csrf_token": csrf_of(client)}))
    assert len(queued(server, key, user_id)) == 1


def test_pages_do_not_repeat_text_from_the_address_bar(server):
    key = new_key(server, "mail")
    user_id = unique("u")
    rest_create_user(server, key, user_id)
    with closing(sign_in(server, key)) as client:
        spoof = "Your key leaked, sign in again at https://evil.example"
        page = html_page(client.get(f"/dashboard/users/{user_id}", params={"status": "error", "error": spoof})).text
        coded = html_page(
            client.get(f"/dashboard/users/{user_id}", params={"status": "error", "error": "access_denied"})
        )
    assert "evil.example" not in page and "Gmail was not connected." in page
    assert "Gmail was not connected (access_denied)." in coded.text


def test_a_number_the_action_cannot_read_is_named_not_a_500(server):
    key = new_key(server, "mail", "llm")
    with closing(sign_in(server, key)) as client:
        data = {"csrf_token": csrf_of(client), "action": "list_messages", "user_id": unique("u"), "limit": "²"}
        refused = client.post("/dashboard/ask/run", data=data)
    assert "limit" in error_page(refused, 422)


def test_a_confirmed_report_says_which_message_carries_it(server):
    key = new_key(server, "mail", "llm")
    user_id = unique("u")
    rest_create_user(server, key, user_id)
    with closing(sign_in(server, key)) as client:
        step = ask(client, user_id, "send my weekly stats to lead@example.com")
        assert step["fields"]["action"] == "send_report" and step["fields"]["to"] == "lead@example.com"
        done = html_page(client.post("/dashboard/ask/run", data=step["fields"] | {"csrf_token": csrf_of(client)}))
    (message,) = queued(server, key, user_id)
    assert f'Message queued: <a href="/dashboard/messages/{message["id"]}">' in done.text
    assert message["to"] == ["lead@example.com"] and message["entry_point"] == "dashboard"


# Webhooks.


def test_the_webhooks_page_shows_recent_deliveries_retries_them_and_enables_a_disabled_webhook(start_server):
    server = start_server(
        EMAILMCP_WEBHOOK_ALLOW_HTTP="true",
        EMAILMCP_WEBHOOK_ALLOW_PRIVATE_HOSTS="true",
        EMAILMCP_WORKER_POLL_SECONDS="0.2",
    )
    tenant = unique("t")
    admin_key = server.create_key(tenant, "mail", "admin")
    with WebhookReceiver(answer=410) as receiver, server.client(admin_key) as rest:
        created = rest.post(
            "/v1/webhooks", json={"url": receiver.url, "events": ["message.sent"], "description": "CRM"}
        )
        assert created.status_code == 201, created.text
        hook = created.json()
        assert rest.post("/v1/users/ada/messages", json={"to": ["a@example.com"], "body": "hi"}).status_code == 202
        receiver.wait_for(1, accepted_only=False)

        def deliveries() -> list[dict]:
            return rest.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["deliveries"]

        deadline = time.monotonic() + 10
        while deliveries()[0]["status"] != "failed":
            assert time.monotonic() < deadline, deliveries()
            time.sleep(0.1)
        [delivery] = deliveries()

        with closing(sign_in(server, server.create_key(tenant, "mail"))) as mail_only:
            assert ">Webhooks<" not in html_page(mail_only.get("/dashboard")).text
            assert "admin" in error_page(mail_only.get("/dashboard/webhooks"), 403)
            refused = mail_only.post(
                f"/dashboard/webhooks/deliveries/{delivery['id']}/retry", data={"csrf_token": csrf_of(mail_only)}
            )
            assert "admin" in error_page(refused, 403)
        with closing(sign_in(server, admin_key)) as client:
            page = html.unescape(html_page(client.get("/dashboard/webhooks")).text)
            assert "CRM" in page and receiver.url in page and delivery["event_id"] in page
            assert "HTTP 410" in page and "only 408, 429 and 5xx answers are retried" in page
            assert hook["secret"] not in page
            retry = the_form(page, f"/dashboard/webhooks/deliveries/{delivery['id']}/retry")
            assert client.post(f"/dashboard/webhooks/deliveries/{delivery['id']}/retry").status_code == 403  # no CSRF
            receiver.answer = 200
            answer = client.post(f"/dashboard/webhooks/deliveries/{delivery['id']}/retry", data=retry["fields"])
            assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/webhooks"
            [accepted] = receiver.wait_for(1)
            assert accepted.webhook_id == delivery["event_id"]

            assert rest.patch(f"/v1/webhooks/{hook['id']}", json={"enabled": False}).status_code == 200
            page = html_page(client.get("/dashboard/webhooks")).text
            assert "disabled" in page and forms(page, f"/dashboard/webhooks/deliveries/{delivery['id']}/retry") == []
            enable = the_form(page, f"/dashboard/webhooks/{hook['id']}/enable")
            assert client.post(f"/dashboard/webhooks/{hook['id']}/enable", data=enable["fields"]).status_code == 303
            assert rest.get(f"/v1/webhooks/{hook['id']}").json()["enabled"] is True
    with closing(sign_in(server, server.create_key(unique("t"), "mail", "admin"))) as stranger:
        page = html_page(stranger.get("/dashboard/webhooks")).text
        assert "No webhooks yet" in page and hook["id"] not in page
        refused = stranger.post(
            f"/dashboard/webhooks/deliveries/{delivery['id']}/retry", data={"csrf_token": csrf_of(stranger)}
        )
        error_page(refused, 404)
