"""Webhooks end to end: real `emailmcp serve` / `emailmcp worker` processes POSTing signed events to a real HTTP
receiver.

Everything here goes over real sockets: the API over HTTP, mail through the capture transport or a user's own
SMTP mailbox on tests/peers/smtp.py's SmtpSink, and events to tests/peers/webhooks.py's WebhookReceiver on
127.0.0.1, whose signatures are checked with the independent `standardwebhooks` library. The fault tests make the
receiver answer 5xx, 4xx, 3xx and 429 (and Retry-After), take it down, SIGKILL workers while deliveries are queued
and while they are in flight (PostgreSQL, `serve --no-worker` plus `emailmcp worker` processes), let an endpoint fail
until the server disables it, let a delivery run out of its retry window, restart a server with stricter URL rules,
and answer byte by byte from a raw socket server (ByteByByteReceiver, below) to hold an attempt past its timeout.
"""

import base64
import secrets
import select
import signal
import socket
import sqlite3
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta

import httpx2
import pytest
from standardwebhooks.webhooks import WebhookVerificationError

from conftest import BACKENDS, PostgresDatabase, Server, assert_error, require_postgres, unique, wait_until
from emailmcp.retries import backoff
from emailmcp.webhooks.dispatcher import pinned
from peers.smtp import SmtpSink, certificate
from peers.webhooks import Delivery, WebhookReceiver

# The receiver is on loopback and speaks plain http; retries and polls must come quickly.
WEBHOOK_ENV = {
    "EMAILMCP_WEBHOOK_ALLOW_HTTP": "true",
    "EMAILMCP_WEBHOOK_ALLOW_PRIVATE_HOSTS": "true",
    "EMAILMCP_SMTP_ALLOW_PRIVATE_HOSTS": "true",
    "EMAILMCP_WORKER_POLL_SECONDS": "0.2",
    "EMAILMCP_RETRY_BASE_SECONDS": "0.2",
    "EMAILMCP_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
}
# Separate workers that get killed: short leases. A webhook's lease is max(worker lease, 3 * webhook timeout).
LEASE_SECONDS = 6
KILL_ENV = WEBHOOK_ENV | {"EMAILMCP_WORKER_LEASE_SECONDS": "5", "EMAILMCP_WEBHOOK_TIMEOUT_SECONDS": "2"}

ALL_EVENTS = [
    "message.sent",
    "message.failed",
    "message.cancelled",
    "mailbox.connected",
    "mailbox.needs_reauth",
    "mailbox.disconnected",
]
# What a tenant may put in a message; none of it may ever appear in an event.
SUBJECT = "Quarterly numbers, confidential-subject-7f3a"
BODY = "The figures are attached. confidential-body-91c2"


# -- helpers -------------------------------------------------------------------------------------------------------


def tenant_client(server: Server):
    """A client with a fresh tenant's mail+admin key."""
    return server.client(server.create_key(unique("t"), "mail", "admin"))


def create_webhook(client, url: str, events: list[str], **extra: object) -> dict:
    response = client.post("/v1/webhooks", json={"url": url, "events": events} | extra)
    assert response.status_code == 201, response.text
    webhook = response.json()
    assert webhook["id"].startswith("wh_") and webhook["enabled"] is True, webhook
    assert webhook["secret"].startswith("whsec_") and len(base64.b64decode(webhook["secret"][6:])) >= 24, webhook
    return webhook


def get_webhook(client, webhook_id: str) -> dict:
    response = client.get(f"/v1/webhooks/{webhook_id}")
    assert response.status_code == 200, response.text
    webhook = response.json()
    assert "secret" not in webhook, "the secret is shown only on creation and rotation"
    return webhook


