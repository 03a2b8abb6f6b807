"""Building the MIME of outgoing mail, and deriving plain text from HTML."""

import email
import email.utils
import re
import string
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emailmcp.mail import mime
from emailmcp.mail.mime import Attachment, OutgoingEmail, build_mime, html_to_text, new_message_id

DATE = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=2)))


def outgoing(**changes) -> OutgoingEmail:
    base = OutgoingEmail(
        message_id="<abc123@example.com>",
        from_address="alice@example.com",
        from_name="Alice Example",
        to=["bob@example.org"],
        cc=[],
        bcc=[],
        reply_to=[],
        subject="Hello",
        text_body="Hi Bob,\nsee you soon.\n",
        html_body=None,
        in_reply_to=None,
        references=[],
        attachments=[],
        date=DATE,
    )
    return replace(base, **changes)


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=policy.default)  # type: ignore[return-value]


def content(part: EmailMessage) -> str:
    """A text part's content with the wire's CRLF line ends turned back into newlines."""
    return part.get_content().replace("\r\n", "\n")


def display_name(raw: bytes) -> str:
    """The From display name as RFC 2047 decodes it.

    Python's modern parser (before gh-144156) keeps the whitespace between adjacent encoded-words, which RFC 2047
    says to drop, so a long encoded name would read back with extra spaces.
    """
    value = email.message_from_bytes(raw, policy=policy.compat32)["From"]
    name, _ = email.utils.parseaddr(value)
    return str(make_header(decode_header(name)))


def header_block(raw: bytes) -> str:
    return raw.split(b"\r\n\r\n", 1)[0].decode("ascii")


def test_text_only_is_a_single_utf8_part_with_crlf_and_7bit_bytes():
    raw = build_mime(outgoing())
    raw.decode("ascii")  # 7-bit clean
    assert b"\n" not in raw.replace(b"\r\n", b"")
    msg = parse(raw)
    assert not msg.is_multipart()
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content_charset() == "utf-8"
    assert content(msg) == "Hi Bob,\nsee you soon.\n"
    assert msg["From"] == "Alice Example <alice@example.com>"
    assert msg["To"] == "bob@example.org"
    assert msg["Subject"] == "Hello"
    assert msg["Message-ID"] == "<abc123@example.com>"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Date"].datetime == DATE
    for absent in ("Cc", "Reply-To", "Bcc", "In-Reply-To", "References"):
        assert absent not in msg


def test_header_order_and_optional_headers():
    raw = build_mime(outgoing(cc=["carol@example.org", "dan@example.org"], reply_to=["replies@example.com"]))
    names = [line.split(":", 1)[0] for line in header_block(raw).split("\r\n") if not line.startswith(" ")]
    assert names[:7] == ["From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID"]
    msg = parse(raw)
    assert msg["Cc"] == "carol@example.org, dan@example.org"
    assert msg["Reply-To"] == "replies@example.com"


def test_html_with_derived_text_is_multipart_alternative_text_first():
    html = "<p>Hello <b>Bob</b>,</p><p>read <a href='https://example.com/x'>this</a>.</p>"
    msg = parse(build_mime(outgoing(text_body=None, html_body=html)))
    assert msg.get_content_type() == "multipart/alternative"
    plain, rich = msg.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert rich.get_content_type() == "text/html"
    assert content(plain).strip() == "Hello Bob,\n\nread this (https://example.com/x)."
    assert content(rich).strip() == html
    assert "MIME-Version" not in plain and "MIME-Version" not in rich


def test_html_with_given_text_keeps_that_text():
    msg = parse(build_mime(outgoing(text_body="My own text", html_body="<p>Rich</p>")))
    plain, rich = msg.iter_parts()
    assert content(plain) == "My own text\n"
    assert content(rich) == "<p>Rich</p>\n"


