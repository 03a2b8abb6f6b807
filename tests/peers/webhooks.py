"""A real HTTP receiver of webhooks on loopback, in a thread of its own, for tests.

    with WebhookReceiver() as receiver:
        ...  # subscribe receiver.url
        [delivery] = receiver.wait_for(1)
        event = receiver.verify(delivery, secret)   # standardwebhooks' own check, or it raises

Knobs: `answer` (the status code to reply with, or a function of the request returning one), `delay` (seconds to
wait before replying), `reply_headers` (extra headers of every answer, e.g. Retry-After), `tls` (a server-side
SSLContext: the receiver speaks https), and `stop()`/`start()` on the same port to take the receiver down and
bring it back.
"""

import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

from peers.smtp import free_port


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    answered: int
    received_at: float = field(default_factory=time.monotonic)

    @property
    def payload(self) -> dict:
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


class WebhookReceiver:
    host = "127.0.0.1"

    def __init__(
        self, answer: int | Callable[["Delivery"], int] = 200, delay: float = 0.0, tls: ssl.SSLContext | None = None
    ) -> None:
        self.port = free_port()
        self.tls = tls  # a server-side context: the receiver speaks https
        self.answer = answer
        self.delay = delay
        self.reply_headers: dict[str, str] = {}  # sent with every answer, e.g. {"retry-after": "60"}
        self.deliveries: list[Delivery] = []  # every request, whatever it was answered
        self._changed = threading.Condition()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/hooks"

    def start(self) -> "WebhookReceiver":
        """Starts listening (again) on the same port."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                delivery = Delivery(self.path, {k.lower(): v for k, v in self.headers.items()}, body, 0)
                if receiver.delay:
                    time.sleep(receiver.delay)
                answer = receiver.answer
                delivery.answered = answer(delivery) if callable(answer) else answer
                self.send_response(delivery.answered)
                self.send_header("content-length", "0")
                for name, value in dict(receiver.reply_headers).items():
                    self.send_header(name, value)
                self.end_headers()
                with receiver._changed:
                    receiver.deliveries.append(delivery)
                    receiver._changed.notify_all()

            def log_message(self, *args: object) -> None:
                pass

        self._server = _Server((self.host, self.port), Handler)
        if self.tls:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops listening: connections are refused until `start()`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "WebhookReceiver":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def accepted(self) -> list[Delivery]:
        """The deliveries answered with a 2xx."""
        with self._changed:
            return [d for d in self.deliveries if 200 <= d.answered < 300]

    def wait_for(self, count: int, timeout: float = 15, accepted_only: bool = True) -> list[Delivery]:
        """Waits until `count` deliveries (accepted ones by default) have arrived; returns them all."""
        deadline = time.monotonic() + timeout

        def seen() -> list[Delivery]:
            return [d for d in self.deliveries if not accepted_only or 200 <= d.answered < 300]

        with self._changed:
            while len(seen()) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{len(seen())} of {count} webhook deliveries arrived in {timeout}s")
                self._changed.wait(remaining)
            return seen()

    @staticmethod
    def verify(delivery: Delivery, secret: str) -> dict:
        """The event, after checking the signature with the standardwebhooks library (raises if it fails)."""
        return Webhook(secret).verify(delivery.body, delivery.headers)
