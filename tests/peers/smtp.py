"""A real SMTP server on loopback for tests, built on aiosmtpd (its controller runs it in a thread of its own).

    with SmtpSink(require_starttls=True, require_auth=("user", "pw")) as sink:
        ...  # send to 127.0.0.1:sink.port, trusting sink.ca_file
        [received] = sink.wait_for(1)

Knobs: per-recipient RCPT rejections (`reject`), transient failures at DATA (`fail_next`), AUTH PLAIN/LOGIN
(`require_auth`), STARTTLS (`require_starttls`) or implicit TLS (`tls_implicit`) with a self-signed certificate
for 127.0.0.1 and localhost, and `stop()`/`start()` on the same port to take the server down and bring it back.
"""

import atexit
import datetime
import email
import functools
import ipaddress
import shutil
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class ReceivedMessage:
    sender: str
    recipients: list[str]
    raw: bytes
    message: EmailMessage
    login: str | None  # the authenticated user, if any
    tls: bool  # whether the session was encrypted (STARTTLS or implicit TLS)
    peer: tuple[str, int]  # the client's address and port: the same for messages sent over one connection


@functools.cache
def certificate(names: tuple[str, ...] = ("localhost", "127.0.0.1")) -> tuple[str, str]:
    """A self-signed certificate for these host names and IP addresses, made once per test run: (cert file, key
    file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "emailmcp test server")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([_subject_name(host) for host in names]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory = tempfile.mkdtemp(prefix="smtp-sink-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    cert_file, key_file = Path(directory, "cert.pem"), Path(directory, "key.pem")
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_file), str(key_file)


def _subject_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SmtpSink:
    """Captures every message it accepts in `messages`; see the module docstring for the knobs."""

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        reject: dict[str, tuple[int, str]] | None = None,
        require_auth: tuple[str, str] | None = None,
        require_starttls: bool = False,
        tls_implicit: bool = False,
    ) -> None:
        self.port = free_port()
        self.reject = {address.lower(): reply for address, reply in (reject or {}).items()}
        self.require_auth = require_auth
        self.require_starttls = require_starttls
        self.tls_implicit = tls_implicit
        self.messages: list[ReceivedMessage] = []
        self.ca_file: str | None = None
        self._tls: ssl.SSLContext | None = None
        if require_starttls or tls_implicit:
            self.ca_file, key_file = certificate()
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.load_cert_chain(self.ca_file, key_file)
        self._failures: list[str] = []
        self._changed = threading.Condition()
        self._controller: Controller | None = None

    def start(self) -> "SmtpSink":
        """Starts listening (again) on the same port."""
        self._controller = Controller(
            self,
            hostname=self.host,
            port=self.port,
            server_hostname="localhost",
            ssl_context=self._tls if self.tls_implicit else None,
            tls_context=self._tls if self.require_starttls else None,
            require_starttls=self.require_starttls,
            authenticator=self._authenticate if self.require_auth else None,
            # aiosmtpd counts only STARTTLS as encryption, and warns when AUTH is required without it; so AUTH
            # is allowed without STARTTLS (implicit TLS is encrypted too) and handle_MAIL requires it instead.
            auth_require_tls=self.require_starttls,
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        """Closes the listening socket; connections are refused until `start()`."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> "SmtpSink":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def fail_next(self, n: int, code: int = 451, text: str = "4.3.0 Temporary failure, try again later") -> None:
        """Answers DATA of the next `n` messages with `code text` instead of accepting them."""
        with self._changed:
            self._failures.extend([f"{code} {text}"] * n)

    def wait_for(self, count: int, timeout: float = 10) -> list[ReceivedMessage]:
        """Blocks until at least `count` messages have arrived, and returns them all."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"expected {count} messages within {timeout}s, got {len(self.messages)}")
            return list(self.messages)

    # aiosmtpd handler hooks, called on the server's thread.

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if self.require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower() in self.reject:
            code, text = self.reject[address.lower()]
            return f"{code} {text}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        with self._changed:
            if self._failures:
                return self._failures.pop(0)
            self.messages.append(
                ReceivedMessage(
                    sender=envelope.mail_from or "",
                    recipients=list(envelope.rcpt_tos),
                    raw=raw,
                    message=email.message_from_bytes(raw, policy=policy.default),  # type: ignore[arg-type]
                    login=session.auth_data.login.decode() if session.authenticated else None,
                    tls=server.transport is not None and server.transport.get_extra_info("ssl_object") is not None,
                    peer=tuple(session.peer),
                )
            )
            self._changed.notify_all()
        return "250 2.0.0 OK: queued"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: object
    ) -> AuthResult:
        assert self.require_auth is not None
        user, password = self.require_auth
        ok = isinstance(auth_data, LoginPassword) and auth_data == (user.encode(), password.encode())
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A plain SMTP sink on loopback that accepts everything."""
    with SmtpSink() as sink:
        yield sink
