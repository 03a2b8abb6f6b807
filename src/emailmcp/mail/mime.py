"""Turns an outgoing email into RFC 5322 bytes, and HTML into readable plain text."""

import base64
import functools
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import policy
from email.header import Header
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime
from html.parser import HTMLParser


class _FoldedOnce:
    """Keeps a header's folded form per policy: the headers _CachedHeaderRegistry shares are written again and again."""

    def fold(self, *, policy) -> str:
        folded = self.__dict__.get("_folded")
        if folded is None or folded[0] is not policy:
            folded = self._folded = (policy, super().fold(policy=policy))
        return folded[1]


class _CachedHeaderRegistry(HeaderRegistry):
    """The standard registry, minus the costs that dominate build_mime otherwise.

    It makes a new header class on every lookup; this makes each one once. And set_content sets the same few
    Content-Type, Content-Transfer-Encoding and MIME-Version values on every message: these are parsed and folded
    once and then shared. Header classes hold no per-header state and headers are immutable, so sharing is safe.
    """

    _SHARED = frozenset({"content-type", "content-transfer-encoding", "mime-version"})

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type] = {}
        self._shared = functools.lru_cache(maxsize=64)(super().__call__)

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = super().__getitem__(name)
            if key in self._SHARED:
                cls = type(cls.__name__, (_FoldedOnce, cls), {})
            self._classes[key] = cls
        return cls

    def __call__(self, name: str, value):
        if isinstance(value, str) and name.lower() in self._SHARED:
            return self._shared(name, value)
        return super().__call__(name, value)


# SMTP's CRLF and folding, but 7-bit clean bodies (quoted-printable or base64 instead of raw 8bit), so a message
# goes through any server whether or not it offers 8BITMIME; and headers stored raw (set_raw) are written as given.
POLICY = policy.SMTP.clone(cte_type="7bit", refold_source="none", header_factory=_CachedHeaderRegistry())


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    content: bytes


@dataclass(frozen=True)
class OutgoingEmail:
    message_id: str  # RFC 5322 Message-ID including angle brackets, fixed at enqueue
    from_address: str
    from_name: str | None
    to: list[str]
    cc: list[str]
    bcc: list[str]
    reply_to: list[str]
    subject: str
    text_body: str | None  # the text/plain part; for HTML mail the derived or given text
    html_body: str | None  # None for text-only mail
    in_reply_to: str | None
    references: list[str]
    attachments: list[Attachment]
    date: datetime  # timezone-aware

    def envelope_recipients(self) -> list[str]:
        """To, Cc and Bcc in order, without case-insensitive duplicates."""
        seen: set[str] = set()
        recipients = []
        for address in [*self.to, *self.cc, *self.bcc]:
            if address.lower() not in seen:
                seen.add(address.lower())
                recipients.append(address)
        return recipients


def _address(address: str, display_name: str | None = None) -> Address:
    # The stdlib would write a non-ASCII domain as an invalid encoded-word; SMTPUTF8 is not supported.
    if not address.isascii():
        raise ValueError(f"{address!r}: non-ASCII addresses are not supported")
    return Address(display_name=display_name or "", addr_spec=address)


# Header values the standard library writes exactly as given: no quoting, encoding or folding needed. Such values
# are stored as written (set_raw), skipping the header parser and folder, most of build_mime's time otherwise;
# tests/test_mime.py checks that the bytes are the same either way.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_PLAIN_ADDRESS = re.compile(rf"{_DOT_ATOM}@{_DOT_ATOM}")
_PLAIN_NAME = re.compile(rf"{_ATEXT}(?: {_ATEXT})*")
_PLAIN_MESSAGE_ID = re.compile(rf"<{_DOT_ATOM}@{_DOT_ATOM}>")
_PLAIN_TEXT = re.compile(r"[!-~]+(?: [!-~]+)*")  # printable ASCII words, single spaces