def test_attachments_wrap_the_body_in_multipart_mixed():
    pdf = bytes(range(256)) * 10
    msg = parse(
        build_mime(
            outgoing(
                html_body="<p>See attached</p>",
                text_body="See attached",
                attachments=[
                    Attachment("résumé – final.pdf", "application/pdf", pdf),
                    Attachment("notes.txt", "text/plain", "naïve\n".encode()),
                    Attachment("blob", "not a content type", b"\x00\x01"),
                ],
            )
        )
    )
    assert msg.get_content_type() == "multipart/mixed"
    body, *attachments = msg.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    assert [a.get_filename() for a in attachments] == ["résumé – final.pdf", "notes.txt", "blob"]
    assert [a.get_content_type() for a in attachments] == ["application/pdf", "text/plain", "application/octet-stream"]
    assert all(a.get_content_disposition() == "attachment" for a in attachments)
    assert attachments[0].get_content() == pdf
    assert attachments[1].get_payload(decode=True) == "naïve\n".encode()
    assert attachments[2].get_content() == b"\x00\x01"


def test_attachment_on_text_only_mail():
    msg = parse(build_mime(outgoing(attachments=[Attachment("a.bin", "application/octet-stream", b"xyz")])))
    assert msg.get_content_type() == "multipart/mixed"
    body, attachment = msg.iter_parts()
    assert body.get_content_type() == "text/plain"
    assert attachment.get_content() == b"xyz"


def test_non_ascii_filename_uses_rfc2231():
    raw = build_mime(outgoing(attachments=[Attachment("résumé.pdf", "application/pdf", b"%PDF")]))
    assert b"filename*=utf-8''r%C3%A9sum%C3%A9.pdf" in raw


def test_non_ascii_subject_name_and_body_round_trip():
    subject = "Grüße aus Köln — 東京 📬 " + "and a rather long subject line " * 3
    raw = build_mime(
        outgoing(subject=subject.strip(), from_name="Zoë O'Brien, Jr.", text_body="Ünïcödé body ✓\n", html_body=None)
    )
    raw.decode("ascii")
    head = header_block(raw)
    assert "=?utf-8?" in head
    assert all(len(line) <= 78 for line in head.split("\r\n"))
    msg = parse(raw)
    assert msg["Subject"] == subject.strip()
    assert msg["From"].addresses[0].display_name == "Zoë O'Brien, Jr."
    assert msg["From"].addresses[0].addr_spec == "alice@example.com"
    assert content(msg) == "Ünïcödé body ✓\n"


def test_long_non_ascii_display_name_keeps_its_spaces():
    name = "Zoë " * 19 + "Zoë"
    raw = build_mime(outgoing(from_name=name))
    assert all(len(line) <= 78 for line in header_block(raw).split("\r\n"))
    assert display_name(raw) == name
    assert parse(raw)["From"].addresses[0].addr_spec == "alice@example.com"


def test_bcc_is_in_the_envelope_only():
    mail = outgoing(
        to=["bob@example.org", "Carol@Example.org"],
        cc=["carol@example.org", "dan@example.org"],
        bcc=["secret@example.net", "BOB@example.org"],
    )
    raw = build_mime(mail)
    assert b"secret@example.net" not in raw
    assert b"bcc" not in raw.lower()
    assert mail.envelope_recipients() == [
        "bob@example.org",
        "Carol@Example.org",
        "dan@example.org",
        "secret@example.net",
    ]


def test_threading_headers():
    references = [f"<{'r' * 40}{i}@example.com>" for i in range(4)]
    raw = build_mime(outgoing(in_reply_to=references[-1], references=references))
    msg = parse(raw)
    assert msg["In-Reply-To"] == references[-1]
    assert msg["References"].split() == references
    assert all(len(line) <= 78 for line in header_block(raw).split("\r\n"))


INJECTED = "\r\nBcc: victim@example.net"


