"""The dashboard in a real browser (Debian's Chromium driven by Playwright) against a real `emailmcp serve`: signing
in, the chart and the table of figures beside it, the Ask box from a prompt to a sent message, mailboxes by scope,
signing out; with the keyboard, labelled controls and no console errors. Screenshots of every page go to
tests/artifacts/screenshots/."""

import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from playwright.sync_api import expect

from conftest import Server, unique
from peers.chromium import Browser
from peers.oidc import OidcProvider
from peers.smtp import SmtpSink
from peers.webhooks import WebhookReceiver

SMTP_ENV = {
    "EMAILMCP_SMTP_ALLOW_PRIVATE_HOSTS": "true",
    "EMAILMCP_WORKER_POLL_SECONDS": "0.2",
    "EMAILMCP_WEBHOOK_ALLOW_HTTP": "true",
    "EMAILMCP_WEBHOOK_ALLOW_PRIVATE_HOSTS": "true",
}
UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
    .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
    .map(el => el.outerHTML)"""


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    with SmtpSink(reject={"bounce@example.com": (550, "5.1.1 No such user")}) as sink:
        yield sink


@pytest.fixture(scope="module")
def server(start_module_server) -> Server:
    return start_module_server(**SMTP_ENV)


def new_tenant(server: Server, *scopes: str) -> str:
    return server.create_key(unique("t"), *scopes)


def with_smtp_mailbox(server: Server, key: str, user_id: str, sink: SmtpSink) -> None:
    body = {"type": "smtp", "host": "127.0.0.1", "port": sink.port, "security": "none"}
    with server.client(key) as client:
        response = client.put(f"/v1/users/{user_id}/mailbox", json=body | {"from_address": f"{user_id}@example.com"})
        assert response.status_code == 200, response.text


def send(server: Server, key: str, user_id: str, to: str) -> str:
    with server.client(key) as client:
        response = client.post(f"/v1/users/{user_id}/messages", json={"to": [to], "subject": "Hi", "body": "x"})
        assert response.status_code == 202, response.text
        return response.json()["id"]


def wait_final(server: Server, key: str, message_ids: list[str]) -> None:
    with server.client(key) as client:
        for message_id in message_ids:
            for _ in range(200):
                if client.get(f"/v1/messages/{message_id}").json()["status"] in ("sent", "failed"):
                    break
                client.get("/health")  # a short pause that also keeps the connection warm
            else:
                pytest.fail(f"{message_id} never finished")


def sign_in(browser: Browser, server: Server, key: str) -> None:
    page = browser.page
    page.goto(f"{server.url}/dashboard")
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in$"))
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()


def assert_labelled(browser: Browser) -> None:
    assert browser.page.evaluate(UNLABELLED) == []


def test_from_sign_in_to_a_sent_message_and_out(server, sink, browser):
    key = new_tenant(server, "mail", "llm", "admin")
    user = unique("ana")
    with_smtp_mailbox(server, key, user, sink)
    sent = [send(server, key, user, "one@example.com"), send(server, key, user, "two@example.com")]
    wait_final(server, key, [*sent, send(server, key, user, "bounce@example.com")])
    page = browser.page
    today = datetime.now(UTC).date().isoformat()

    page.goto(f"{server.url}/dashboard/sign-in")
    assert_labelled(browser)
    browser.screenshot("sign-in")
    sign_in(browser, server, key)
    expect(page.locator(".chart[data-drawn='true'] canvas")).to_have_count(1)
    figures = page.get_by_role("table", name="All users: figures per day")
    today_row = figures.get_by_role("row").filter(has=page.get_by_role("rowheader", name=today))
    expect(today_row.get_by_role("cell")).to_have_text(["2", "1"])
    expect(page.locator(".totals")).to_contain_text("Failed")
    assert_labelled(browser)
    browser.screenshot("overview")

    page.get_by_role("link", name="Users").click()
    expect(page.get_by_role("link", name=user)).to_be_visible()
    browser.screenshot("users")
    page.get_by_role("link", name=user).click()
    expect(page.get_by_role("heading", name=user)).to_be_visible()
    expect(page.locator(".chart[data-drawn='true'] canvas")).to_have_count(1)
    expect(page.get_by_role("button", name="Remove SMTP mailbox")).to_be_visible()
    assert_labelled(browser)
    browser.screenshot("user")

    page.get_by_role("link", name="Ask").click()
    page.get_by_label("For user").fill(user)
    page.get_by_label("Request").fill("Send an email to someone@example.com saying hello")
    page.get_by_role("button", name="Plan").click()
    expect(page.get_by_role("textbox", name="To", exact=True)).to_have_value("someone@example.com")
    expect(page.get_by_role("textbox", name="Body", exact=True)).to_have_value(re.compile("hello", re.IGNORECASE))
    assert_labelled(browser)
    browser.screenshot("ask-plan")
    with server.client(key) as client:  # planned, not sent
        assert client.get("/v1/messages", params={"user_id": user}).json()["messages"][0]["to"] != [
            "someone@example.com"
        ]
    page.get_by_role("button", name="Confirm and run").click()
    expect(page.get_by_role("status").filter(has_text="Message queued")).to_be_visible()
    browser.screenshot("ask-done")

    page.get_by_role("main").get_by_role("link", name="Messages").click()
    newest = page.locator("#message-rows tr").first
    expect(newest).to_contain_text("someone@example.com")
    expect(newest.locator(".status")).to_have_text("sent", timeout=20_000)  # updated in place by htmx polling
    expect(newest).to_contain_text("dashboard")
    assert_labelled(browser)
    browser.screenshot("messages")
    newest.get_by_role("link").nth(1).click()
    expect(page.get_by_role("heading", name="Attempts")).to_be_visible()
    browser.screenshot("message")
    assert ["someone@example.com"] in [m.recipients for m in sink.wait_for(3)]  # from the user's own mailbox

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in$"))
    page.goto(f"{server.url}/dashboard")
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in$"))


def delivery_statuses(server: Server, key: str, webhook_id: str) -> list[str]:
    with server.client(key) as client:
        return [d["status"] for d in client.get(f"/v1/webhooks/{webhook_id}/deliveries").json()["deliveries"]]


def test_a_webhooks_refused_delivery_is_shown_and_retried_from_the_page(server, browser):
    key = new_tenant(server, "mail", "admin")
    page = browser.page
    with WebhookReceiver(answer=400) as receiver:
        with server.client(key) as client:
            response = client.post(
                "/v1/webhooks", json={"url": receiver.url, "events": ["message.sent"], "description": "Orders app"}
            )
            assert response.status_code == 201, response.text
            webhook_id = response.json()["id"]
        send(server, key, unique("bo"), "someone@example.com")
        for _ in range(200):
            if delivery_statuses(server, key, webhook_id) == ["failed"]:
                break
        else:
            pytest.fail(f"the delivery never failed: {delivery_statuses(server, key, webhook_id)}")

        sign_in(browser, server, key)
        page.get_by_role("link", name="Webhooks").click()
        deliveries = page.get_by_role("table", name="Recent deliveries of Orders app, newest first")
        row = deliveries.get_by_role("row").nth(1)
        expect(row.locator(".status")).to_have_text("failed")
        expect(row).to_contain_text("HTTP 400")
        assert_labelled(browser)
        browser.screenshot("webhooks")

        receiver.answer = 200
        row.get_by_role("button", name=re.compile("^Retry now")).click()
        expect(page).to_have_url(re.compile(r"/dashboard/webhooks$"))
        receiver.wait_for(1)
        for _ in range(50):
            page.reload()
            if deliveries.get_by_role("row").nth(1).locator(".status").inner_text() == "succeeded":
                break
        expect(deliveries.get_by_role("row").nth(1).locator(".status")).to_have_text("succeeded")
        expect(deliveries.get_by_role("row").nth(1)).to_contain_text("HTTP 200")


def test_a_wrong_key_is_refused(server, browser):
    browser.ignore(r"sign-in: HTTP 401", r"status of 401")  # the browser's own report of the refusal's status
    page = browser.page
    page.goto(f"{server.url}/dashboard/sign-in")
    page.get_by_label("API key").fill("emk_nothere_notasecret")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("That API key is unknown or revoked.")
    expect(page.get_by_label("API key")).to_be_visible()
    browser.screenshot("sign-in-refused")


def test_only_an_admin_key_sees_mailbox_controls(server, sink, browser):
    tenant = unique("t")
    admin, mail_only = server.create_key(tenant, "mail", "admin"), server.create_key(tenant, "mail")
    user = unique("bo")
    with_smtp_mailbox(server, admin, user, sink)
    sign_in(browser, server, mail_only)
    browser.page.goto(f"{server.url}/dashboard/users/{user}")
    expect(browser.page.get_by_role("heading", name=user)).to_be_visible()
    expect(browser.page.get_by_role("button", name="Remove SMTP mailbox")).to_have_count(0)
    expect(browser.page.get_by_text("Use an SMTP mailbox")).to_have_count(0)
    browser.screenshot("user-mail-scope")


def test_the_keyboard_reaches_everything(server, browser):
    key = new_tenant(server, "mail", "llm")
    page = browser.page
    page.goto(f"{server.url}/dashboard/sign-in")
    expect(page.get_by_label("API key")).to_be_focused()  # autofocus: type the key, press Enter
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Overview")).to_be_focused()
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Users", exact=True)).to_be_visible()
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # the skip link: focus moves into the page
    page.keyboard.press("Tab")
    expect(page.get_by_label("Add a user")).to_be_focused()
    page.keyboard.type("kbd-user")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="kbd-user")).to_be_visible()


def test_connecting_gmail_comes_back_to_the_users_page_signed_in(tmp_path_factory, browser):
    """The provider's pages are another site (127.0.0.1 against the dashboard's localhost), as Google's are: the way
    back must still carry the SameSite=Strict session cookie and land on the user's page, connected."""
    browser.ignore(r"fonts\.googleapis\.com")  # the provider's own login page asks for a web font; no network here
    server = Server(tmp_path_factory.mktemp("dashboard-gmail"))
    public = f"http://localhost:{server.port}"
    oidc = OidcProvider([f"{public}/v1/oauth/callback"]).start()
    try:
        server.env.update(oidc.emailmcp_env() | {"EMAILMCP_PUBLIC_URL": public})
        server.start()
        key = new_tenant(server, "mail", "admin")
        user = unique("gus")
        with server.client(key) as client:
            assert client.post("/v1/users", json={"user_id": user}).status_code == 201
        page = browser.page
        page.goto(f"{public}/dashboard/sign-in")
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        page.goto(f"{public}/dashboard/users/{user}")
        page.get_by_role("button", name="Connect Gmail").click()
        expect(page).to_have_url(re.compile(re.escape(oidc.issuer)))
        page.locator("input[name=login]").fill("gus@example.com")
        page.locator("input[name=password]").fill("any-password")
        page.locator("button[type=submit]").click()
        page.locator("button[type=submit]").click()  # the consent form's Continue
        expect(page.get_by_role("status").filter(has_text="Gmail is connected.")).to_be_visible()
        expect(page).to_have_url(re.compile(re.escape(f"{public}/dashboard/users/{user}?status=connected")))
        expect(page.get_by_text("gus@example.com")).to_be_visible()
        browser.screenshot("user-gmail-connected")
    finally:
        server.stop()
        oidc.stop()
