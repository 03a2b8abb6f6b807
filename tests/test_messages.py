"""The messages API over real HTTP, delivered by the embedded worker through the capture transport."""

import base64
import email
import re
import time
from datetime import UTC, datetime, timedelta
from email import policy

import pytest

from conftest import BACKENDS, assert_error, backend_database_url


@pytest.fixture(scope="module", params=BACKENDS)
def mail_server(request, start_module_server):
    database_url = backend_database_url(request)
    return start_module_server(database_url, EMAILMCP_RETRY_BASE_SECONDS="0.2", EMAILMCP_WORKER_POLL_SECONDS="0.2")


@pytest.fixture
def client(mail_server, tenant_name):
    with mail_server.client(mail_server.create_key(tenant_name, "mail", "admin")) as client:
        yield client


def wait_for_status(client, message_id: str, *statuses: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = client.get(f"/v1/messages/{message_id}").json()
        if message["status"] in statuses:
            return message
        time.sleep(0.1)
    raise AssertionError(f"message {message_id} still {message['status']} after {timeout}s")


def raw_email(client, message_id: str) -> email.message.EmailMessage:
    response = client.get(f"/v1/messages/{message_id}/raw")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("message/rfc822")
    return email.message_from_bytes(response.content, policy=policy.default)


def test_send_is_accepted_then_delivered_by_capture(client):
    response = client.post(
        "/v1/users/u1/messages",
        json={
            "to": ["ada@example.com"],
            "cc": ["bob@example.com"],
            "bcc": ["eve@example.com"],
            "subject": "Größe café",
            "body": "Hello there",
        },
    )
    assert response.status_code == 202, response.text
    queued = response.json()
    assert queued["status"] == "queued"
    assert queued["transport"] == "capture"
    assert queued["message_id"].startswith("<") and queued["message_id"].endswith(">")
    assert queued["entry_point"] == "rest" and queued["api_key_id"]
    sent = wait_for_status(client, queued["id"], "sent")
    assert sent["sent_at"] and sent["error"] is None
    assert [a["outcome"] for a in sent["attempt_history"]] == ["sent"]
    mime = raw_email(client, queued["id"])
    assert mime["Subject"] == "Größe café"
    assert mime["Message-ID"] == queued["message_id"]
    assert mime["Cc"] == "bob@example.com"
    assert "Bcc" not in mime and b"eve@example.com" not in client.get(f"/v1/messages/{queued['id']}/raw").content
    assert mime.get_content().strip() == "Hello there"
    profile = client.get("/v1/users/u1/profile").json()
    assert profile["total_emails_sent"] == 1
    assert profile["last_used"] == queued["created_at"]


def test_html_with_attachment_and_threading(client):
    pdf = b"%PDF-1.4 fake"
    response = client.post(
        "/v1/messages",
        json={
            "user_id": "u2",
            "to": ["ada@example.com"],
            "subject": "Re: plan",
            "body_type": "html",
            "body": "<p>See <b>attached</b></p>",
            "in_reply_to": "<orig@example.com>",
            "references": ["<root@example.com>", "<orig@example.com>"],
            "attachments": [
                {
                    "filename": "plan.pdf",
                    "content_type": "application/pdf",
                    "content_base64": base64.b64encode(pdf).decode(),
                }
            ],
        },
    )
    assert response.status_code == 202, response.text
    wait_for_status(client, response.json()["id"], "sent")
    mime = raw_email(client, response.json()["id"])
    assert mime["In-Reply-To"] == "<orig@example.com>"
    assert mime["References"] == "<root@example.com> <orig@example.com>"
    assert "See attached" in mime.get_body(("plain",)).get_content()
    assert "<b>attached</b>" in mime.get_body(("html",)).get_content()
    (attachment,) = list(mime.iter_attachments())
    assert attachment.get_filename() == "plan.pdf" and attachment.get_content() == pdf


def test_idempotency_replays_and_conflicts(client):
    body = {"to": ["ada@example.com"], "subject": "once", "body": "only once"}
    first = client.post("/v1/users/idem/messages", json=body, headers={"Idempotency-Key": "k-1"})
    again = client.post("/v1/users/idem/messages", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers.get("idempotent-replayed") == "true"
    conflict = client.post("/v1/users/idem/messages", json=body | {"body": "other"}, headers={"Idempotency-Key": "k-1"})
    assert_error(conflict, 409, "idempotency_key_reused")
    too_long = client.post("/v1/users/idem/messages", json=body, headers={"Idempotency-Key": "k" * 256})
    assert too_long.status_code == 422
    listed = client.get("/v1/messages", params={"user_id": "idem"}).json()["messages"]
    assert len(listed) == 1


def test_scheduled_message_can_be_cancelled(client):
    send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    response = client.post(
        "/v1/users/sched/messages", json={"to": ["ada@example.com"], "body": "later", "send_at": send_at}
    )
    assert response.status_code == 202 and response.json()["status"] == "scheduled"
    message_id = response.json()["id"]
    assert (
        client.get("/v1/messages", params={"status": "pending", "user_id": "sched"}).json()["messages"][0]["id"]
        == message_id
    )
    cancelled = client.post(f"/v1/messages/{message_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert_error(client.post(f"/v1/messages/{message_id}/cancel"), 409, "not_cancellable")


def test_sent_message_cannot_be_cancelled(client):
    message_id = client.post("/v1/users/u3/messages", json={"to": ["ada@example.com"], "body": "x"}).json()["id"]
    wait_for_status(client, message_id, "sent")
    assert_error(client.post(f"/v1/messages/{message_id}/cancel"), 409, "not_cancellable")


def test_listing_filters_and_pages_newest_first(client):
    ids = [
        client.post("/v1/users/lister/messages", json={"to": ["a@example.com"], "body": str(n)}).json()["id"]
        for n in range(5)
    ]
    seen, cursor = [], None
    while True:
        page = client.get(
            "/v1/messages", params={"user_id": "lister", "limit": 2} | ({"cursor": cursor} if cursor else {})
        ).json()
        seen += [m["id"] for m in page["messages"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    assert_error(client.get("/v1/messages", params={"user_id": "nobody"}), 404, "user_not_found")
    assert client.get("/v1/messages", params={"status": "bogus"}).status_code == 422


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"to": []}, "body.to"),
        ({"to": ["not-an-address"]}, "body.to.0"),
        ({"subject": "hi\r\nBcc: x@example.com"}, "body.subject"),
        ({"body_type": "markdown"}, "body.body_type"),
        ({"attachments": [{"filename": "a\nb.txt", "content_base64": ""}]}, "body.attachments.0.filename"),
        (
            {"attachments": [{"filename": "a.txt", "content_type": "text/plain\r\nX: y", "content_base64": ""}]},
            "body.attachments.0.content_type",
        ),
        ({"attachments": [{"filename": "a.txt", "content_base64": "***"}]}, "attachments.0.content_base64"),
        ({"send_at": "2001-01-01T00:00:00Z"}, "send_at"),
        ({"send_at": (datetime.now(UTC) + timedelta(days=31)).isoformat()}, "send_at"),
        ({"in_reply_to": "no-brackets@example.com"}, "body.in_reply_to"),
        ({"reply_to": ["x@example.com\r\n"]}, "body.reply_to.0"),
    ],
)
def test_bad_input_is_422_naming_the_field_and_queues_nothing(client, change, field):
    response = client.post("/v1/users/bad/messages", json={"to": ["ada@example.com"], "body": "x"} | change)
    error = assert_error(response, 422)
    assert error["details"][0]["field"] == field
    assert client.get("/v1/users/bad/profile").status_code == 404


def test_too_many_recipients(client):
    to = [f"r{n}@example.com" for n in range(101)]
    error = assert_error(
        client.post("/v1/users/many/messages", json={"to": to, "body": "x"}), 422, "too_many_recipients"
    )
    assert error["details"][0]["field"] == "to"


def test_oversized_message_is_413(start_server):
    server = start_server(EMAILMCP_MAX_MESSAGE_BYTES="2048")
    with server.client(server.bootstrap_key) as client:
        blob = base64.b64encode(b"x" * 4096).decode()
        response = client.post(
            "/v1/users/big/messages",
            json={"to": ["a@example.com"], "attachments": [{"filename": "x.bin", "content_base64": blob}]},
        )
        assert_error(response, 413, "message_too_large")
        assert client.get("/v1/messages").json()["messages"] == []


def test_recipient_policy_and_daily_cap(start_server, tenant_name):
    server = start_server(EMAILMCP_DAILY_SEND_CAP="2")
    key = server.create_key(tenant_name, "mail")
    server.cli("tenants", "set", tenant_name, "recipient_domain_denylist", "blocked.example")
    with server.client(key) as client:
        refused = client.post("/v1/users/p/messages", json={"to": ["ok@example.com"], "cc": ["x@sub.blocked.example"]})
        error = assert_error(refused, 422, "recipient_refused")
        assert error["details"][0]["field"] == "cc.0" and "x@sub.blocked.example" in error["message"]
        for _ in range(2):
            assert client.post("/v1/users/p/messages", json={"to": ["ok@example.com"]}).status_code == 202
        capped = client.post("/v1/users/p/messages", json={"to": ["ok@example.com"]})
        assert_error(capped, 429, "daily_send_cap")
        assert int(capped.headers["retry-after"]) > 80000
        assert len(client.get("/v1/messages").json()["messages"]) == 2
    server.cli("tenants", "set", tenant_name, "recipient_domain_allowlist", "example.com")
    with server.client(key) as client:
        error = assert_error(
            client.post("/v1/users/q/messages", json={"to": ["a@example.org"]}), 422, "recipient_refused"
        )
        assert error["details"][0]["field"] == "to.0"


def test_default_transport_none_refuses_at_enqueue(start_server):
    server = start_server(EMAILMCP_DEFAULT_TRANSPORT="none")
    with server.client(server.bootstrap_key) as client:
        assert_error(client.post("/v1/users/n/messages", json={"to": ["a@example.com"]}), 409, "mailbox_not_connected")


def test_messages_are_tenant_scoped(mail_server, client, tenant_name):
    message_id = client.post("/v1/users/mine/messages", json={"to": ["a@example.com"]}).json()["id"]
    with mail_server.client(mail_server.create_key(tenant_name + "-other", "mail", "admin")) as other:
        for method, path in [
            ("GET", f"/v1/messages/{message_id}"),
            ("GET", f"/v1/messages/{message_id}/raw"),
            ("POST", f"/v1/messages/{message_id}/cancel"),
        ]:
            assert_error(other.request(method, path), 404, "message_not_found")
        assert other.get("/v1/messages").json()["messages"] == []


def test_deleting_a_user_erases_their_messages(client):
    message_id = client.post("/v1/users/erase/messages", json={"to": ["a@example.com"]}).json()["id"]
    assert client.delete("/v1/users/erase").status_code == 204
    assert_error(client.get(f"/v1/messages/{message_id}"), 404, "message_not_found")


def test_metrics_show_the_queue_and_delivery_outcomes(mail_server, client):
    message_id = client.post("/v1/users/metered/messages", json={"to": ["a@example.com"]}).json()["id"]
    client.post(
        "/v1/users/metered/messages",
        json={"to": ["a@example.com"], "send_at": (datetime.now(UTC) + timedelta(hours=2)).isoformat()},
    )
    wait_for_status(client, message_id, "sent")
    with mail_server.client() as anonymous:
        text = anonymous.get("/metrics").text
    sent = re.search(r'^emailmcp_delivery_outcomes_total\{outcome="sent",transport="capture"\} (\d+)', text, re.M)
    assert sent and float(sent.group(1)) >= 1
    scheduled = re.search(r'^emailmcp_messages\{status="scheduled"\} (\S+)', text, re.M)
    assert scheduled and float(scheduled.group(1)) >= 1
    assert re.search(r"^emailmcp_oldest_due_message_age_seconds \S+", text, re.M)