@functools.lru_cache(maxsize=64)
def _date_text(second: datetime, offset: timedelta | None) -> str:
    """What the Date header class writes for a whole second, so messages queued in the same second share it.

    `offset` is part of the key: datetimes for the same instant compare equal whatever their offsets.
    """
    return format_datetime(second)


def _as_is(name: str, text: str, pattern: re.Pattern = _PLAIN_TEXT) -> bool:
    """Whether the header fits on one line as `text`, with nothing in it to quote or encode."""
    return len(name) + 2 + len(text) <= POLICY.max_line_length and "=?" not in text and bool(pattern.fullmatch(text))


def _set(msg: EmailMessage, name: str, text: str, value: object, pattern: re.Pattern = _PLAIN_TEXT) -> None:
    """Sets a header to `value`, or to `text`, how the standard library writes `value`, when that needs no folding."""
    if _as_is(name, text, pattern):
        msg.set_raw(name, text)
    else:
        msg[name] = value


def build_mime(email: OutgoingEmail, bcc_header: bool = False) -> bytes:
    """The message as sent: text/plain, multipart/alternative for HTML, multipart/mixed around attachments.

    Bcc recipients are only in `envelope_recipients()`, never in a header, unless `bcc_header` (for a provider
    such as Gmail that reads recipients from the headers and removes Bcc itself). Raises ValueError
    for a header value with CR or LF, and for a non-ASCII address.
    """
    msg = EmailMessage(policy=POLICY)
    from_text = f"{email.from_name} <{email.from_address}>" if email.from_name else email.from_address
    if (
        _as_is("From", from_text)
        and _PLAIN_ADDRESS.fullmatch(email.from_address)
        and (not email.from_name or _PLAIN_NAME.fullmatch(email.from_name))
    ):
        msg.set_raw("From", from_text)
    else:
        sender = _address(email.from_address, email.from_name)
        if sender.display_name.isascii():
            msg["From"] = sender
        else:
            # Python's folder (before gh-144156) drops the space between adjacent encoded-words of a long
            # non-ASCII display name ("Zoë Zoë" -> "ZoëZoë"); the classic Header encoder splits it correctly.
            name = Header(sender.display_name, "utf-8", header_name="From").encode(linesep="\r\n")
            msg.set_raw("From", f"{name} <{sender.addr_spec}>")
    headers = [("To", email.to), ("Cc", email.cc), ("Reply-To", email.reply_to)]
    if bcc_header:
        headers.insert(2, ("Bcc", email.bcc))
    for header, addresses in headers:
        if not addresses:
            continue
        text = ", ".join(addresses)
        if _as_is(header, text) and all(_PLAIN_ADDRESS.fullmatch(address) for address in addresses):
            msg.set_raw(header, text)
        else:
            msg[header] = [_address(a) for a in addresses]
    _set(msg, "Subject", email.subject, email.subject)
    _set(msg, "Date", _date_text(email.date.replace(microsecond=0), email.date.utcoffset()), email.date)
    _set(msg, "Message-ID", email.message_id, email.message_id, _PLAIN_MESSAGE_ID)
    if email.in_reply_to:
        _set(msg, "In-Reply-To", email.in_reply_to, email.in_reply_to)
    if email.references:
        references = " ".join(email.references)
        _set(msg, "References", references, references)

    text = email.text_body
    if text is None:
        text = html_to_text(email.html_body) if email.html_body is not None else ""
    msg.set_content(text, charset="utf-8")
    if email.html_body is not None:
        msg.add_alternative(email.html_body, subtype="html", charset="utf-8")
    for attachment in email.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        if not maintype or not subtype:
            maintype, subtype = "application", "octet-stream"
        msg.add_attachment(attachment.content, maintype=maintype, subtype=subtype, filename=attachment.filename)
    # Parts made by add_alternative/add_attachment carry their own MIME-Version; only the top level needs it.
    for part in msg.walk():
        if part is not msg:
            del part["MIME-Version"]
    return msg.as_bytes(policy=POLICY)


