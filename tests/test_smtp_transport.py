"""The SMTP transport against a real SMTP server on loopback (tests/peers/smtp.py), and the capture transport."""

import socket
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from emailmcp.mail.mime import Attachment, OutgoingEmail, build_mime
from emailmcp.mail.transports.base import PermanentError, SendResult, TransientError
from emailmcp.mail.transports.capture import CaptureTransport
from emailmcp.mail.transports.smtp import SmtpConfig, SmtpPool, SmtpTransport
from peers.smtp import SmtpSink

USER, PASSWORD = "alice@example.com", "s3cret-Pa55word"
SENDER = "alice@example.com"


def outgoing(**changes) -> OutgoingEmail:
    base = OutgoingEmail(
        message_id="<transport-test@example.com>",
        from_address=SENDER,
        from_name="Alice",
        to=["bob@example.org"],
        cc=["carol@example.org"],
        bcc=["dave@example.net"],
        reply_to=[],
        subject="Quarterly numbers",
        text_body="See attached.",
        html_body=None,
        in_reply_to=None,
        references=[],
        attachments=[],
        date=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    return replace(base, **changes)


def smtp(sink: SmtpSink, security: str = "none", **options) -> SmtpTransport:
    return SmtpTransport(SmtpConfig("127.0.0.1", sink.port, security, **options))  # type: ignore[arg-type]


async def send(transport: SmtpTransport, mail: OutgoingEmail | None = None) -> SendResult:
    mail = mail or outgoing()
    return await transport.send(build_mime(mail), mail.from_address, mail.envelope_recipients())


@pytest.fixture
def starttls_sink() -> Iterator[SmtpSink]:
    with SmtpSink(require_starttls=True, require_auth=(USER, PASSWORD)) as sink:
        yield sink


async def test_plain_delivery_puts_bcc_in_the_envelope_only(smtp_sink):
    mail = outgoing()
    mime = build_mime(mail)
    result = await SmtpTransport(SmtpConfig("127.0.0.1", smtp_sink.port, "none")).send(
        mime, SENDER, mail.envelope_recipients()
    )
    assert result == SendResult(
        accepted=["bob@example.org", "carol@example.org", "dave@example.net"],
        refused={},
        response="2.0.0 OK: queued",
    )
    [received] = smtp_sink.wait_for(1)
    assert received.sender == SENDER
    assert received.recipients == ["bob@example.org", "carol@example.org", "dave@example.net"]
    assert received.raw == mime  # byte for byte, after the server undid dot-stuffing
    assert received.message["To"] == "bob@example.org"
    assert received.message["Cc"] == "carol@example.org"
    assert "Bcc" not in received.message
    assert b"dave@example.net" not in received.raw
    assert not received.tls and received.login is None


async def test_non_ascii_content_arrives_intact(smtp_sink):
    mail = outgoing(
        subject="Grüße — 東京",
        from_name="Zoë",
        text_body=None,
        html_body="<p>Ünïcödé <b>body</b></p>\n.\n",
        attachments=[Attachment("résumé.pdf", "application/pdf", b"%PDF-1.7\n")],
    )
    await send(smtp(smtp_sink), mail)
    [received] = smtp_sink.wait_for(1)
    msg = received.message
    assert msg["Subject"] == "Grüße — 東京"
    assert msg["From"].addresses[0].display_name == "Zoë"
    body, attachment = msg.iter_parts()
    assert [p.get_content_type() for p in body.iter_parts()] == ["text/plain", "text/html"]
    assert body.get_body(("plain",)).get_content().replace("\r\n", "\n").strip() == "Ünïcödé body\n\n."
    assert attachment.get_filename() == "résumé.pdf"
    assert attachment.get_content() == b"%PDF-1.7\n"


async def test_starttls_and_auth(starttls_sink):
    result = await send(
        smtp(starttls_sink, "starttls", username=USER, password=PASSWORD, ca_file=starttls_sink.ca_file)
    )
    assert result.refused == {}
    [received] = starttls_sink.wait_for(1)
    assert received.tls
    assert received.login == USER


async def test_wrong_password_is_permanent_and_never_echoed(starttls_sink):
    transport = smtp(
        starttls_sink, "starttls", username=USER, password="wrong-" + PASSWORD, ca_file=starttls_sink.ca_file
    )
    with pytest.raises(PermanentError) as caught:
        await send(transport)
    assert caught.value.message.startswith("535 ")
    for text in (caught.value.message, str(caught.value), repr(caught.value), repr(transport.config)):
        assert PASSWORD not in text
    assert starttls_sink.messages == []


async def test_starttls_verifies_the_certificate(starttls_sink):
    with pytest.raises(TransientError, match="CERTIFICATE_VERIFY_FAILED"):
        await send(smtp(starttls_sink, "starttls", username=USER, password=PASSWORD))
    # Verification off is an explicit choice, for servers with self-signed certificates.
    await send(smtp(starttls_sink, "starttls", username=USER, password=PASSWORD, tls_verify=False))
    assert len(starttls_sink.wait_for(1)) == 1


async def test_starttls_required_but_not_offered_is_permanent(smtp_sink):
    with pytest.raises(PermanentError, match="STARTTLS"):
        await send(smtp(smtp_sink, "starttls"))
    assert smtp_sink.messages == []


async def test_missing_credentials_are_permanent(starttls_sink):
    with pytest.raises(PermanentError, match="^530 "):
        await send(smtp(starttls_sink, "starttls", ca_file=starttls_sink.ca_file))


async def test_implicit_tls():
    with SmtpSink(tls_implicit=True, require_auth=(USER, PASSWORD)) as sink:
        await send(smtp(sink, "tls", username=USER, password=PASSWORD, ca_file=sink.ca_file))
        [received] = sink.wait_for(1)
        assert received.tls and received.login == USER
        with pytest.raises(TransientError):
            await send(smtp(sink, "none", username=USER, password=PASSWORD, timeout=0.5))


async def test_server_down_is_transient_and_recovers(smtp_sink):
    transport = smtp(smtp_sink)
    smtp_sink.stop()
    with pytest.raises(TransientError, match="Error connecting to 127.0.0.1") as caught:
        await send(transport)
    assert caught.value.retry_after is None
    smtp_sink.start()
    await send(transport)
    assert len(smtp_sink.wait_for(1)) == 1


async def test_silent_server_times_out_as_transient():
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts connections, never says a word
        port = listener.getsockname()[1]
        transport = SmtpTransport(SmtpConfig("127.0.0.1", port, "none", timeout=0.5))
        with pytest.raises(TransientError, match="[Tt]imed out"):
            await transport.send(b"Subject: x\r\n\r\nx\r\n", SENDER, ["bob@example.org"])


async def test_4xx_at_data_is_transient(smtp_sink):
    smtp_sink.fail_next(1)
    with pytest.raises(TransientError) as caught:
        await send(smtp(smtp_sink))
    assert caught.value.message == "451 4.3.0 Temporary failure, try again later"
    assert smtp_sink.messages == []
    await send(smtp(smtp_sink))
    assert len(smtp_sink.wait_for(1)) == 1


async def test_5xx_at_data_is_permanent(smtp_sink):
    smtp_sink.fail_next(1, code=554, text="5.6.0 Message content rejected")
    with pytest.raises(PermanentError) as caught:
        await send(smtp(smtp_sink))
    assert caught.value.message == "554 5.6.0 Message content rejected"


async def test_one_recipient_refused_the_other_delivered():
    with SmtpSink(reject={"nobody@example.org": (550, "5.1.1 <nobody@example.org>: no such user")}) as sink:
        result = await send(smtp(sink), outgoing(to=["nobody@example.org", "bob@example.org"], cc=[], bcc=[]))
        assert result.accepted == ["bob@example.org"]
        assert result.refused == {"nobody@example.org": "550 5.1.1 <nobody@example.org>: no such user"}
        [received] = sink.wait_for(1)
        assert received.recipients == ["bob@example.org"]
        assert received.message["To"] == "nobody@example.org, bob@example.org"


async def test_all_recipients_refused_permanently():
    reject = {"a@example.org": (550, "5.1.1 no such user"), "b@example.org": (553, "5.1.3 bad address")}
    with SmtpSink(reject=reject) as sink:
        with pytest.raises(PermanentError) as caught:
            await send(smtp(sink), outgoing(to=["a@example.org", "b@example.org"], cc=[], bcc=[]))
        assert caught.value.message == (
            "all recipients were refused: a@example.org: 550 5.1.1 no such user; b@example.org: 553 5.1.3 bad address"
        )
        assert sink.messages == []


async def test_all_recipients_refused_with_a_temporary_one_is_transient():
    reject = {"a@example.org": (550, "5.1.1 no such user"), "b@example.org": (450, "4.2.1 mailbox busy")}
    with SmtpSink(reject=reject) as sink, pytest.raises(TransientError, match="450 4.2.1 mailbox busy"):
        await send(smtp(sink), outgoing(to=["a@example.org", "b@example.org"], cc=[], bcc=[]))


async def test_address_that_cannot_go_on_an_smtp_line_is_permanent(smtp_sink):
    transport = smtp(smtp_sink)
    with pytest.raises(PermanentError, match="not permitted in an SMTP mailbox"):
        await transport.send(b"Subject: x\r\n\r\nx\r\n", SENDER, ["bob smith@example.org"])
    with pytest.raises(PermanentError, match="non-ASCII addresses are not supported"):
        await transport.send(b"Subject: x\r\n\r\nx\r\n", SENDER, ["josé@example.org"])
    assert smtp_sink.messages == []


async def test_unknown_security_setting_is_permanent(smtp_sink):
    with pytest.raises(PermanentError, match="security"):
        await send(smtp(smtp_sink, "ssl"))


async def test_capture_transport_accepts_everything():
    transport = CaptureTransport()
    assert (transport.name, transport.keeps_copy) == ("capture", True)
    assert (SmtpTransport.name, SmtpTransport.keeps_copy) == ("smtp", False)
    result = await transport.send(b"raw", SENDER, ["a@example.org", "b@example.org"])
    assert result == SendResult(accepted=["a@example.org", "b@example.org"], refused={}, response="captured")


# -- SmtpPool: connections kept open between messages ----------------------------------------------------------


def connections(sink: SmtpSink) -> list[tuple[str, int]]:
    """The client connections the sink's messages came over, in order of first use."""
    return list(dict.fromkeys(received.peer for received in sink.messages))


async def test_pool_sends_several_messages_over_one_connection_up_to_its_cap(smtp_sink):
    pool = SmtpPool(max_messages=3)
    transport = SmtpTransport(SmtpConfig("127.0.0.1", smtp_sink.port, "none"), pool)
    for n in range(7):
        await send(transport, outgoing(message_id=f"<pooled-{n}@example.com>"))
    await pool.close()
    received = smtp_sink.wait_for(7)
    assert [r.message["Message-ID"] for r in received] == [f"<pooled-{n}@example.com>" for n in range(7)]
    assert [sum(r.peer == peer for r in received) for peer in connections(smtp_sink)] == [3, 3, 1]


async def test_pool_keeps_connections_apart_by_server_and_credentials(starttls_sink, smtp_sink):
    pool = SmtpPool()
    plain = SmtpTransport(SmtpConfig("127.0.0.1", smtp_sink.port, "none"), pool)
    secured = [
        SmtpTransport(
            SmtpConfig("127.0.0.1", starttls_sink.port, "starttls", USER, password, ca_file=starttls_sink.ca_file), pool
        )
        for password in (PASSWORD, "wrong-" + PASSWORD)
    ]
    await send(plain)
    await send(secured[0])
    with pytest.raises(PermanentError, match="^535 "):  # not sent over the authenticated connection
        await send(secured[1])
    await send(secured[0])
    await send(plain)
    await pool.close()
    assert len(connections(smtp_sink)) == 1 and len(smtp_sink.messages) == 2
    assert len(connections(starttls_sink)) == 1 and len(starttls_sink.messages) == 2
    assert all(r.login == USER and r.tls for r in starttls_sink.messages)


async def test_pool_opens_a_new_connection_after_a_refused_transaction(smtp_sink):
    pool = SmtpPool()
    transport = SmtpTransport(SmtpConfig("127.0.0.1", smtp_sink.port, "none"), pool)
    await send(transport)
    smtp_sink.fail_next(1)
    with pytest.raises(TransientError, match="^451 "):
        await send(transport)
    await send(transport)
    await pool.close()
    assert len(smtp_sink.wait_for(2)) == 2
    assert len(connections(smtp_sink)) == 2


async def test_pool_closes_connections_idle_for_too_long(smtp_sink):
    now = [0.0]
    pool = SmtpPool(max_idle=20, clock=lambda: now[0])
    transport = SmtpTransport(SmtpConfig("127.0.0.1", smtp_sink.port, "none"), pool)
    await send(transport)
    now[0] = 19
    await send(transport)  # idle for 19 s: reused
    now[0] = 39
    pool.close_idle()  # idle for 20 s: closed
    await send(transport)
    await pool.close()
    received = smtp_sink.wait_for(3)
    assert received[0].peer == received[1].peer != received[2].peer


async def test_pool_does_not_resend_when_a_kept_connection_fails():
    """A connection the server dropped between two messages fails the next send like any lost connection: the
    worker retries that message later, rather than the pool sending it again at once."""

    class DroppingSink(SmtpSink):
        async def handle_MAIL(self, server, session, envelope, address, mail_options):
            if session.peer in {r.peer for r in self.messages}:
                server.transport.close()  # the second transaction on a connection: hang up without a reply
            return await super().handle_MAIL(server, session, envelope, address, mail_options)

    with DroppingSink() as sink:
        pool = SmtpPool()
        transport = SmtpTransport(SmtpConfig("127.0.0.1", sink.port, "none"), pool)
        await send(transport, outgoing(message_id="<first@example.com>"))
        with pytest.raises(TransientError):
            await send(transport, outgoing(message_id="<second@example.com>"))
        assert [r.message["Message-ID"] for r in sink.messages] == ["<first@example.com>"]
        await send(transport, outgoing(message_id="<second@example.com>"))  # the retry: a new connection
        await pool.close()
        assert [r.message["Message-ID"] for r in sink.wait_for(2)] == ["<first@example.com>", "<second@example.com>"]
        assert len(connections(sink)) == 2
