"""End-to-end delivery: real `emailmcp serve` / `emailmcp worker` processes sending to a real SMTP server.

Every test here goes over real sockets: the API over HTTP, delivery over SMTP to tests/peers/smtp.py's SmtpSink
on 127.0.0.1. The fault tests take the SMTP server down, make it refuse recipients, remove a user's mailbox while
mail is queued, SIGKILL and SIGTERM workers mid-drain, and run two workers against one PostgreSQL outbox.
"""

import asyncio
import base64
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import Server, assert_error, unique, wait_until
from peers.smtp import SmtpSink, certificate

# What every server here needs: the sink is on loopback, and retries must come quickly.
SMTP_ENV = {
    "EMAILMCP_SMTP_ALLOW_PRIVATE_HOSTS": "true",
    "EMAILMCP_RETRY_BASE_SECONDS": "0.2",
    "EMAILMCP_WORKER_POLL_SECONDS": "0.2",
}
# The bulk tests send hundreds of messages from one user.
BULK_ENV = SMTP_ENV | {"EMAILMCP_DAILY_SEND_CAP": "100000"}

SMTP_USER, SMTP_PASSWORD = "zoe@example.com", "correct-Horse-8attery"
WRONG_PASSWORD = "wrong-Pa55word-never-shown"


# -- helpers -------------------------------------------------------------------------------------------------------


def get_message(client, message_id: str) -> dict:
    response = client.get(f"/v1/messages/{message_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_status(client, message_id: str, *statuses: str, timeout: float = 20) -> dict:
    last: dict = {}

    def reached() -> dict | None:
        nonlocal last
        last = get_message(client, message_id)
        return last if last["status"] in statuses else None

    try:
        return wait_until(reached, timeout, f"message {message_id} to be {'/'.join(statuses)}", 0.1)  # type: ignore[return-value]
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {last}") from None


def connect_mailbox(client, user_id: str, sink: SmtpSink, from_address: str, **smtp: object) -> dict:
    body = {"type": "smtp", "host": "127.0.0.1", "port": sink.port, "security": "none", "from_address": from_address}
    response = client.put(f"/v1/users/{user_id}/mailbox", json=body | smtp)
    assert response.status_code == 200, response.text
    mailbox = response.json()
    assert mailbox["status"] == "connected" and mailbox["type"] == "smtp"
    return mailbox


def send(client, user_id: str, **content: object) -> dict:
    response = client.post(f"/v1/users/{user_id}/messages", json={"to": ["ada@example.com"]} | content)
    assert response.status_code == 202, response.text
    return response.json()


def send_many(server: Server, key: str, user_id: str, count: int, threads: int = 8) -> dict[str, dict]:
    """Queues `count` messages with distinct subjects; returns them by their Message-ID header."""

    def batch(numbers: range) -> list[dict]:
        with server.client(key) as client:
            return [send(client, user_id, subject=f"bulk {n}", body=f"message number {n}") for n in numbers]

    with ThreadPoolExecutor(threads) as pool:
        chunks = pool.map(batch, [range(start, count, threads) for start in range(threads)])
        messages = [message for chunk in chunks for message in chunk]
    by_message_id = {message["message_id"]: message for message in messages}
    assert len(by_message_id) == count, "Message-IDs must be unique"
    return by_message_id


def all_messages(client, **params: str) -> list[dict]:
    messages, cursor = [], None
    while True:
        response = client.get("/v1/messages", params=params | {"limit": 200} | ({"cursor": cursor} if cursor else {}))
        assert response.status_code == 200, response.text
        page = response.json()
        messages += page["messages"]
        cursor = page["next_cursor"]
        if not cursor:
            return messages


def pending_count(client, user_id: str) -> int:
    return len(all_messages(client, user_id=user_id, status="pending"))


def arrivals_by_message_id(sink: SmtpSink) -> Counter:
    return Counter(received.message["Message-ID"] for received in list(sink.messages))


def attempts_of(message: dict) -> list[tuple[str, str]]:
    return [(attempt["outcome"], attempt["transport"]) for attempt in message["attempt_history"]]


def socket_owner(local_port: int, remote_port: int, pids: list[int]) -> int | None:
    """Linux: which of `pids` holds the loopback TCP socket 127.0.0.1:local_port -> 127.0.0.1:remote_port."""
    local, remote = f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}"
    try:
        with open("/proc/net/tcp") as table:
            rows = [line.split() for line in table.readlines()[1:]]
    except OSError:
        return None
    sockets = {f"socket:[{row[9]}]" for row in rows if row[1] == local and row[2] == remote and row[9] != "0"}
    for pid in pids:
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in descriptors:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in sockets:
                    return pid
            except OSError:
                continue
    return None