def deliveries_of(client, webhook_id: str, page_size: int = 100, **params: str) -> list[dict]:
    """Every delivery of a webhook, newest first, following next_cursor."""
    deliveries: list[dict] = []
    cursor = None
    while True:
        query = params | {"limit": page_size} | ({"cursor": cursor} if cursor else {})
        response = client.get(f"/v1/webhooks/{webhook_id}/deliveries", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        deliveries += page["deliveries"]
        cursor = page["next_cursor"]
        if not cursor:
            return deliveries


def wait_for_deliveries(
    client, webhook_id: str, count: int, done: Callable[[dict], bool], timeout: float = 20, what: str = ""
) -> list[dict]:
    """Polls the deliveries API until there are `count` deliveries and `done` holds for each."""
    last: list[dict] = []

    def reached() -> list[dict] | None:
        nonlocal last
        last = deliveries_of(client, webhook_id)
        return last if len(last) == count and all(done(d) for d in last) else None

    try:
        return wait_until(reached, timeout, what or f"{count} deliveries of {webhook_id}", 0.1)  # type: ignore[return-value]
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {last}") from None


def send(client, user_id: str, **content: object) -> dict:
    body = {"to": ["ada@example.com"], "subject": SUBJECT, "body": BODY} | content
    response = client.post(f"/v1/users/{user_id}/messages", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def get_message(client, message_id: str) -> dict:
    response = client.get(f"/v1/messages/{message_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_status(client, message_id: str, *statuses: str, timeout: float = 20) -> dict:
    return wait_until(  # type: ignore[return-value]
        lambda: (m := get_message(client, message_id))["status"] in statuses and m,
        timeout,
        f"message {message_id} to be {'/'.join(statuses)}",
    )


def connect_mailbox(client, user_id: str, sink: SmtpSink, from_address: str, **smtp: object) -> dict:
    body = {"type": "smtp", "host": "127.0.0.1", "port": sink.port, "security": "none", "from_address": from_address}
    response = client.put(f"/v1/users/{user_id}/mailbox", json=body | smtp)
    assert response.status_code == 200, response.text
    return response.json()


def verified(delivery: Delivery, secret: str) -> dict:
    """The event, checked with standardwebhooks; also that the headers and the body agree on the event id."""
    event = WebhookReceiver.verify(delivery, secret)
    assert event == delivery.payload
    assert delivery.webhook_id == event["id"] and event["id"].startswith("evt_"), (delivery.headers, event)
    assert delivery.headers["content-type"].startswith("application/json"), delivery.headers
    assert abs(int(delivery.headers["webhook-timestamp"]) - time.time()) < 120, delivery.headers
    return event


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def random_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def distinct_ids(receiver: WebhookReceiver) -> set[str]:
    return {d.webhook_id for d in receiver.accepted()}


class Switch:
    """A receiver's answer that can be changed while it runs: answer(delivery) -> the current status."""

    def __init__(self, status: int) -> None:
        self.status = status

    def __call__(self, delivery: Delivery) -> int:
        return self.status


# -- servers -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_server(start_module_server) -> Server:
    """SQLite, embedded worker, http and loopback receivers allowed; tests make their own tenants."""
    return start_module_server(**WEBHOOK_ENV)


@pytest.fixture(scope="module")
def pg_split_server(start_module_server) -> Iterator[Server]:
    """PostgreSQL, `serve --no-worker`: only the `emailmcp worker` processes a test starts deliver anything."""
    database = PostgresDatabase(require_postgres())
    server = start_module_server(database.url, args=("--no-worker",), **KILL_ENV)
    yield server
    server.stop()
    database.drop()


# -- 1. every event type arrives, signed -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_event_arrives_signed_and_only_where_subscribed(backend, request, start_server, make_database):
    if backend == "sqlite":
        server = request.getfixturevalue("shared_server")
    else:
        server = start_server(make_database("postgresql"), **WEBHOOK_ENV)
    reply = (550, "5.1.1 <bad@example.com>: no such user")
    with (
        WebhookReceiver() as everything,
        WebhookReceiver() as failures_only,
        SmtpSink(reject={"bad@example.com": reply}) as sink,
        tenant_client(server) as client,
        tenant_client(server) as other_tenant,
    ):
        subscribed = [e for e in ALL_EVENTS if e != "mailbox.needs_reauth"]
        hook = create_webhook(client, everything.url, subscribed, description="all but needs_reauth")
        assert sorted(hook["events"]) == sorted(subscribed) and hook["description"] == "all but needs_reauth"
        only_failed = create_webhook(client, failures_only.url, ["message.failed"])
        # Another tenant's mail, with no webhook of its own, must not reach this tenant's webhooks.
        wait_for_status(other_tenant, send(other_tenant, unique("other"))["id"], "sent")

        # message.sent through the capture transport, and message.cancelled of a scheduled message.
        alice = unique("alice")
        sent = wait_for_status(client, send(client, alice)["id"], "sent")
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        scheduled = send(client, alice, send_at=later)
        response = client.post(f"/v1/messages/{scheduled['id']}/cancel")
        assert response.status_code == 200 and response.json()["status"] == "cancelled", response.text

        # mailbox.connected, message.failed (every recipient refused), mailbox.disconnected (removed).
        bob = unique("bob")
        connect_mailbox(client, bob, sink, "bob@example.com")
        failed = wait_for_status(client, send(client, bob, to=["bad@example.com"])["id"], "failed", "sent")
        assert failed["status"] == "failed", failed
        assert client.delete(f"/v1/users/{bob}/mailbox").status_code == 204

        # mailbox.disconnected when the user goes with the mailbox; its password must not show anywhere.
        carol, password = unique("carol"), "pw-never-in-an-event-5d1e"
        connect_mailbox(client, carol, sink, "carol@example.com", username="carol", password=password)
        assert client.delete(f"/v1/users/{carol}").status_code == 204

        arrived = everything.wait_for(7)
        events = {}
        for delivery in arrived:
            event = verified(delivery, hook["secret"])
            assert set(event) == {"id", "type", "created_at", "data"}, event
            assert abs(parse_time(event["created_at"]) - datetime.now(UTC)) < timedelta(minutes=2), event
            for secret_text in (SUBJECT, BODY, "confidential", password):
                assert secret_text.encode() not in delivery.body, f"{secret_text!r} leaked into {delivery.body!r}"
            with pytest.raises(WebhookVerificationError):
                WebhookReceiver.verify(delivery, only_failed["secret"])  # each webhook has its own secret
            events.setdefault(event["type"], []).append(event)
        assert len({d.webhook_id for d in arrived}) == 7, [d.payload for d in arrived]
        assert Counter({t: len(e) for t, e in events.items()}) == Counter(
            {
                "message.sent": 1,
                "message.cancelled": 1,
                "message.failed": 1,
                "mailbox.connected": 2,
                "mailbox.disconnected": 2,
            }
        ), events

        [event] = events["message.sent"]
        raw = client.get(f"/v1/messages/{sent['id']}/raw")
        assert raw.status_code == 200, raw.text
        assert f"Message-ID: {sent['message_id']}".encode() in raw.content
        assert event["data"] == {
            "user_id": alice,
            "message": {
                "id": sent["id"],
                "message_id": sent["message_id"],
                "status": "sent",
                "transport": "capture",
                "attempts": sent["attempts"],
                "error": None,
                "refused_recipients": None,
                "sent_at": event["data"]["message"]["sent_at"],
                "provider_message_id": None,
            },
        }, event
        assert parse_time(event["data"]["message"]["sent_at"]) == parse_time(sent["sent_at"]), (event, sent)

        [event] = events["message.cancelled"]
        assert event["data"]["user_id"] == alice, event
        message = event["data"]["message"]
        assert message["id"] == scheduled["id"] and message["message_id"] == scheduled["message_id"], event
        assert message["status"] == "cancelled", event

        [event] = events["message.failed"]
        assert event["data"]["user_id"] == bob, event
        message = event["data"]["message"]
        assert message["id"] == failed["id"] and message["message_id"] == failed["message_id"], event
        assert message["status"] == "failed" and message["transport"] == "smtp", event
        assert "550" in message["error"] and "5.1.1 <bad@example.com>: no such user" in message["error"], event
        assert message["error"] == failed["error"], (event, failed)

        connected = {e["data"]["user_id"]: e["data"] for e in events["mailbox.connected"]}
        assert connected == {
            bob: {
                "user_id": bob,
                "mailbox": {"type": "smtp", "status": "connected", "from_address": "bob@example.com"},
            },
            carol: {
                "user_id": carol,
                "mailbox": {"type": "smtp", "status": "connected", "from_address": "carol@example.com"},
            },
        }, events["mailbox.connected"]
        disconnected = {e["data"]["user_id"]: e["data"] for e in events["mailbox.disconnected"]}
        assert disconnected == {
            bob: {
                "user_id": bob,
                "mailbox": {"type": "smtp", "status": "disconnected", "from_address": "bob@example.com"},
                "reason": "removed",
            },
            carol: {
                "user_id": carol,
                "mailbox": {"type": "smtp", "status": "disconnected", "from_address": "carol@example.com"},
                "reason": "user_deleted",
            },
        }, events["mailbox.disconnected"]

        # Events are stored only for subscribers: the second webhook got the failure, and nothing else exists
        # for it (not even queued), nor for the other tenant's message.
        [failure] = failures_only.wait_for(1)
        assert verified(failure, only_failed["secret"]) == events["message.failed"][0]
        only = wait_for_deliveries(client, only_failed["id"], 1, lambda d: d["status"] != "sending")
        assert [(d["event_type"], d["status"]) for d in only] == [("message.failed", "succeeded")], only
        everything_deliveries = wait_for_deliveries(
            client, hook["id"], 7, lambda d: d["status"] == "succeeded", what="all 7 recorded as succeeded"
        )
        assert len(everything_deliveries) == 7, everything_deliveries
        assert {d["event_id"] for d in everything_deliveries} == {d.webhook_id for d in arrived}
        assert all(d["status"] == "succeeded" and d["attempts"] == 1 for d in everything_deliveries), [
            (d["event_type"], d["status"], d["attempts"], d["attempt_log"]) for d in everything_deliveries
        ]
        assert len(everything.deliveries) == 7 and len(failures_only.deliveries) == 1, "no duplicates when all is well"


# -- 2. retries after 5xx --------------------------------------------------------------------------------------------


def test_a_receiver_answering_500_gets_every_event_once_it_recovers(shared_server):
    failing, count = 6, 4
    lock = threading.Lock()
    answered = Counter()

    def first_ones_fail(delivery: Delivery) -> int:
        with lock:
            answered["all"] += 1
            return 500 if answered["all"] <= failing else 200

    with WebhookReceiver(first_ones_fail, delay=0.05) as receiver, tenant_client(shared_server) as client:
        hook = create_webhook(client, receiver.url, ["message.sent"])
        user = unique("retry")
        messages = {send(client, user)["id"] for _ in range(count)}

        deliveries = wait_for_deliveries(client, hook["id"], count, lambda d: d["status"] == "succeeded")
        received = Counter(d.webhook_id for d in receiver.deliveries)
        accepted = Counter(d.webhook_id for d in receiver.accepted())
        assert set(accepted) == {d["event_id"] for d in deliveries}, "every event must be accepted"
        assert set(received) == set(accepted), "a request with an unknown webhook-id came"
        assert sum(received.values()) == count + failing, received
        assert {verified(d, hook["secret"])["data"]["message"]["id"] for d in receiver.accepted()} == messages

        bodies: dict[str, bytes] = {}
        for delivery in receiver.deliveries:  # a retry is the same event: same id, byte-identical body
            verified(delivery, hook["secret"])
            assert bodies.setdefault(delivery.webhook_id, delivery.body) == delivery.body

        failed_attempts = 0
        for delivery in deliveries:
            log = delivery["attempt_log"]
            assert delivery["attempts"] == len(log) == received[delivery["event_id"]], delivery
            assert [a["number"] for a in log] == list(range(1, len(log) + 1)), delivery
            assert [a["status_code"] for a in log] == [500] * (len(log) - 1) + [200], delivery
            for attempt in log[:-1]:
                assert "500" in attempt["error"], attempt
            assert log[-1]["error"] is None, delivery
            assert all(a["latency_ms"] >= 50 for a in log), f"the receiver takes 50 ms to answer: {log}"
            assert delivery["last_status_code"] == 200 and delivery["last_error"] is None, delivery
            assert delivery["delivered_at"] and delivery["next_attempt_at"] is None, delivery
            assert delivery["event_type"] == "message.sent" and delivery["webhook_id"] == hook["id"], delivery
            failed_attempts += len(log) - 1
        assert failed_attempts == failing, deliveries
        # Accepted exactly once per event id: nothing is sent again after a success.
        assert set(accepted.values()) == {1}, accepted

        # The API pages through them newest first, and filters by status.
        paged = deliveries_of(client, hook["id"], page_size=1)
        assert [d["id"] for d in paged] == [d["id"] for d in deliveries], "paging must give the same list"
        assert [d["id"] for d in paged] == sorted((d["id"] for d in paged), reverse=True), "newest first"
        assert len(deliveries_of(client, hook["id"], status="succeeded")) == count
        assert deliveries_of(client, hook["id"], status="failed") == []
        assert get_webhook(client, hook["id"])["failing_since"] is None, "a success clears failing_since"


# -- 3. durability across SIGKILL (PostgreSQL, separate workers) ------------------------------------------------------


@pytest.mark.postgres
def test_events_queued_while_the_receiver_is_down_survive_a_sigkilled_worker(pg_split_server, start_worker):
    server, count = pg_split_server, 5
    receiver = WebhookReceiver()  # not listening yet: connections are refused
    try:
        with tenant_client(server) as client:
            hook = create_webhook(client, receiver.url, ["message.sent"])
            user = unique("down")
            messages = {send(client, user)["id"] for _ in range(count)}

            first = start_worker(server)
            wait_for_deliveries(
                client,
                hook["id"],
                count,
                lambda d: d["attempts"] >= 1 and "could not connect" in (d["last_error"] or ""),
                what="every event to be attempted against the closed port",
            )
            assert first.kill() == -signal.SIGKILL
            for delivery in deliveries_of(client, hook["id"]):
                assert delivery["status"] in ("pending", "sending"), delivery
                assert delivery["attempt_log"][0]["status_code"] is None, delivery
                assert "could not connect" in delivery["attempt_log"][0]["error"], delivery

            receiver.start()
            second = start_worker(server)
            wait_until(lambda: len(distinct_ids(receiver)) >= count, 30, f"{count} distinct events to arrive")
            deliveries = wait_for_deliveries(client, hook["id"], count, lambda d: d["status"] == "succeeded")
            assert second.running(), second.log_text()

            assert distinct_ids(receiver) == {d["event_id"] for d in deliveries}
            events = [verified(d, hook["secret"]) for d in receiver.accepted()]
            assert {e["data"]["message"]["id"] for e in events} == messages, "one event per message sent"
            assert all(get_message(client, m)["status"] == "sent" for m in messages)
            assert all(d["attempts"] >= 2 and d["attempt_log"][-1]["status_code"] == 200 for d in deliveries)
    finally:
        receiver.stop()


@pytest.mark.postgres
def test_a_delivery_in_flight_when_its_worker_is_killed_is_sent_again_after_the_lease(pg_split_server, start_worker):
    server, count = pg_split_server, 3
    arrivals: list[Delivery] = []
    slow = threading.Event()
    slow.set()

    def answer(delivery: Delivery) -> int:
        arrivals.append(delivery)  # noted on arrival, before the (slow) answer
        if slow.is_set():
            time.sleep(1.5)  # the worker is killed during this
        return 200

    with WebhookReceiver(answer) as receiver, tenant_client(server) as client:
        hook = create_webhook(client, receiver.url, ["message.sent"])
        user = unique("inflight")
        messages = {send(client, user)["id"] for _ in range(count)}

        first = start_worker(server)
        wait_until(lambda: len(arrivals) >= 1, 30, "the first delivery to reach the receiver", 0.01)
        first_arrival = time.monotonic()
        wait_until(lambda: len(arrivals) >= count, 1.0, "every delivery to be in flight", 0.01)
        assert first.kill() == -signal.SIGKILL
        killed_at = time.monotonic()
        slow.clear()
        assert killed_at - first_arrival < 1.5, "the worker must be killed while the deliveries are in flight"
        in_flight = {d.webhook_id for d in arrivals}
        assert len(in_flight) == count, [d.payload for d in arrivals]
        for delivery in deliveries_of(client, hook["id"]):
            assert delivery["status"] == "sending" and delivery["attempts"] == 1, delivery

        start_worker(server)
        wait_until(
            lambda: all(n >= 2 for n in Counter(d.webhook_id for d in arrivals).values()),
            LEASE_SECONDS + 15,
            "each delivery to come again once its lease expired",
        )
        seen = Counter(d.webhook_id for d in arrivals)
        assert set(seen) == in_flight, "redeliveries carry the same webhook-id"
        again = [d for d in arrivals if d.received_at > killed_at]
        assert min(d.received_at for d in again) - first_arrival > LEASE_SECONDS - 1, (
            "a leased delivery must not be sent again before its lease expires"
        )
        deliveries = wait_for_deliveries(client, hook["id"], count, lambda d: d["status"] == "succeeded")
        for delivery in deliveries:
            assert delivery["attempts"] == 2 and delivery["attempt_log"][-1]["status_code"] == 200, delivery

        events = {}
        for delivery in arrivals:  # the first and the second send of each are the same signed event
            event = verified(delivery, hook["secret"])
            assert events.setdefault(event["id"], event) == event
        assert {e["data"]["message"]["id"] for e in events.values()} == messages, "no event is missing"
        assert len(receiver.accepted()) >= count


# -- 4. signatures -------------------------------------------------------------------------------------------------


def test_a_tampered_body_or_timestamp_or_a_wrong_secret_fails_verification(shared_server):
    with WebhookReceiver() as receiver, tenant_client(shared_server) as client:
        hook = create_webhook(client, receiver.url, ["message.sent"])
        other = create_webhook(client, receiver.url, ["message.cancelled"])
        send(client, unique("sig"))
        [delivery] = receiver.wait_for(1)
        verified(delivery, hook["secret"])
        signatures = delivery.headers["webhook-signature"].split(" ")
        assert len(signatures) == 1 and signatures[0].startswith("v1,"), delivery.headers

        def tampered(body: bytes | None = None, **headers: str) -> Delivery:
            return Delivery(delivery.path, delivery.headers | headers, delivery.body if body is None else body, 200)

        body = delivery.body
        changes = {
            "one byte of the body": tampered(body[:20] + bytes([body[20] ^ 0x01]) + body[21:]),
            "a byte appended": tampered(body + b" "),
            "the timestamp": tampered(**{"webhook-timestamp": str(int(delivery.headers["webhook-timestamp"]) + 1)}),
            "the webhook-id": tampered(**{"webhook-id": "evt_" + "0" * 26}),
        }
        for what, forged in changes.items():
            with pytest.raises(WebhookVerificationError):
                WebhookReceiver.verify(forged, hook["secret"])
                pytest.fail(f"changing {what} must break the signature")
        for secret in (random_secret(), other["secret"]):
            with pytest.raises(WebhookVerificationError):
                WebhookReceiver.verify(delivery, secret)
        assert WebhookReceiver.verify(delivery, hook["secret"]) == delivery.payload, "the original still verifies"


# -- 5. URL rules --------------------------------------------------------------------------------------------------


def test_http_and_private_hosts_are_refused_by_default(start_server):
    server = start_server()  # neither EMAILMCP_WEBHOOK_ALLOW_HTTP nor EMAILMCP_WEBHOOK_ALLOW_PRIVATE_HOSTS
    with tenant_client(server) as client:
        events = ["message.sent"]
        error = assert_error(
            client.post("/v1/webhooks", json={"url": "http://1.1.1.1/hooks", "events": events}),
            422,
            "url_not_allowed",
        )
        assert error["message"].startswith("url: ") and "https" in error["message"], error
        assert [d["field"] for d in error["details"]] == ["url"], error
        for url in (
            "https://127.0.0.1/hooks",
            "https://localhost/hooks",
            "https://10.0.0.1/hooks",
            "https://[::1]/hooks",
            "https://169.254.169.254/latest/meta-data",
            "https://192.168.1.1/",
            "https://127.0.0.1:8443/",
        ):
            error = assert_error(client.post("/v1/webhooks", json={"url": url, "events": events}), 422, None)
            assert error["code"] == "host_not_allowed", (url, error)
            assert error["message"].startswith("url: ") and [d["field"] for d in error["details"]] == ["url"], error
        response = client.get("/v1/webhooks")
        assert response.status_code == 200 and response.json() == {"webhooks": []}, response.text

        # A public address is accepted, and cannot be changed into a refused one.
        hook = create_webhook(client, "https://1.1.1.1/hooks", events)
        for url, code in (("https://localhost/hooks", "host_not_allowed"), ("http://1.1.1.1/", "url_not_allowed")):
            assert_error(client.patch(f"/v1/webhooks/{hook['id']}", json={"url": url}), 422, code)
        assert get_webhook(client, hook["id"])["url"] == "https://1.1.1.1/hooks"
        assert [w["id"] for w in client.get("/v1/webhooks").json()["webhooks"]] == [hook["id"]]


def test_the_url_is_checked_again_before_each_delivery(start_server):
    server = start_server(**WEBHOOK_ENV)
    key = server.create_key(unique("t"), "mail", "admin")
    with WebhookReceiver() as receiver:
        with server.client(key) as client:
            hook = create_webhook(client, receiver.url, ["message.sent"])
        # The operator stops allowing private hosts; the webhook saved before stays in the database.
        server.stop()
        del server.env["EMAILMCP_WEBHOOK_ALLOW_PRIVATE_HOSTS"]
        server.start()
        with server.client(key) as client:
            send(client, unique("recheck"))
            [delivery] = wait_for_deliveries(
                client, hook["id"], 1, lambda d: d["attempts"] >= 2, what="two attempts at the refused URL"
            )
            assert delivery["status"] in ("pending", "sending", "failed"), delivery
            assert "not a public address" in delivery["last_error"], delivery
            assert all(a["status_code"] is None for a in delivery["attempt_log"]), delivery
        assert receiver.deliveries == [], "a URL refused by the current rules must not be called"


# -- 6. which answers are retried ----------------------------------------------------------------------------------


def test_4xx_and_3xx_fail_at_once_but_429_is_retried(shared_server):
    throttled = Switch(429)
    with (
        WebhookReceiver(410) as gone,
        WebhookReceiver(302) as redirecting,
        WebhookReceiver(throttled) as throttling,
        tenant_client(shared_server) as client,
    ):
        hooks = {
            name: create_webhook(client, receiver.url, ["message.sent"])
            for name, receiver in (("gone", gone), ("redirecting", redirecting), ("throttling", throttling))
        }
        send(client, unique("answers"))
        throttling.wait_for(2, accepted_only=False)
        throttled.status = 200
        [retried] = wait_for_deliveries(client, hooks["throttling"]["id"], 1, lambda d: d["status"] == "succeeded")
        assert [a["status_code"] for a in retried["attempt_log"]][-1] == 200, retried
        assert set(a["status_code"] for a in retried["attempt_log"][:-1]) == {429}, retried
        assert "429" in retried["attempt_log"][0]["error"], retried

        for name, status, hint in (("gone", 410, "only 408, 429 and 5xx"), ("redirecting", 302, "redirects")):
            [delivery] = wait_for_deliveries(client, hooks[name]["id"], 1, lambda d: d["status"] != "sending")
            assert delivery["status"] == "failed", delivery
            assert delivery["attempts"] == 1 and len(delivery["attempt_log"]) == 1, delivery
            assert delivery["last_status_code"] == status and str(status) in delivery["last_error"], delivery
            assert hint in delivery["last_error"], delivery
            assert delivery["next_attempt_at"] is None and delivery["delivered_at"] is None, delivery
            assert [d["id"] for d in deliveries_of(client, hooks[name]["id"], status="failed")] == [delivery["id"]]
        # The 429 receiver was retried meanwhile; the others were called once.
        assert len(gone.deliveries) == 1 and len(redirecting.deliveries) == 1
        assert [d.answered for d in gone.deliveries] == [410]


# -- 7. disabling a failing endpoint --------------------------------------------------------------------------------


def test_an_endpoint_failing_too_long_is_disabled_and_resumes_when_enabled(start_server):
    server = start_server(
        **WEBHOOK_ENV, EMAILMCP_WEBHOOK_DISABLE_AFTER_SECONDS="2", EMAILMCP_WEBHOOK_RETRY_WINDOW_SECONDS="600"
    )
    switch = Switch(503)
    with WebhookReceiver(switch) as receiver, tenant_client(server) as client:
        hook = create_webhook(client, receiver.url, ["message.sent"])
        user = unique("disable")

        # The first failure asks for a minute's pause (Retry-After), which the server honours.
        receiver.reply_headers = {"retry-after": "60"}
        first = send(client, user)
        receiver.wait_for(1, accepted_only=False)
        failing = wait_until(
            lambda: (w := get_webhook(client, hook["id"]))["failing_since"] and w, 10, "failing_since to be set"
        )
        assert failing["enabled"] is True and failing["disabled_reason"] is None, failing
        failing_since = parse_time(failing["failing_since"])
        wait_until(lambda: datetime.now(UTC) > failing_since + timedelta(seconds=2.2), 10, "2 s of failure", 0.05)

        # The next failure, more than 2 s after the first with no success between, disables the endpoint.
        receiver.reply_headers = {}
        second = send(client, user)
        disabled = wait_until(
            lambda: (w := get_webhook(client, hook["id"]))["enabled"] is False and w, 10, "the webhook to be disabled"
        )
        reason = disabled["disabled_reason"]
        assert reason and reason.startswith("Disabled at "), disabled
        assert f"no delivery has succeeded since {failing['failing_since'][:19]}" in reason, (reason, failing)
        assert "Last error: the receiver answered 503" in reason, reason
        assert [d.payload["data"]["message"]["id"] for d in receiver.deliveries] == [first["id"], second["id"]], (
            "the first delivery must not be retried before its Retry-After"
        )

        # Its deliveries wait (they do not fail), and are not attempted even once due.
        waiting = {d["event_id"]: d for d in deliveries_of(client, hook["id"])}
        assert [d["status"] for d in waiting.values()] == ["pending", "pending"], waiting
        due = min(parse_time(d["next_attempt_at"]) for d in waiting.values())
        assert due < datetime.now(UTC) + timedelta(seconds=5), waiting  # the second one retries soon, 0.2 s base
        wait_until(lambda: datetime.now(UTC) > due + timedelta(seconds=1), 10, "a waiting delivery to be due", 0.05)
        assert len(receiver.deliveries) == 2, "a disabled endpoint must not be called"
        # Events while it is disabled are not kept for it.
        third = wait_for_status(client, send(client, user)["id"], "sent")
        assert {d["event_id"] for d in deliveries_of(client, hook["id"])} == set(waiting), "no delivery for it"
        assert get_webhook(client, hook["id"])["disabled_reason"] == reason

        # Enabled again: the reason goes, and every waiting delivery is sent at once, Retry-After or not.
        switch.status = 200
        response = client.patch(f"/v1/webhooks/{hook['id']}", json={"enabled": True})
        assert response.status_code == 200, response.text
        enabled = response.json()
        assert enabled["enabled"] is True and enabled["disabled_reason"] is None and enabled["failing_since"] is None
        accepted = receiver.wait_for(2, timeout=10)  # the first one would otherwise wait out its minute
        events = {verified(d, hook["secret"])["id"]: d.payload for d in accepted}
        assert set(events) == set(waiting), events
        assert {e["data"]["message"]["id"] for e in events.values()} == {first["id"], second["id"]}
        wait_for_deliveries(client, hook["id"], 2, lambda d: d["status"] == "succeeded")

        fourth = send(client, user)
        latest = receiver.wait_for(3)[-1]
        assert verified(latest, hook["secret"])["data"]["message"]["id"] == fourth["id"]
        assert third["id"] not in {d.payload["data"]["message"]["id"] for d in receiver.deliveries}
        webhook = get_webhook(client, hook["id"])
        assert webhook["enabled"] is True and webhook["disabled_reason"] is None, webhook
        assert webhook["failing_since"] is None, webhook


# -- 8. secret rotation --------------------------------------------------------------------------------------------


def test_failures_hours_apart_are_not_a_day_of_failing(start_server):
    """A webhook is disabled after failing for a day, not for two failures a day apart: a failure after a quiet gap
    longer than the retries' longest pause starts a new failing streak."""
    server = start_server(**WEBHOOK_ENV)
    database = server.data_dir / "emailmcp.db"

    def backdate(webhook_id: str, failing_since: timedelta, last_failure: timedelta) -> None:
        now = datetime.now(UTC).replace(tzinfo=None)
        with closing(sqlite3.connect(database)) as db, db:
            db.execute(
                "UPDATE webhook_endpoints SET failing_since = ?, last_failure_at = ? WHERE id = ?",
                ((now - failing_since).isoformat(" "), (now - last_failure).isoformat(" "), webhook_id),
            )

    with WebhookReceiver(answer=400) as receiver, tenant_client(server) as client:
        hook = create_webhook(client, receiver.url, ["message.sent"])
        user = unique("streak")

        def fail_once() -> dict:
            count = len(receiver.deliveries)
            send(client, user)
            receiver.wait_for(count + 1, accepted_only=False)
            return wait_until(
                lambda: (
                    all(d["status"] == "failed" for d in deliveries_of(client, hook["id"]))
                    and get_webhook(client, hook["id"])
                ),
                10,
                "the failure to be recorded",
            )

        assert fail_once()["failing_since"]
        # The last failure was 4 hours ago, the first 30: it was not failing meanwhile.
        backdate(hook["id"], failing_since=timedelta(hours=30), last_failure=timedelta(hours=4))
        webhook = fail_once()
        assert webhook["enabled"] is True, webhook
        assert datetime.now(UTC) - parse_time(webhook["failing_since"]) < timedelta(minutes=1), webhook
        # Failing for 30 hours with no long gap: disabled.
        backdate(hook["id"], failing_since=timedelta(hours=30), last_failure=timedelta(hours=1))
        webhook = fail_once()
        assert webhook["enabled"] is False and "no delivery has succeeded since" in webhook["disabled_reason"]


def test_backoff_stays_within_its_cap_whatever_the_attempt_or_the_answer():
    cap = timedelta(hours=2)
    for attempt in (1, 46, 10_000):
        assert timedelta(0) < backoff(5, attempt, None, cap) <= cap
    for asked in (float("inf"), float("nan"), 1e30, -5.0):
        assert timedelta(0) < backoff(5, 1, asked, cap) <= cap
    assert backoff(5, 1, 60.0, cap) >= timedelta(seconds=60)


def test_after_rotation_deliveries_verify_with_the_new_and_the_old_secret(shared_server):
    with WebhookReceiver() as receiver, tenant_client(shared_server) as client:
        hook = create_webhook(client, receiver.url, ["message.sent"])
        assert hook["previous_secret_expires_at"] is None
        user = unique("rotate")
        send(client, user)
        [before] = receiver.wait_for(1)
        verified(before, hook["secret"])

        response = client.post(f"/v1/webhooks/{hook['id']}/rotate-secret")
        assert response.status_code == 200, response.text
        rotated = response.json()
        new_secret, old_secret = rotated["secret"], hook["secret"]
        assert new_secret.startswith("whsec_") and new_secret != old_secret, rotated
        expires = parse_time(rotated["previous_secret_expires_at"])
        assert abs(expires - (datetime.now(UTC) + timedelta(hours=24))) < timedelta(minutes=2), rotated
        shown = get_webhook(client, hook["id"])
        assert parse_time(shown["previous_secret_expires_at"]) == expires, shown
        listing = client.get("/v1/webhooks").text
        assert new_secret not in listing and old_secret not in listing

        send(client, user)
        after = receiver.wait_for(2)[-1]
        assert verified(after, new_secret) == verified(after, old_secret)
        with pytest.raises(WebhookVerificationError):
            WebhookReceiver.verify(after, random_secret())
        # Two signatures, one per secret: a receiver still on the old secret and one on the new both verify.
        signatures = after.headers["webhook-signature"].split(" ")
        assert len(signatures) == 2, after.headers
        matches = []
        for signature in signatures:
            alone = Delivery(after.path, after.headers | {"webhook-signature": signature}, after.body, 200)
            matches.append([_verifies(alone, secret) for secret in (new_secret, old_secret)])
        assert sorted(matches) == [[False, True], [True, False]], matches


def _verifies(delivery: Delivery, secret: str) -> bool:
    try:
        WebhookReceiver.verify(delivery, secret)
    except WebhookVerificationError:
        return False
    return True


# -- 9. manual retry -----------------------------------------------------------------------------------------------


def test_retrying_a_failed_delivery_sends_the_same_event_again(shared_server):
    switch = Switch(400)
    with WebhookReceiver(switch) as receiver, tenant_client(shared_server) as client:
        hook = create_webhook(client, receiver.url, ["message.sent"])
        send(client, unique("manual"))
        [failed] = wait_for_deliveries(client, hook["id"], 1, lambda d: d["status"] == "failed")
        assert failed["attempts"] == 1 and failed["last_status_code"] == 400, failed

        with tenant_client(shared_server) as stranger:  # another tenant cannot retry it, nor learn it exists
            assert_error(stranger.post(f"/v1/webhooks/deliveries/{failed['id']}/retry"), 404, "delivery_not_found")
        assert_error(client.post("/v1/webhooks/deliveries/whd_doesnotexist/retry"), 404, "delivery_not_found")

        switch.status = 200
        response = client.post(f"/v1/webhooks/deliveries/{failed['id']}/retry")
        assert response.status_code == 200, response.text
        retrying = response.json()
        assert retrying["id"] == failed["id"] and retrying["status"] in ("pending", "sending", "succeeded"), retrying
        [delivery] = wait_for_deliveries(client, hook["id"], 1, lambda d: d["status"] == "succeeded")
        assert delivery["attempts"] == 2, delivery
        assert [a["status_code"] for a in delivery["attempt_log"]] == [400, 200], delivery

        first, second = receiver.wait_for(2, accepted_only=False)
        assert (first.answered, second.answered) == (400, 200)
        assert first.webhook_id == second.webhook_id == failed["event_id"], "a retry keeps the webhook-id"
        assert first.body == second.body
        assert verified(second, hook["secret"])["id"] == failed["event_id"]


# -- 10. giving up -------------------------------------------------------------------------------------------------


def test_a_delivery_gives_up_when_its_retry_window_ends(start_server):
    server = start_server(**WEBHOOK_ENV, EMAILMCP_WEBHOOK_RETRY_WINDOW_SECONDS="3")
    receiver = WebhookReceiver()  # never listening
    with tenant_client(server) as client:
        hook = create_webhook(client, receiver.url, ["message.sent"])
        send(client, unique("giveup"))
        [delivery] = wait_for_deliveries(client, hook["id"], 1, lambda d: d["status"] == "failed", timeout=20)
        attempts = delivery["attempts"]
        assert attempts >= 2 and len(delivery["attempt_log"]) == attempts, delivery
        assert delivery["last_error"].startswith(f"gave up after {attempts} attempts: could not connect"), delivery
        assert delivery["next_attempt_at"] is None and delivery["delivered_at"] is None, delivery
        assert all(a["status_code"] is None and "could not connect" in a["error"] for a in delivery["attempt_log"])
        last_attempt = parse_time(delivery["attempt_log"][-1]["started_at"])
        created = parse_time(delivery["created_at"])
        assert timedelta(seconds=2) <= last_attempt - created < timedelta(seconds=8), delivery


# -- a receiver that answers byte by byte ----------------------------------------------------------------------------


class ByteByByteReceiver:
    """A raw HTTP server on loopback answering every POST one byte at a time, `interval` seconds apart: each read the
    client makes gets data well within its timeout, yet the whole answer takes len(ANSWER) * interval seconds.
    `requests` holds, for each POST, its webhook-id and when it was opened and when the client let go of it."""

    ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.requests: list[dict] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/hooks"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> "ByteByByteReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            headers = dict(line.decode().lower().split(": ", 1) for line in head.split(b"\r\n")[1:])
            while len(body) < int(headers.get("content-length", 0)):
                body += conn.recv(65536)
            request = {"webhook_id": headers["webhook-id"], "opened": time.monotonic(), "closed": None}
            self.requests.append(request)
            for byte in self.ANSWER:
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    break
                if self._stop.is_set() or self._closed_within(conn, self.interval):
                    break
            request["closed"] = time.monotonic()

    @staticmethod
    def _closed_within(conn: socket.socket, seconds: float) -> bool:
        """Waits up to `seconds`; True as soon as the client closes the connection (noticed within milliseconds)."""
        if not select.select([conn], [], [], seconds)[0]:
            return False
        try:
            return conn.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


def test_a_receiver_answering_byte_by_byte_cannot_hold_an_attempt_past_the_timeout(start_server):
    """EMAILMCP_WEBHOOK_TIMEOUT_SECONDS bounds an attempt, and the lease (3 x the timeout at least) is sized on it: an
    attempt must not outlive its lease, or the event is POSTed again while the first request is still open, and a
    receiver that trickles its answer ties up dispatcher slots (shared by every tenant) far beyond the timeout."""
    timeout = 1.0
    server = start_server(
        **WEBHOOK_ENV, EMAILMCP_WEBHOOK_TIMEOUT_SECONDS=str(timeout), EMAILMCP_WORKER_LEASE_SECONDS="5"
    )
    with ByteByByteReceiver(interval=0.3) as receiver, tenant_client(server) as client:
        create_webhook(client, receiver.url, ["message.sent"])
        send(client, unique("trickle"))
        wait_until(lambda: receiver.requests, 10, "the first request")

        def overlapping() -> list[dict]:
            first = receiver.requests[0]
            return [r for r in receiver.requests[1:] if first["closed"] is None or r["opened"] < first["closed"]]

        deadline = time.monotonic() + 7  # past the 5 s lease
        while time.monotonic() < deadline and receiver.requests[0]["closed"] is None and not overlapping():
            time.sleep(0.05)
        first = receiver.requests[0]
        held = (first["closed"] or time.monotonic()) - first["opened"]
        again = overlapping()
        assert held < timeout + 2 and not again, (
            f"with EMAILMCP_WEBHOOK_TIMEOUT_SECONDS={timeout:g}, an attempt at a receiver answering one byte every "
            f"0.3 s was held open {held:.1f} s, and the same event ({first['webhook_id']}) was POSTed {len(again)} "
            "more time(s) while it was still open: the timeout must bound the whole attempt, not each read "
            "(webhooks/dispatcher.py, _attempt), or the attempt outlives its lease"
        )


def test_a_delivery_goes_to_the_checked_address_with_its_name_kept_for_tls_and_host(tmp_path):
    """Against DNS rebinding, a delivery connects to the address its host was checked to have, not to a second
    lookup; the name stays in the Host header and in TLS, where the certificate is verified against it."""
    cert_file, key_file = certificate(("hooks.test",))  # the name only, no IP address
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_file, key_file)
    client_tls = ssl.create_default_context(cafile=str(cert_file))
    with WebhookReceiver(tls=server_tls) as receiver:
        url = f"https://hooks.test:{receiver.port}/hooks"  # a name no resolver knows
        headers: dict[str, str] = {}
        target, extensions = pinned(url, "127.0.0.1", headers)
        assert str(target) == f"https://127.0.0.1:{receiver.port}/hooks"
        with httpx2.Client(verify=client_tls) as client:
            response = client.post(target, content=b"{}", headers=headers, extensions=extensions)
            assert response.status_code == 200
            [delivery] = receiver.wait_for(1)
            assert delivery.headers["host"] == f"hooks.test:{receiver.port}"
        # The certificate names hooks.test only: without the name kept for TLS, verification fails.
        with httpx2.Client(verify=client_tls) as client, pytest.raises(httpx2.ConnectError):
            client.post(target, content=b"{}", headers=headers)
    assert pinned(url, None, {}) == (httpx2.URL(url), {})  # private hosts allowed: the name as it is