def outgoing_email(message) -> OutgoingEmail:
    """The email of a messages row (or anything with its attributes)."""
    html = message.body if message.body_type == "html" else None
    text_body = (message.text_body or html_to_text(message.body or "")) if html is not None else message.body
    return OutgoingEmail(
        message_id=message.message_id,
        from_address=message.from_address,
        from_name=message.from_name,
        to=message.to,
        cc=message.cc,
        bcc=message.bcc,
        reply_to=message.reply_to,
        subject=message.subject,
        text_body=text_body,
        html_body=html,
        in_reply_to=message.in_reply_to,
        references=message.references,
        attachments=[
            Attachment(a["filename"], a["content_type"], base64.b64decode(a["content_base64"]))
            for a in message.attachments or []
        ],
        date=message.created_at,
    )


def new_message_id(domain: str) -> str:
    return f"<{secrets.token_hex(16)}@{domain}>"


_SKIP = {"script", "style", "title", "template"}
_PARAGRAPH = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote", "pre", "hr", "dl", "figure"}
_LINE = {"div", "tr", "dt", "dd", "section", "article", "header", "footer", "nav", "aside", "main", "address"}
# Placeholders that survive whitespace normalisation: preformatted spaces/tabs and list indentation.
_SPACE, _TAB = "\x01", "\x02"


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._pending = 0  # line breaks owed before the next text: blocks ask for "at least n", not n more
        self._skip = 0
        self._pre = 0
        self._lists: list[list[int]] = []  # one [counter] per open list; counter -1 for <ul>
        self._links: list[tuple[str, int]] = []  # (href, index in out where the link text starts)

    def _block(self, breaks: int) -> None:
        self._pending = max(self._pending, breaks)

    def _emit(self, text: str) -> None:
        if self._pending and self.out:
            self.out.append("\n" * self._pending)
        self._pending = 0
        self.out.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self._skip += 1
        elif tag == "br":
            self._emit("\n")
        elif tag in ("ul", "ol"):
            self._block(1 if self._lists else 2)
            self._lists.append([-1 if tag == "ul" else 0])
        elif tag == "li":
            counter = self._lists[-1] if self._lists else [-1]
            if counter[0] >= 0:
                counter[0] += 1
            self._block(1)
            self._emit(_SPACE * 2 * max(len(self._lists) - 1, 0) + ("-" if counter[0] < 0 else f"{counter[0]}.") + " ")
        elif tag == "a":
            self._links.append((dict(attrs).get("href") or "", len(self.out)))
        elif tag in ("td", "th"):
            self._emit(" ")
        if tag == "pre":
            self._pre += 1
        if tag in _PARAGRAPH:
            self._block(2)
        elif tag in _LINE:
            self._block(1)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self._skip = max(self._skip - 1, 0)
        elif tag in ("ul", "ol") and self._lists:
            self._lists.pop()
            self._block(1 if self._lists else 2)
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            self._append_link(href, "".join(self.out[start:]).strip())
        if tag == "pre":
            self._pre = max(self._pre - 1, 0)
        if tag in _PARAGRAPH:
            self._block(2)
        elif tag in _LINE:
            self._block(1)

    def _append_link(self, href: str, text: str) -> None:
        href = href.strip()
        if not href or href.startswith(("#", "javascript:")):
            return
        shown = href.removeprefix("mailto:")
        if not text:
            self._emit(shown)
        elif text not in (href, shown):
            self._emit(f" ({shown})")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._pre:
            self._emit(data.replace(" ", _SPACE).replace("\t", _TAB))
            return
        text = re.sub(r"\s+", " ", data)
        if self._pending or not self.out or self.out[-1][-1:] in (" ", "\n"):
            text = text.lstrip(" ")
        if text:
            self._emit(text)


def html_to_text(html: str) -> str:
    """Readable plain text: paragraphs and line breaks kept, links as "text (url)", scripts and styles dropped."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (line.strip(" ") for line in "".join(parser.out).split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    return text.replace(_SPACE, " ").replace(_TAB, "\t")