@pytest.mark.parametrize(
    "changes",
    [
        {"subject": "Hi" + INJECTED},
        {"subject": "Hi\nX-Injected: yes"},
        {"from_name": "Eve" + INJECTED},
        {"from_name": "Évé" + INJECTED},
        {"in_reply_to": "<a@example.com>" + INJECTED},
        {"references": ["<a@example.com>" + INJECTED]},
        {"attachments": [Attachment("a.txt" + INJECTED, "text/plain", b"x")]},
        {"attachments": [Attachment("a.txt", "text/plain" + INJECTED, b"x")]},
    ],
    ids=["subject-crlf", "subject-lf", "name", "non-ascii-name", "in-reply-to", "references", "filename", "type"],
)
def test_newline_in_a_header_cannot_inject_another_header(changes):
    with pytest.raises(ValueError, match="CR or LF|linefeed or carriage return"):
        build_mime(outgoing(**changes))


def test_non_ascii_address_is_refused_rather_than_mangled():
    with pytest.raises(ValueError, match="non-ASCII"):
        build_mime(outgoing(to=["josé@example.org"]))
    with pytest.raises(ValueError, match="non-ASCII"):
        build_mime(outgoing(to=["bob@bücher.de"]))


def test_long_and_dot_lines_survive():
    body = "x" * 2000 + "\n.\n..leading dots\nFrom here\n"
    raw = build_mime(outgoing(text_body=body))
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert content(parse(raw)) == body


def test_build_is_deterministic_apart_from_boundaries():
    mail = outgoing(html_body="<p>x</p>", attachments=[Attachment("a.txt", "text/plain", b"a")])
    assert build_mime(outgoing()) == build_mime(outgoing())

    def without_boundaries(raw: bytes) -> bytes:
        return re.sub(rb"=+\d+==", b"BOUNDARY", raw)

    assert without_boundaries(build_mime(mail)) == without_boundaries(build_mime(mail))


def test_date_keeps_its_offset():
    assert "Date: Tue, 04 Mar 2025 05:06:07 +0200" in header_block(build_mime(outgoing()))
    assert "+0000" in header_block(build_mime(outgoing(date=datetime(2025, 1, 1, tzinfo=UTC))))
    same_instant = DATE.astimezone(UTC)  # equal to DATE as a datetime, written with its own offset
    assert "Date: Tue, 04 Mar 2025 03:06:07 +0000" in header_block(build_mime(outgoing(date=same_instant)))
    assert "Date: Tue, 04 Mar 2025 05:06:07 +0200" in header_block(build_mime(outgoing()))


def test_new_message_id():
    first, second = new_message_id("example.com"), new_message_id("example.com")
    assert re.fullmatch(r"<[0-9a-f]{32}@example\.com>", first)
    assert first != second


text_strategy = st.text(st.characters(categories=("L", "N", "P", "S", "Zs")), max_size=200)


@settings(max_examples=150, deadline=None)
@given(subject=text_strategy, name=text_strategy, body=st.lists(text_strategy, max_size=5))
def test_any_text_round_trips(subject, name, body):
    subject = " ".join(subject.split())
    name = " ".join(name.split())
    text = "\n".join(body) + "\n"
    raw = build_mime(outgoing(subject=subject, from_name=name or None, text_body=text))
    msg = parse(raw)
    assert msg["Subject"] == subject
    assert display_name(raw) == name
    assert content(msg) == text


def stdlib_only_mime(mail: OutgoingEmail) -> bytes:
    """build_mime with every header through the standard library's parser and folder, and its stock registry."""
    stock = policy.SMTP.clone(cte_type="7bit", refold_source="none")
    with mock.patch.object(mime, "_as_is", return_value=False), mock.patch.object(mime, "POLICY", stock):
        return build_mime(mail)