class AttributingSink(SmtpSink):
    """Also records, for each accepted message, which of `client_pids` sent it (while the connection is open)."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.client_pids: list[int] = []
        self.sent_by: list[int | None] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        owner = socket_owner(session.peer[1], self.port, self.client_pids)
        reply = await super().handle_DATA(server, session, envelope)
        if reply.startswith("250"):
            self.sent_by.append(owner)
        return reply


class SlowReplySink(SmtpSink):
    """Keeps each message at once but answers DATA only `delay` seconds later: for that long a send is in flight
    although the server already has the message, the window in which an interrupted worker makes a duplicate."""

    def __init__(self, delay: float, **options) -> None:
        super().__init__(**options)
        self.delay = delay

    async def handle_DATA(self, server, session, envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        await asyncio.sleep(self.delay)
        return reply


# -- a shared server delivering through users' own SMTP mailboxes -------------------------------------------------


@pytest.fixture(scope="module")
def smtp_server(start_module_server) -> Server:
    """SQLite, embedded worker. SSL_CERT_FILE makes OpenSSL (and so the SMTP transport's default TLS context)
    trust the test sinks' self-signed certificate: the product has no setting of its own for a custom CA."""
    return start_module_server(SSL_CERT_FILE=certificate()[0], **SMTP_ENV)


@pytest.fixture
def client(smtp_server) -> Iterator:
    with smtp_server.client(smtp_server.bootstrap_key) as client:
        yield client


def test_text_mail_through_the_users_mailbox(client):
    user = unique("zoe")
    display_name = "Zoë Ölmez-Łukasz 東京"
    created = client.post("/v1/users", json={"user_id": user, "display_name": display_name})
    assert created.status_code == 201, created.text
    with SmtpSink() as sink:
        connect_mailbox(client, user, sink, "zoe@example.com")
        queued = send(
            client,
            user,
            to=["ada@example.com"],
            cc=["bob@example.com"],
            bcc=["eve@example.com"],
            reply_to="replies@example.com",
            subject="Grüße — 東京 ✓",
            body="Ünïcödé body ✓\nsecond line",
            in_reply_to="<orig@example.com>",
            references=["<root@example.com>", "<orig@example.com>"],
        )
        assert queued["status"] == "queued"
        assert queued["transport"] == "smtp"
        assert queued["from_address"] == "zoe@example.com"

        sent = wait_for_status(client, queued["id"], "sent", "failed")
        assert sent["status"] == "sent", sent
        assert sent["sent_at"] and sent["error"] is None and sent["refused_recipients"] is None
        assert sent["attempts"] == 1
        assert attempts_of(sent) == [("sent", "smtp")]
        assert "OK: queued" in sent["attempt_history"][0]["detail"]  # the SMTP server's final reply

        [received] = sink.wait_for(1)
        # The envelope: from the mailbox's address, to every recipient, Bcc included.
        assert received.sender == "zoe@example.com"
        assert received.recipients == ["ada@example.com", "bob@example.com", "eve@example.com"]
        msg = received.message
        [sender] = msg["From"].addresses
        assert (sender.display_name, sender.addr_spec) == (display_name, "zoe@example.com")
        assert msg["To"] == "ada@example.com"
        assert msg["Cc"] == "bob@example.com"
        assert msg["Reply-To"] == "replies@example.com"
        assert "Bcc" not in msg and b"eve@example.com" not in received.raw
        assert msg["Subject"] == "Grüße — 東京 ✓"
        assert msg["Message-ID"] == queued["message_id"]
        assert msg["In-Reply-To"] == "<orig@example.com>"
        assert msg["References"] == "<root@example.com> <orig@example.com>"
        assert msg.get_content_type() == "text/plain"
        assert msg.get_content().replace("\r\n", "\n").strip() == "Ünïcödé body ✓\nsecond line"
        assert received.raw.isascii()  # 7-bit clean: goes through servers without 8BITMIME


def test_html_mail_with_attachments_through_the_users_mailbox(client):
    user = unique("html")
    pdf = b"%PDF-1.7\n" + bytes(range(256)) * 8
    notes = "Prüfbericht: alles grün ✓\n".encode()
    with SmtpSink() as sink:
        connect_mailbox(client, user, sink, "reports@example.com")
        queued = send(
            client,
            user,
            subject="Monthly report",
            body_type="html",
            body="<h1>Report</h1><p>See <b>attached</b> files.</p><p><a href='https://example.com/r'>online</a></p>",
            attachments=[
                {
                    "filename": "report.pdf",
                    "content_type": "application/pdf",
                    "content_base64": base64.b64encode(pdf).decode(),
                },
                {
                    "filename": "résumé notes.txt",
                    "content_type": "text/plain",
                    "content_base64": base64.b64encode(notes).decode(),
                },
            ],
        )
        sent = wait_for_status(client, queued["id"], "sent", "failed")
        assert sent["status"] == "sent", sent
        assert attempts_of(sent) == [("sent", "smtp")]

        [received] = sink.wait_for(1)
        msg = received.message
        assert msg["From"].addresses[0].addr_spec == "reports@example.com"
        assert msg["Message-ID"] == queued["message_id"]
        assert msg.get_content_type() == "multipart/mixed"
        body, *attachments = msg.iter_parts()
        assert body.get_content_type() == "multipart/alternative"
        assert [part.get_content_type() for part in body.iter_parts()] == ["text/plain", "text/html"]
        plain = body.get_body(("plain",)).get_content()
        assert "Report" in plain and "See attached files." in plain and "<b>" not in plain
        assert "online (https://example.com/r)" in plain
        assert "See <b>attached</b> files." in body.get_body(("html",)).get_content()
        assert [(a.get_filename(), a.get_content_type()) for a in attachments] == [
            ("report.pdf", "application/pdf"),
            ("résumé notes.txt", "text/plain"),
        ]
        assert attachments[0].get_content() == pdf
        assert attachments[1].get_payload(decode=True) == notes


def test_starttls_and_auth_and_a_wrong_password(smtp_server, client):
    good, bad = unique("tls-good"), unique("tls-bad")
    responses: list[str] = []
    with SmtpSink(require_starttls=True, require_auth=(SMTP_USER, SMTP_PASSWORD)) as sink:
        for user, password in ((good, SMTP_PASSWORD), (bad, WRONG_PASSWORD)):
            mailbox = connect_mailbox(
                client, user, sink, SMTP_USER, security="starttls", username=SMTP_USER, password=password
            )
            assert mailbox["smtp"]["password_set"] is True and mailbox["smtp"]["security"] == "starttls"
            responses.append(str(mailbox))

        ok = send(client, good, subject="over TLS", body="secret plans")
        sent = wait_for_status(client, ok["id"], "sent", "failed", timeout=15)
        assert sent["status"] == "sent", f"STARTTLS to a CA trusted via SSL_CERT_FILE failed: {sent}"
        [received] = sink.wait_for(1)
        assert received.tls, "the session must have been upgraded with STARTTLS"
        assert received.login == SMTP_USER
        assert received.message["Message-ID"] == ok["message_id"]

        refused = send(client, bad, subject="never arrives")
        failed = wait_for_status(client, refused["id"], "sent", "failed", timeout=15)
        assert failed["status"] == "failed", failed
        assert failed["error"].startswith("535 "), failed["error"]
        assert "Authentication credentials invalid" in failed["error"]  # the server's own text
        assert attempts_of(failed) == [("permanent_failure", "smtp")]
        time.sleep(1)  # retries would come within 0.3s with EMAILMCP_RETRY_BASE_SECONDS=0.2
        again = get_message(client, refused["id"])
        assert again["status"] == "failed" and again["attempts"] == 1 and len(again["attempt_history"]) == 1
        assert len(sink.messages) == 1

        for user in (good, bad):
            for path in (f"/v1/users/{user}/mailbox", f"/v1/users/{user}/profile"):
                responses.append(client.get(path).text)
        responses += [client.get(f"/v1/messages/{ok['id']}").text, client.get(f"/v1/messages/{refused['id']}").text]
        responses.append(client.get("/v1/messages", params={"limit": 200}).text)
        responses.append(client.get("/v1/users", params={"limit": 200}).text)
    for text in responses:
        assert SMTP_PASSWORD not in text and WRONG_PASSWORD not in text, text
    log = smtp_server.log_text()
    assert SMTP_PASSWORD not in log and WRONG_PASSWORD not in log, "a mailbox password reached the server log"


def test_one_refused_recipient_and_an_all_refused_message(client):
    user = unique("refuse")
    reply = (550, "5.1.1 <nobody@example.com>: Recipient address rejected: no such user")
    with SmtpSink(reject={"nobody@example.com": reply}) as sink:
        connect_mailbox(client, user, sink, "sender@example.com")
        partial = send(client, user, to=["nobody@example.com", "bob@example.com"], subject="partial")
        alone = send(client, user, to=["nobody@example.com"], subject="alone")

        sent = wait_for_status(client, partial["id"], "sent", "failed")
        assert sent["status"] == "sent", sent
        assert sent["refused_recipients"] == {"nobody@example.com": "550 " + reply[1]}
        assert attempts_of(sent) == [("sent", "smtp")]
        assert "nobody@example.com" in sent["attempt_history"][0]["detail"]

        failed = wait_for_status(client, alone["id"], "sent", "failed")
        assert failed["status"] == "failed", failed
        assert "550 " + reply[1] in failed["error"]
        assert attempts_of(failed) == [("permanent_failure", "smtp")]

        time.sleep(1)  # no retry follows either of them
        for message_id in (partial["id"], alone["id"]):
            message = get_message(client, message_id)
            assert message["attempts"] == 1 and len(message["attempt_history"]) == 1, message
        [received] = sink.wait_for(1)
        time.sleep(0.2)
        assert len(sink.messages) == 1
        assert received.recipients == ["bob@example.com"]
        assert received.message["Message-ID"] == partial["message_id"]


def test_messages_wait_out_an_smtp_outage_and_are_delivered_once(client):
    user = unique("outage")
    with SmtpSink() as sink:
        connect_mailbox(client, user, sink, "patient@example.com")
        sink.stop()
        queued = [send(client, user, subject=f"during outage {n}", body=str(n)) for n in range(10)]

        def all_failed_once() -> list[dict] | None:
            messages = [get_message(client, m["id"]) for m in queued]
            done = all(any(a["outcome"] == "transient_failure" for a in m["attempt_history"]) for m in messages)
            return messages if done else None

        during = wait_until(all_failed_once, 10, "a transient failure of every message", 0.1)
        for message in during:  # type: ignore[union-attr]
            assert message["status"] in ("queued", "sending"), message
            if message["status"] == "queued":  # waiting for its retry, and saying why
                assert "Error connecting to 127.0.0.1" in message["error"], message["error"]
            first = message["attempt_history"][0]
            assert (first["outcome"], first["transport"]) == ("transient_failure", "smtp")
            assert f"Error connecting to 127.0.0.1 on port {sink.port}" in first["detail"], first["detail"]
        assert sink.messages == []

        sink.start()  # the same port again
        delivered = [wait_for_status(client, m["id"], "sent", "failed", timeout=30) for m in queued]
        for message in delivered:
            assert message["status"] == "sent", message
            outcomes = [a["outcome"] for a in message["attempt_history"]]
            assert len(outcomes) >= 2 and outcomes[-1] == "sent", outcomes
            assert set(outcomes[:-1]) == {"transient_failure"}, outcomes
            assert [a["number"] for a in message["attempt_history"]] == list(range(1, len(outcomes) + 1))
            assert message["attempts"] == len(outcomes)
        sink.wait_for(10)
        time.sleep(0.3)
        assert arrivals_by_message_id(sink) == Counter({m["message_id"]: 1 for m in queued})


def test_a_temporary_smtp_refusal_is_retried_until_accepted(client):
    user = unique("busy")
    with SmtpSink() as sink:
        connect_mailbox(client, user, sink, "busy@example.com")
        sink.fail_next(2, 451, "4.3.0 Mailbox busy, try again later")
        queued = send(client, user, subject="second time lucky")
        sent = wait_for_status(client, queued["id"], "sent", "failed")
        assert sent["status"] == "sent", sent
        assert [a["outcome"] for a in sent["attempt_history"]] == ["transient_failure", "transient_failure", "sent"]
        assert sent["attempt_history"][0]["detail"] == "451 4.3.0 Mailbox busy, try again later"
        assert sent["error"] is None
        [received] = sink.wait_for(1)
        assert received.message["Message-ID"] == queued["message_id"]


def test_removing_the_mailbox_fails_queued_mail_instead_of_sending_it_another_way(client):
    user = unique("removed")
    with SmtpSink() as sink:
        connect_mailbox(client, user, sink, "gone@example.com")
        sink.stop()
        queued = [send(client, user, subject=f"stranded {n}") for n in range(3)]
        wait_until(
            lambda: all(get_message(client, m["id"])["attempt_history"] for m in queued),
            10,
            "a first (failed) attempt of every message",
        )
        assert client.delete(f"/v1/users/{user}/mailbox").status_code == 204

        for queued_message in queued:
            message = wait_for_status(client, queued_message["id"], "sent", "failed")
            assert message["status"] == "failed", message
            assert message["error"] == "mailbox_not_connected"
            assert message["transport"] == "smtp"
            assert message["attempt_history"][-1]["outcome"] == "undeliverable"
            # The capture transport (this server's default) keeps a copy of what it takes; it took nothing.
            assert_error(client.get(f"/v1/messages/{queued_message['id']}/raw"), 404, "raw_not_available")

        sink.start()
        time.sleep(1.5)  # longer than any retry delay still due, had one been scheduled
        assert sink.messages == []
        for queued_message in queued:
            assert get_message(client, queued_message["id"])["status"] == "failed"


class DroppingSink(SmtpSink):
    """Hangs up, without a reply, on the next second transaction over one connection: a server that dropped a
    connection the client kept open for its next message."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.drops = 1

    async def handle_MAIL(self, server, session, envelope, address, mail_options) -> str:
        if self.drops and session.peer in {received.peer for received in self.messages}:
            self.drops -= 1
            server.transport.close()
        return await super().handle_MAIL(server, session, envelope, address, mail_options)


def test_messages_to_one_server_share_connections(client):
    user = unique("reuse")
    with SmtpSink() as sink:
        connect_mailbox(client, user, sink, "reuse@example.com")
        queued = [send(client, user, subject=f"shared {n}", body=str(n)) for n in range(30)]
        for message in queued:
            assert wait_for_status(client, message["id"], "sent", "failed")["status"] == "sent"
        received = sink.wait_for(30)
    assert Counter(r.message["Message-ID"] for r in received) == Counter(m["message_id"] for m in queued)
    per_connection = Counter(r.peer for r in received)
    # The embedded worker sends 8 at a time, each connection carrying one message at a time.
    assert len(per_connection) <= 8, per_connection
    assert max(per_connection.values()) >= 4, per_connection


def test_a_connection_dropped_between_messages_means_a_retry_with_the_same_message_id(client):
    user = unique("dropped")
    with DroppingSink() as sink:
        connect_mailbox(client, user, sink, "dropped@example.com")
        first = send(client, user, subject="first")
        assert wait_for_status(client, first["id"], "sent", "failed")["status"] == "sent"
        second = send(client, user, subject="second")  # goes over the connection the first one left open
        sent = wait_for_status(client, second["id"], "sent", "failed")
        assert sent["status"] == "sent", sent
        assert [a["outcome"] for a in sent["attempt_history"]] == ["transient_failure", "sent"]
        assert sent["attempts"] == 2
        received = sink.wait_for(2)
        time.sleep(0.3)
    assert [r.message["Message-ID"] for r in received] == [first["message_id"], second["message_id"]]
    assert len(sink.messages) == 2
    assert received[0].peer != received[1].peer, "the retry must come over a new connection"


# -- the operator's relay, and the private-host guard --------------------------------------------------------------


@pytest.fixture(scope="module")
def relay_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture(scope="module")
def relay_server(start_module_server, relay_sink) -> Server:
    """Relays users without a mailbox through the operator's SMTP server; private user hosts are NOT allowed."""
    return start_module_server(
        EMAILMCP_DEFAULT_TRANSPORT="smtp",
        EMAILMCP_SMTP_HOST="127.0.0.1",
        EMAILMCP_SMTP_PORT=str(relay_sink.port),
        EMAILMCP_SMTP_SECURITY="none",
        EMAILMCP_SMTP_FROM="relay@example.com",
        EMAILMCP_RETRY_BASE_SECONDS="0.2",
        EMAILMCP_WORKER_POLL_SECONDS="0.2",
    )


def test_a_private_mailbox_host_is_refused(relay_server, relay_sink):
    user = unique("private")
    with relay_server.client(relay_server.bootstrap_key) as client:
        for host in ("127.0.0.1", "localhost", "[::1]", "0.0.0.0", "169.254.169.254", "10.0.0.1"):
            response = client.put(
                f"/v1/users/{user}/mailbox",
                json={
                    "type": "smtp",
                    "host": host,
                    "port": relay_sink.port,
                    "security": "none",
                    "from_address": "x@example.com",
                },
            )
            error = assert_error(response, 422)
            assert [d["field"] for d in error["details"]] == ["host"], error
            assert "not a public address" in error["details"][0]["message"]
        # Nothing was stored: the user's mail still goes the operator's way.
        assert send(client, user)["transport"] == "smtp"
        assert client.get(f"/v1/users/{user}/mailbox").json()["type"] == "none"


def test_users_without_a_mailbox_go_through_the_operators_relay(relay_server, relay_sink):
    user = unique("relayed")
    with relay_server.client(relay_server.bootstrap_key) as client:
        queued = send(client, user, to=["ada@example.com"], bcc=["eve@example.com"], subject="via relay", body="hi")
        assert queued["transport"] == "smtp"
        assert queued["from_address"] == "relay@example.com"
        sent = wait_for_status(client, queued["id"], "sent", "failed")
        assert sent["status"] == "sent", sent
        assert attempts_of(sent) == [("sent", "smtp")]
        wait_until(
            lambda: any(r.message["Message-ID"] == queued["message_id"] for r in list(relay_sink.messages)),
            10,
            "the relayed message at the sink",
        )
    [received] = [r for r in relay_sink.messages if r.message["Message-ID"] == queued["message_id"]]
    assert received.sender == "relay@example.com"
    assert received.message["From"].addresses[0].addr_spec == "relay@example.com"
    assert received.recipients == ["ada@example.com", "eve@example.com"]
    assert "Bcc" not in received.message
    assert received.message.get_content().strip() == "hi"


# -- standalone workers: SIGKILL, two on PostgreSQL, SIGTERM -------------------------------------------------------


def _bulk_setup(server: Server, sink: SmtpSink, count: int) -> tuple[str, str, dict[str, dict]]:
    key = server.bootstrap_key
    user = unique("bulk")
    with server.client(key) as client:
        connect_mailbox(client, user, sink, "bulk@example.com")
    queued = send_many(server, key, user, count)
    time.sleep(0.5)
    assert sink.messages == [], "`serve --no-worker` must not deliver"
    with server.client(key) as client:
        assert {m["status"] for m in all_messages(client, user_id=user)} == {"queued"}
    return key, user, queued


def _assert_all_sent(server: Server, key: str, user: str, queued: dict[str, dict]) -> None:
    with server.client(key) as client:
        messages = all_messages(client, user_id=user)
    assert len(messages) == len(queued)
    not_sent = [m for m in messages if m["status"] != "sent"]
    assert not_sent == [], f"{len(not_sent)} not sent, e.g. {not_sent[:3]}"


def test_sigkilled_workers_lose_no_message(start_server, start_worker):
    count = 500
    with SmtpSink() as sink:
        server = start_server(args=("--no-worker",), EMAILMCP_WORKER_LEASE_SECONDS="5", **BULK_ENV)
        key, user, queued = _bulk_setup(server, sink, count)

        started = time.monotonic()
        kills = []
        for threshold in (100, 200, 300):
            worker = start_worker(server)
            wait_until(lambda n=threshold: len(sink.messages) >= n, 60, f"{threshold} arrivals", 0.005)
            assert worker.kill() == -signal.SIGKILL
            kills.append(len(sink.messages))
            assert kills[-1] < count, "the worker must be killed while it still has mail to send"
        final = start_worker(server)
        with server.client(key) as client:
            wait_until(lambda: pending_count(client, user) == 0, 60, "the outbox to drain", 0.25)
        drained = time.monotonic() - started
        time.sleep(0.5)  # a late duplicate would still show
        assert final.running(), final.log_text()

        _assert_all_sent(server, key, user, queued)
        arrivals = arrivals_by_message_id(sink)
        lost = set(queued) - set(arrivals)
        assert not lost, f"{len(lost)} of {count} messages never reached the SMTP server: {sorted(lost)[:5]}"
        assert set(arrivals) == set(queued), "every arrival must carry the Message-ID of a queued message"
        # A duplicate is the same message again (same Message-ID, same content), never a different one.
        for received in sink.messages:
            assert received.message["Subject"] == queued[received.message["Message-ID"]]["subject"]
        duplicates = {message_id: n for message_id, n in arrivals.items() if n > 1}
        with server.client(key) as client:
            for message_id in duplicates:  # the API shows it was attempted more than once, and how it ended
                message = get_message(client, queued[message_id]["id"])
                assert message["status"] == "sent" and message["attempts"] >= 2, message
                assert attempts_of(message)[-1] == ("sent", "smtp"), message
                if message_id == next(iter(duplicates)):
                    print(
                        f"\na duplicated message as the API shows it: attempts={message['attempts']}, "
                        f"history={[(a['number'], a['outcome']) for a in message['attempt_history']]}"
                    )
        print(
            f"\nSIGKILL drain: {count} messages, kills after {kills} arrivals, drained in {drained:.1f}s, "
            f"{sum(arrivals.values())} arrivals, {len(duplicates)} duplicated: {duplicates}"
        )
        final.process.send_signal(signal.SIGTERM)
        assert final.process.wait(10) == 0


@pytest.mark.postgres
def test_two_workers_on_postgresql_send_each_message_exactly_once(start_server, start_worker, make_database):
    count = 300
    database_url = make_database("postgresql")
    with AttributingSink() as sink:
        server = start_server(database_url, args=("--no-worker",), **BULK_ENV)
        key, user, queued = _bulk_setup(server, sink, count)
        workers = [start_worker(server), start_worker(server)]
        sink.client_pids = [worker.process.pid for worker in workers]
        started = time.monotonic()
        with server.client(key) as client:
            wait_until(lambda: pending_count(client, user) == 0, 60, "the outbox to drain", 0.25)
        drained = time.monotonic() - started
        time.sleep(0.5)
        for worker in workers:
            assert worker.running(), worker.log_text()

        _assert_all_sent(server, key, user, queued)
        arrivals = arrivals_by_message_id(sink)
        shares = Counter(sink.sent_by)
        print(
            f"\ntwo workers on PostgreSQL: {count} messages in {drained:.1f}s, {sum(arrivals.values())} arrivals, "
            f"by worker pid: {dict(shares)}"
        )
        assert set(arrivals) == set(queued)
        assert [m for m, n in arrivals.items() if n != 1] == []
        assert len(sink.messages) == count
        if os.path.exists("/proc/net/tcp"):  # both workers really drained the outbox together
            assert all(shares[worker.process.pid] > 0 for worker in workers), shares
        for worker in workers:
            worker.process.send_signal(signal.SIGTERM)
        assert [worker.process.wait(10) for worker in workers] == [0, 0]


class TakeoverSink(SmtpSink):
    """Answers a message's first copy only once a second copy arrived: the first sender's lease runs out while it
    waits, and another worker takes the message over and sends it again."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self._copied: dict[str, asyncio.Event] = {}  # by Message-ID, set when the second copy arrives

    async def handle_DATA(self, server, session, envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        message_id = self.messages[-1].message["Message-ID"]
        if message_id in self._copied:
            self._copied[message_id].set()
        else:
            copied = self._copied[message_id] = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(copied.wait(), 25)  # within the client's timeout
        return reply


def test_a_worker_that_lost_its_lease_records_nothing(start_server, start_worker):
    with TakeoverSink() as sink:
        server = start_server(args=("--no-worker",), EMAILMCP_WORKER_LEASE_SECONDS="5", **SMTP_ENV)
        key = server.bootstrap_key
        user = unique("takeover")
        with server.client(key) as client:
            connect_mailbox(client, user, sink, "takeover@example.com")
            queued = send(client, user, subject="taken over")
            first = start_worker(server)
            sink.wait_for(1, timeout=30)  # the first worker's copy, its reply held back
            second = start_worker(server)  # claims the message once the first worker's lease has expired
            sink.wait_for(2, timeout=30)
            sent = wait_for_status(client, queued["id"], "sent", "failed", timeout=30)
            wait_until(lambda: "lease_lost" in first.log_text(), 30, "the first worker to log lease_lost")
            time.sleep(0.5)
            message = get_message(client, queued["id"])
        assert sent["status"] == "sent", sent
        # Only the second worker's attempt is recorded; the first worker found its lease gone and wrote nothing.
        assert [(a["number"], a["outcome"]) for a in message["attempt_history"]] == [(2, "sent")], message
        assert message["attempts"] == 2 and message["status"] == "sent"
        assert queued["id"] in first.log_text()
        assert "lease_lost" not in second.log_text()
        assert arrivals_by_message_id(sink) == Counter({queued["message_id"]: 2})
        for worker in (first, second):
            worker.process.send_signal(signal.SIGTERM)
        assert [worker.process.wait(10) for worker in (first, second)] == [0, 0]


def test_sigterm_stops_a_worker_gracefully_and_the_next_one_finishes(start_server, start_worker):
    count, lease = 120, 20
    with SlowReplySink(delay=0.3) as sink:
        server = start_server(args=("--no-worker",), EMAILMCP_WORKER_LEASE_SECONDS=str(lease), **BULK_ENV)
        key, user, queued = _bulk_setup(server, sink, count)

        first = start_worker(server)
        wait_until(lambda: len(sink.messages) >= 30, 60, "30 arrivals", 0.005)
        asked = time.monotonic()
        first.process.send_signal(signal.SIGTERM)  # with sends in flight: the sink holds back its replies
        returncode = first.process.wait(lease)
        stopped_in = time.monotonic() - asked
        assert returncode == 0, first.log_text()
        assert stopped_in < lease
        arrived = len(sink.messages)
        assert arrived < count, "the worker must be stopped while it still has mail to send"
        with server.client(key) as client:
            # A stopped worker leaves nothing leased: what it sent is recorded, the rest is claimable at once.
            assert all_messages(client, user_id=user, status="sending") == []
            assert len(all_messages(client, user_id=user, status="sent")) == arrived

            second = start_worker(server)
            resumed = time.monotonic()
            # Well inside the lease: the rest must not wait for leases to expire.
            wait_until(lambda: pending_count(client, user) == 0, lease / 2, "the second worker to drain the rest", 0.25)
            print(
                f"\nSIGTERM: stopped in {stopped_in:.2f}s after {arrived} arrivals; "
                f"the rest drained in {time.monotonic() - resumed:.1f}s"
            )
            time.sleep(0.5)
            messages = all_messages(client, user_id=user)
        assert {m["status"] for m in messages} == {"sent"} and len(messages) == count
        assert [m["id"] for m in messages if m["attempts"] != 1] == [], "a graceful stop must not cost a retry"
        arrivals = arrivals_by_message_id(sink)
        assert set(arrivals) == set(queued)
        assert [m for m, n in arrivals.items() if n != 1] == [], "a graceful stop must not cause duplicates"
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(10) == 0
