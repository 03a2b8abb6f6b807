"""The webhook dispatcher: claims due deliveries under a lease, POSTs them signed, records each attempt.

At least once: a dispatcher that dies mid-delivery leaves its lease to expire, and another sends the delivery again
with the same webhook-id, which receivers use to drop the duplicate. 2xx is success; timeouts, connection errors,
408, 429 and 5xx are retried with exponential backoff until the delivery's retry window (24 h by default) ends;
other answers fail the delivery at once. An endpoint failing for `webhook_disable_after_seconds` (no success, no
long quiet gap between failures) is disabled, with the reason; its waiting deliveries resume when it is enabled.
"""

import asyncio
import contextlib
import json
import math
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx2
import structlog
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from emailmcp import __version__
from emailmcp.db import utcnow
from emailmcp.errors import APIError
from emailmcp.observability import WEBHOOK_ATTEMPTS
from emailmcp.retries import backoff
from emailmcp.runtime import Runtime
from emailmcp.vault import DecryptionError
from emailmcp.wakeup import WEBHOOKS_CHANNEL, listen
from emailmcp.webhooks import repository, signing
from emailmcp.webhooks.events import payload
from emailmcp.webhooks.schemas import DeliveryStatus
from emailmcp.webhooks.service import check_url, secrets_in_use

log = structlog.get_logger(__name__)

MAX_BACKOFF = timedelta(hours=2)
HOUSEKEEPING_SECONDS = 300
# An attempt waits at most this long to be recorded with others.
RECORD_DELAY = 0.05
# A webhook failing continuously sees a failed attempt at least every MAX_BACKOFF (with jitter); a longer gap
# between failures means it was not failing meanwhile, so its failing streak starts again.
FAILURE_STREAK_GAP = MAX_BACKOFF * 1.5
RETRIED_STATUSES = frozenset({408, 429})


@dataclass(slots=True)
class _Job:
    delivery: Row
    event: Row
    endpoint: Row


@dataclass(slots=True)
class _Result:
    status_code: int | None
    error: str | None
    retry_after: float | None
    latency_ms: int

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def retryable(self) -> bool:
        return self.status_code is None or self.status_code in RETRIED_STATUSES or self.status_code >= 500


@dataclass(slots=True)
class _Finished:
    job: _Job
    started: datetime
    result: _Result