def built(make) -> bytes | str:
    try:
        return re.sub(rb"=+\d+==", b"BOUNDARY", make())
    except Exception as exc:  # the same error either way, e.g. ValueError for an injected newline
        return f"{type(exc).__name__}: {exc}"


ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=90)
atoms = st.text(st.sampled_from(string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-."), min_size=1, max_size=20)
header_text = st.one_of(ascii_text, text_strategy, atoms, st.just("=?utf-8?q?x?="), st.just("a  b "))
addresses = st.one_of(
    st.builds("{}@{}".format, atoms, st.sampled_from(["example.com", "mail.example.org", "x"])),
    st.sampled_from(["bob@example.org", '"bob smith"@example.org', "a(b)@example.org", "a..b@example.org", "@x"]),
)


@settings(max_examples=300, deadline=None)
@given(
    from_address=addresses,
    from_name=st.one_of(st.none(), header_text),
    to=st.lists(addresses, min_size=1, max_size=4),
    cc=st.lists(addresses, max_size=3),
    subject=header_text,
    message_id=st.one_of(st.builds("<{}@{}>".format, atoms, atoms), header_text),
    in_reply_to=st.one_of(st.none(), header_text),
    references=st.lists(st.builds("<{}@{}>".format, atoms, atoms), max_size=4),
    date=st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5))])),
)
def test_headers_written_as_is_are_what_the_standard_library_writes(**fields):
    """build_mime writes plain header values without the standard library's parser and folder; the bytes (or the
    error) must be the same as through them."""
    mail = outgoing(**fields)
    assert built(lambda: build_mime(mail)) == built(lambda: stdlib_only_mime(mail))


# html_to_text


def test_html_paragraphs_breaks_and_whitespace():
    html = """
        <html><head><title>Newsletter</title>
        <style>p { color: red }</style><script>alert("x")</script></head>
        <body>
          <h1>Welcome,
              friend</h1>
          <p>First   paragraph
             spans lines.</p>
          <p>Line one<br>Line two<br/>Line three</p>
          <div>A div</div><div>Another div</div>
          <p>Caf&eacute; &amp; cr&egrave;me&nbsp;br&ucirc;l&eacute;e &lt;3</p>
        </body></html>
    """
    assert html_to_text(html) == (
        "Welcome, friend\n\n"
        "First paragraph spans lines.\n\n"
        "Line one\nLine two\nLine three\n\n"
        "A div\nAnother div\n\n"
        "Café & crème brûlée <3"
    )


def test_html_links():
    html = (
        '<p>Read <a href="https://example.com/a?b=1&amp;c=2">the docs</a>, '
        '<a href="https://example.com/">https://example.com/</a>, '
        '<a href="mailto:help@example.com">help@example.com</a>, '
        '<a href="mailto:help@example.com">write to us</a>, '
        '<a href="#top">back to top</a>, <a href="javascript:void(0)">click</a>, '
        '<a href="https://example.com/logo"><img src="logo.png"></a>.</p>'
    )
    assert html_to_text(html) == (
        "Read the docs (https://example.com/a?b=1&c=2), https://example.com/, help@example.com, "
        "write to us (help@example.com), back to top, click, https://example.com/logo."
    )


def test_html_lists_tables_and_pre():
    html = """
        <p>Steps:</p>
        <ol><li>Open</li><li>Click
            <ul><li>left</li><li>right</li></ul></li><li>Done</li></ol>
        <table><tr><th>Item</th><th>Price</th></tr><tr><td>Tea</td><td>3</td></tr></table>
        <pre>
def f():
    return 1</pre>
        <p>Bye</p>
    """
    assert html_to_text(html) == (
        "Steps:\n\n"
        "1. Open\n2. Click\n  - left\n  - right\n3. Done\n\n"
        "Item Price\nTea 3\n\n"
        "def f():\n    return 1\n\n"
        "Bye"
    )


def test_html_to_text_of_plain_text_and_broken_markup():
    assert html_to_text("just text") == "just text"
    assert html_to_text("") == ""
    assert html_to_text("<p>unclosed <b>bold <i>italic") == "unclosed bold italic"
    assert html_to_text("<script>never closed") == ""
    assert html_to_text("a</p></div></ul></a>b") == "a\n\nb"