class WebhookDispatcher:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = settings = runtime.settings
        self.concurrency = settings.webhook_concurrency
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._http = httpx2.AsyncClient(
            timeout=httpx2.Timeout(settings.webhook_timeout_seconds),
            follow_redirects=False,
            limits=httpx2.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
            headers={"user-agent": f"EmailMCP-Webhooks/{__version__}", "content-type": "application/json"},
        )
        # Long enough for a delivery's whole attempt, timeout included, with room to record it.
        self._lease = timedelta(seconds=max(settings.worker_lease_seconds, 3 * settings.webhook_timeout_seconds))
        self._retry_window = timedelta(seconds=settings.webhook_retry_window_seconds)
        self._disable_after = timedelta(seconds=settings.webhook_disable_after_seconds)
        self._in_flight: set[asyncio.Task] = set()
        self._finished: list[_Finished] = []  # attempts made, not yet recorded
        self._finished_since = 0.0  # event loop time of the oldest of them
        self._batch = max(1, self.concurrency // 4)
        self._wake = asyncio.Event()
        self._maybe_due = True  # false after a claim found less than it asked for, until a notification or poll

    async def run(self, stop: asyncio.Event) -> None:
        """Delivers until `stop` is set, then lets deliveries in flight finish and gives back what is left."""
        log.info("webhook_dispatcher_started", owner=self.owner, concurrency=self.concurrency)
        helpers = [asyncio.create_task(self._wake_on_stop(stop)), asyncio.create_task(self._wake_on_events())]
        if not self.settings.is_sqlite:
            helpers.append(
                asyncio.create_task(listen(self.runtime.engine, WEBHOOKS_CHANNEL, self.runtime.webhook_signal))
            )
        try:
            await self._loop(stop)
        finally:
            for task in helpers:
                task.cancel()
            if self._in_flight:
                await asyncio.wait(self._in_flight, timeout=self.settings.webhook_timeout_seconds + 5)
            try:
                # What finished is recorded; what is still leased (attempts that did not finish in time) is given
                # back, to be attempted again.
                if self._finished:
                    await self._write(self._finished, 0)
                async with self.runtime.engine.begin() as conn:
                    await repository.release(conn, self.owner, utcnow())
            except Exception:
                log.warning("webhook_release_failed", owner=self.owner)  # the leases expire instead
            await self._http.aclose()
            log.info("webhook_dispatcher_stopped", owner=self.owner)

    async def _wake_on_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _wake_on_events(self) -> None:
        while True:
            await self.runtime.webhook_signal.wait(self.settings.worker_poll_seconds)
            self._maybe_due = True
            self._wake.set()

    async def _loop(self, stop: asyncio.Event) -> None:
        """All database work, one transaction at a time: the attempts finished since the last one are recorded
        and more due deliveries claimed together. While a transaction runs, finished attempts pile up for the next,
        so a busy dispatcher writes many per commit."""
        next_housekeeping = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            self._wake.clear()
            now = loop.time()
            room = self.concurrency - len(self._in_flight)
            # Claims wait for a quarter of the senders to be free, and attempts for a batch or RECORD_DELAY, so that
            # each transaction carries many; an idle dispatcher claims at once.
            claim = room if self._maybe_due and (room >= self._batch or not self._in_flight) else 0
            waited = now - self._finished_since
            write = self._finished and (len(self._finished) >= self._batch or waited >= RECORD_DELAY)
            if claim or write:
                finished, self._finished = self._finished, []
                if now >= next_housekeeping:
                    next_housekeeping = now + HOUSEKEEPING_SECONDS
                    await self._housekeeping()
                try:
                    for job in await self._write(finished, claim):
                        task = asyncio.create_task(self._deliver(job))
                        self._in_flight.add(task)
                        task.add_done_callback(self._done)
                except Exception:
                    self._finished[:0] = finished  # recorded next time; their leases are still held
                    log.exception("webhook_dispatcher_loop_failed", retry_seconds=self.settings.worker_poll_seconds)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.settings.worker_poll_seconds)
                continue
            timer = loop.call_later(RECORD_DELAY - waited, self._wake.set) if self._finished else None
            await self._wake.wait()
            if timer:
                timer.cancel()

    def _done(self, task: asyncio.Task) -> None:
        self._in_flight.discard(task)
        self._wake.set()

    async def _write(self, finished: list[_Finished], claim: int) -> list[_Job]:
        """One transaction: records `finished` and claims up to `claim` due deliveries."""
        deliveries: list[Row] = []
        async with self.runtime.engine.connect() as conn:  # committed explicitly: _record may roll back and go on
            now = utcnow()
            if finished:
                await self._record(conn, finished, now)
            if claim:
                deliveries = await repository.claim_due(conn, self.owner, now, now + self._lease, claim)
                events = await repository.events(conn, {d.event_id for d in deliveries})
                endpoints = await repository.endpoints(conn, {d.endpoint_id for d in deliveries})
            await conn.commit()
        if not claim:
            return []
        self._maybe_due = len(deliveries) == claim
        return [_Job(d, events[d.event_id], endpoints[d.endpoint_id]) for d in deliveries]

    async def _deliver(self, job: _Job) -> None:
        started = utcnow()
        try:
            result = await self._attempt(job)
        except Exception:
            # The lease expires and the delivery is attempted again; nothing is lost.
            log.exception("webhook_delivery_crashed", delivery=job.delivery.id)
            return
        WEBHOOK_ATTEMPTS.labels("success" if result.succeeded else "failure").inc()
        if not self._finished:
            self._finished_since = asyncio.get_running_loop().time()
        self._finished.append(_Finished(job, started, result))

    async def _attempt(self, job: _Job) -> _Result:
        event, endpoint = job.event, job.endpoint
        body = json.dumps(
            payload(event.id, event.type, event.created_at, event.data), separators=(",", ":"), ensure_ascii=False
        ).encode()
        clock = time.perf_counter()
        status_code = retry_after = None
        error = None
        try:
            address = await check_url(endpoint.url, self.settings)
            secrets = secrets_in_use(self.runtime.vault, endpoint, utcnow())
            headers = signing.headers(secrets, event.id, int(time.time()), body)
            url, extensions = pinned(endpoint.url, address, headers)
            # One deadline for the whole attempt, however slowly a receiver trickles its answer.
            async with asyncio.timeout(self.settings.webhook_timeout_seconds):
                request = self._http.stream("POST", url, content=body, headers=headers, extensions=extensions)
                async with request as response:
                    status_code = response.status_code
                    retry_after = _retry_after(response.headers.get("retry-after"))
                    await self._drain(response)
        except APIError as exc:
            error = exc.message
        except DecryptionError:
            error = "the signing secret cannot be decrypted: its encryption key is missing from this server"
        except (TimeoutError, httpx2.TimeoutException):
            if status_code is None:  # once the status has come, the answer counts by it, whatever its body does
                error = f"no answer within {self.settings.webhook_timeout_seconds:g} s"
        except httpx2.TransportError as exc:
            if status_code is None:
                error = f"could not connect: {exc}" if str(exc) else f"could not connect ({type(exc).__name__})"
        except Exception as exc:
            # Anything else (a URL the HTTP client cannot use, ...) is a failed attempt too, so that the delivery is
            # retried, fails in the end and counts against its webhook, rather than being leased again forever.
            log.warning("webhook_attempt_failed", delivery=job.delivery.id, error=type(exc).__name__)
            error = f"could not send ({type(exc).__name__})"
        if status_code is not None and not 200 <= status_code < 300:
            error = _answer_error(status_code)
        latency_ms = round((time.perf_counter() - clock) * 1000)
        return _Result(status_code, error, retry_after, latency_ms)

    async def _drain(self, response: httpx2.Response) -> None:
        """Reads at most webhook_max_response_bytes of the answer; the rest is dropped with the connection."""
        read = 0
        async for chunk in response.aiter_raw():
            read += len(chunk)
            if read >= self.settings.webhook_max_response_bytes:
                break

    async def _record(self, conn: AsyncConnection, finished: list[_Finished], now: datetime) -> None:
        """Writes the attempts, the deliveries' new states and their endpoints' health."""
        outcomes = [(f.job.delivery.id, self._outcome(f, now)) for f in finished]
        attempts = [
            {
                "delivery_id": f.job.delivery.id,
                "number": f.job.delivery.attempts,
                "status_code": f.result.status_code,
                "latency_ms": f.result.latency_ms,
                "error": f.result.error,
                "started_at": f.started,
            }
            for f in finished
        ]
        if not await repository.finish(conn, self.owner, outcomes, attempts):
            # Some lease was lost (another dispatcher took the delivery over): record the others one by one.
            await conn.rollback()
            kept = []
            for f, outcome, attempt in zip(finished, outcomes, attempts, strict=True):
                if await repository.finish(conn, self.owner, [outcome], [attempt]):
                    kept.append(f)
                else:
                    log.warning("webhook_lease_lost", delivery=f.job.delivery.id)
            finished = kept
        # One verdict per endpoint (any success means it is alive), written in id order so that concurrent
        # dispatchers lock endpoint rows in the same order.
        verdicts: dict[str, _Finished] = {}
        for f in finished:
            if f.job.endpoint.id not in verdicts or f.result.succeeded:
                verdicts[f.job.endpoint.id] = f
        for endpoint_id in sorted(verdicts):
            f = verdicts[endpoint_id]
            if f.result.succeeded:
                await repository.endpoint_succeeded(conn, endpoint_id)
            else:
                await self._note_failure(conn, f.job.endpoint, f.result, now)

    def _outcome(self, finished: _Finished, now: datetime) -> dict:
        """The delivery's new column values (the same columns whatever the outcome, for one batched UPDATE)."""
        delivery, result = finished.job.delivery, finished.result
        retry_until = delivery.retry_until or delivery.created_at + self._retry_window
        values = {
            "status": DeliveryStatus.failed,
            "next_attempt_at": now,
            "delivered_at": None,
            "last_status_code": result.status_code,
            "last_error": result.error,
            "updated_at": now,
        }
        if result.succeeded:
            values |= {"status": DeliveryStatus.succeeded, "delivered_at": now}
        elif result.retryable and now < retry_until:
            wait = backoff(self.settings.webhook_retry_base_seconds, delivery.attempts, result.retry_after, MAX_BACKOFF)
            values |= {"status": DeliveryStatus.pending, "next_attempt_at": min(now + wait, retry_until)}
        elif result.retryable:
            values["last_error"] = f"gave up after {delivery.attempts} attempts: {result.error}"
        return values

    async def _note_failure(self, conn: AsyncConnection, endpoint: Row, result: _Result, now: datetime) -> None:
        """Counts a failure against the endpoint; disables it once it has failed, without a success, for long enough."""
        failing_since = await repository.endpoint_failed(conn, endpoint.id, now, FAILURE_STREAK_GAP)
        if now - failing_since < self._disable_after:
            return
        reason = (
            f"Disabled at {now.isoformat(timespec='seconds')}: no delivery has succeeded since "
            f"{failing_since.isoformat(timespec='seconds')}. Last error: {result.error}"
        )
        if await repository.disable_endpoint(conn, endpoint.id, reason, now):
            log.warning("webhook_disabled", tenant_id=endpoint.tenant_id, webhook_id=endpoint.id)

    async def _housekeeping(self) -> None:
        """Forgets events past the retention period; a failure here waits for the next round, delivering goes on."""
        try:
            async with self.runtime.engine.begin() as conn:
                await repository.forget_events(conn, utcnow() - timedelta(days=self.settings.retention_days))
        except Exception:
            log.exception("webhook_housekeeping_failed", retry_seconds=HOUSEKEEPING_SECONDS)


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is ignored; the backoff applies then)."""
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return max(seconds, 0.0) if seconds is not None and math.isfinite(seconds) else None


def _answer_error(status_code: int) -> str:
    if 300 <= status_code < 400:
        return f"the receiver answered {status_code}; redirects are not followed"
    retried = status_code in RETRIED_STATUSES or status_code >= 500
    return f"the receiver answered {status_code}" + ("" if retried else "; only 408, 429 and 5xx answers are retried")


def pinned(url: str, address: str | None, headers: dict[str, str]) -> tuple[httpx2.URL, dict]:
    """The request for `url` sent to the checked `address`: the host stays in the Host header and, over https, in
    the TLS server name, against which the certificate is verified. Without an address, `url` as it is."""
    target = httpx2.URL(url)
    if address is None:
        return target, {}
    headers["host"] = target.netloc.decode("ascii")
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return target.copy_with(host=address), extensions
