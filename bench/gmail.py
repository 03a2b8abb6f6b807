"""How fast one delivery worker drains the outbox through the Gmail API, and what a token refresh costs it.

Starts a real OpenID Connect provider (tests/peers/oidc.py: oidc-provider on Node) standing in for Google's OAuth
endpoints, a Gmail API stand-in in a process of its own, and `emailmcp serve --no-worker` (SQLite by default, or
EMAILMCP_BENCH_DATABASE_URL, which must name a fresh, empty PostgreSQL database). One user is connected through the
real consent flow (POST /v1/oauth/authorize, the provider's login and consent pages, GET of the callback URL), so
the worker sends with the access token the provider issued and refreshes it with the provider's refresh token.

The stand-in answers POST /gmail/v1/users/me/messages/send like Gmail does when all is well (200 {"id",
"threadId", "labelIds": ["SENT"]}), after requiring an `Authorization: Bearer` header and decoding `raw`
(base64url MIME). It does not check tokens at the provider (tests/peers/gmail.py does, which makes it far too slow
here); it only counts messages, their bytes and the distinct bearer tokens it saw, into shared memory.

A. Delivery. Each round fills the outbox with N sends over HTTP for the connected user, then starts one
   `emailmcp worker --concurrency C` and waits until the stand-in has N messages. Baseline, in the same round: a
   plain httpx2.AsyncClient loop, in a process of its own, posting N requests with the same JSON body (the raw
   MIME of a message the worker sent) and the same bearer header to the same stand-in at the same concurrency,
   over a keep-alive connection pool of C connections, as the worker keeps one per sender. Rates run from the
   stand-in's first to its N-th message, so process start-up (shown apart) is left out; CPU columns are the
   sender's and the stand-in's CPU time over that window per message (Linux /proc).
B. Token refresh. After the rounds, the stored access token's expiry is set to the past in the database and N
   more messages are queued; one more worker drains them. It must refresh exactly once (the provider's count of
   refresh_token grants grows by exactly 1, and the stand-in sees one new bearer token). Only that worker runs
   with a timer around the refresh (`python -c` wrapping GoogleOAuth.refresh, the provider round trip, and
   GmailCredentials._refresh, which also stores the new token through the vault; nothing else changes), which
   gives the time of one refresh as the worker sees it. Its drain rate is printed next to the other rounds':
   the senders wait for the refresh before the first message, so it shows in the start-up, not in the rate.

Medians over rounds. The load average is printed because the baseline loop and the stand-in are CPU-bound: on a
shared machine their rate, and so every ratio, moves with whatever else is running.

    .venv/bin/python bench/gmail.py [--messages 1000] [--worker-concurrency 8] [--rounds 3]
        [--concurrency 32] [--body-bytes 1024]
"""

import argparse
import asyncio
import base64
import itertools
import json
import multiprocessing
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx2

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))  # the test peers: tests/peers/{oidc,browser}.py

from delivery import (  # noqa: E402
    BYTES,
    COUNT,
    DELIVERY_USER,
    FIRST_AT,
    LAST_AT,
    SENDER,
    Bench,
    Drain,
    drain,
    free_port,
    reset_sink,
    wait_until_serving,
)
from peers.browser import authorize_in_browser  # noqa: E402
from peers.oidc import OidcProvider  # noqa: E402

TOKENS = 4  # index in the stand-in's stats after delivery.py's four: distinct bearer tokens seen so far (not reset)
SEND_PATH = "/gmail/v1/users/me/messages/send"
REFRESH_MARK = "BENCH_REFRESH"

# `emailmcp worker` with a timer around the token refresh, for the refresh round only.
TIMED_WORKER = f"""
import sys, time
from emailmcp.oauth.credentials import GmailCredentials
from emailmcp.oauth.google import GoogleOAuth

def timed(cls, name):
    method = getattr(cls, name)

    async def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            print(f"{REFRESH_MARK} {{cls.__name__}}.{{name}} {{time.perf_counter() - started:.6f}}", file=sys.stderr,
                  flush=True)

    setattr(cls, name, wrapper)

timed(GoogleOAuth, "refresh")
timed(GmailCredentials, "_refresh")
from emailmcp.cli import app
app(prog_name="emailmcp")
"""


# -- the Gmail API stand-in: its own process, counting into shared memory ---------------------------------------


def gmail_error(code: int, status: str, message: str, reason: str) -> dict:
    return {"error": {"code": code, "message": message, "errors": [{"reason": reason}], "status": status}}


def keep_sample(path: Path, authorization: str, body: bytes) -> None:
    """The first request the stand-in answers, for the baseline to send: its bearer header and JSON body."""
    if not path.exists():
        path.write_text(json.dumps({"authorization": authorization, "body": body.decode()}))


def standin_process(port: int, stats, sample_path: Path) -> None:
    """uvicorn + Starlette; stopped with SIGTERM (uvicorn's graceful shutdown)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    os.setpgrp()  # out of the terminal's process group: on Ctrl-C the bench stops it
    tokens: set[str] = set()
    ids = itertools.count(0x18C0000000000000)

    async def send(request) -> JSONResponse:
        authorization = request.headers.get("authorization", "")
        if not authorization.startswith("Bearer ") or not authorization[7:].strip():
            return JSONResponse(gmail_error(401, "UNAUTHENTICATED", "Invalid Credentials", "authError"), 401)
        body = await request.body()
        try:
            encoded = json.loads(body)["raw"]
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (ValueError, KeyError, TypeError):
            raw = b""
        if b"\r\n\r\n" not in raw:
            return JSONResponse(gmail_error(400, "INVALID_ARGUMENT", "Invalid raw", "invalidArgument"), 400)
        now = time.monotonic()
        tokens.add(authorization)
        with stats.get_lock():
            if stats[COUNT] == 0:
                stats[FIRST_AT] = now
                keep_sample(sample_path, authorization, body)
            stats[COUNT] += 1
            stats[LAST_AT] = now
            stats[BYTES] += len(raw)
            stats[TOKENS] = len(tokens)
        message_id = f"{next(ids):016x}"
        return JSONResponse({"id": message_id, "threadId": message_id, "labelIds": ["SENT"]})

    app = Starlette(routes=[Route(SEND_PATH, send, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")


class GmailStandIn:
    def __init__(self, port: int, sample_path: Path) -> None:
        self.port = port
        self.api_base = f"http://127.0.0.1:{port}"
        self.stats = multiprocessing.Array("d", 5)
        self._process = multiprocessing.Process(target=standin_process, args=(port, self.stats, sample_path))

    @property
    def pid(self) -> int:
        return self._process.pid

    def start(self) -> None:
        self._process.start()
        for _ in range(300):
            if not self._process.is_alive():
                raise RuntimeError("the Gmail API stand-in exited")
            try:
                # Not counted: no bearer token, so 401.
                if httpx2.post(self.api_base + SEND_PATH, json={}).status_code == 401:
                    return
            except httpx2.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the Gmail API stand-in did not start")

    def stop(self) -> None:
        if self._process.pid is None:
            return
        self._process.terminate()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)

    def tokens_seen(self) -> int:
        with self.stats.get_lock():
            return int(self.stats[TOKENS])


# -- the baseline: a plain httpx2 loop over a keep-alive pool -------------------------------------------------------


async def plain_loop(url: str, authorization: str, body: dict, total: int, concurrency: int) -> None:
    remaining = total
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(limits=limits, timeout=60) as client:

        async def sender() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                response = await client.post(url, json=body, headers={"Authorization": authorization})
                if response.status_code != 200:
                    raise RuntimeError(f"the stand-in answered {response.status_code}: {response.text[:200]}")

        await asyncio.gather(*(sender() for _ in range(concurrency)))


def plain_process(url: str, authorization: str, body: dict, total: int, concurrency: int) -> None:
    os.setpgrp()  # out of the terminal's process group: on Ctrl-C the bench stops it
    asyncio.run(plain_loop(url, authorization, body, total, concurrency))


# -- the run --------------------------------------------------------------------------------------------------


def connect_gmail(url: str, key: str, user: str, login: str, callback_url: str) -> None:
    """The real consent flow: authorize, the provider's login and consent pages, then the browser's GET of the
    callback URL."""
    headers = {"Authorization": f"Bearer {key}"}
    httpx2.post(f"{url}/v1/users", json={"user_id": user}, headers=headers).raise_for_status()
    flow = httpx2.post(f"{url}/v1/oauth/authorize", json={"user_id": user}, headers=headers, timeout=30)
    flow.raise_for_status()
    callback = authorize_in_browser(flow.json()["authorization_url"], login, stop_at=callback_url)
    response = httpx2.get(callback, follow_redirects=False, timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"the OAuth callback answered {response.status_code}: {response.text[:300]}")
    profile = httpx2.get(f"{url}/v1/users/{user}/profile", headers=headers).json()
    if not profile.get("gmail_connected"):
        raise RuntimeError(f"the user's Gmail is not connected after the consent flow: {profile}")


def expire_access_token(env: dict, user: str) -> None:
    """Sets the stored access token's expiry to the past, behind the server's back."""
    statement = (
        "UPDATE mailboxes SET oauth_expires_at = '2000-01-01 00:00:00.000000' "
        "WHERE user_pk = (SELECT id FROM end_users WHERE user_id = {})"
    )
    if "EMAILMCP_DATABASE_URL" not in env:
        with closing(sqlite3.connect(Path(env["EMAILMCP_DATA_DIR"]) / "emailmcp.db")) as conn, conn:
            updated = conn.execute(statement.format("?"), (user,)).rowcount
    else:
        import psycopg

        url = env["EMAILMCP_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url, autocommit=True) as conn:
            updated = conn.execute(statement.format("%s"), (user,)).rowcount
    if updated != 1:
        raise RuntimeError(f"{updated} mailboxes updated when expiring the access token, expected 1")


@dataclass(frozen=True)
class Refresh:
    drain: Drain  # the round's drain, by the worker that refreshed
    grants: int  # refresh_token grants at the provider during the round
    tokens_before: int  # distinct bearer tokens the stand-in had seen before the round
    tokens_after: int
    round_trip_ms: float  # GoogleOAuth.refresh in the worker: the token endpoint's round trip
    with_store_ms: float  # GmailCredentials._refresh: the same plus storing the new token through the vault


class GmailBench(Bench):
    """delivery.py's Bench (filling the outbox over HTTP, counting pending messages) with a Gmail delivery round."""

    def __init__(self, args, env: dict, workdir: Path, url: str, key: str, server_pid: int, standin: GmailStandIn):
        super().__init__(args, env, workdir, url, key, server_pid, standin.port, standin)
        self.standin = standin

    def fill(self) -> None:
        args = self.args
        errors = self.load("enqueue", total=args.messages).errors
        if errors:
            raise RuntimeError(f"{len(errors)} of {args.messages} sends were refused while filling: {errors[0]}")
        pending = self.pending()
        if pending != args.messages:
            raise RuntimeError(f"{pending} messages pending before the worker started, expected {args.messages}")

    def drain_with_worker(self, name: str, timed: bool = False) -> tuple[Drain, Path]:
        reset_sink(self.stats)
        log = self.workdir / f"worker-{name}.log"
        command = [sys.executable, "-c", TIMED_WORKER] if timed else [str(Path(sys.executable).parent / "emailmcp")]
        with open(log, "w") as log_file:
            worker = subprocess.Popen(
                [*command, "worker", "--concurrency", str(self.args.worker_concurrency)],
                cwd=self.workdir,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                process_group=0,  # on Ctrl-C the bench stops it
            )
        try:
            by_worker = drain(self.stats, self.args.messages, worker, self.standin.pid, log)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        if self.pending():
            raise RuntimeError(f"the worker left messages pending in the outbox\n{log.read_text()[-3000:]}")
        return by_worker, log

    def delivery_round(self, round_no: int) -> tuple[Drain, Drain]:
        """Fills the outbox, drains it with one worker, then sends as many with the plain loop."""
        args = self.args
        self.fill()
        by_worker, _ = self.drain_with_worker(str(round_no))

        sample = json.loads((self.workdir / "sample.json").read_text())
        reset_sink(self.stats)
        plain = multiprocessing.Process(
            target=plain_process,
            args=(
                self.standin.api_base + SEND_PATH,
                sample["authorization"],
                json.loads(sample["body"]),
                args.messages,
                args.worker_concurrency,
            ),
        )
        plain.start()
        try:
            by_plain = drain(self.stats, args.messages, plain, self.standin.pid, None)
        finally:
            plain.join(30)
            if plain.is_alive():
                plain.kill()
        return by_worker, by_plain

    def refresh_round(self, oidc: OidcProvider) -> Refresh:
        """Expires the stored access token, fills the outbox and drains it with one timed worker."""
        grants = oidc.grants("refresh_token")
        tokens = self.standin.tokens_seen()
        expire_access_token(self.env, DELIVERY_USER)
        self.fill()
        by_worker, log = self.drain_with_worker("refresh", timed=True)
        refreshes = oidc.grants("refresh_token") - grants
        timings: dict[str, list[float]] = {}
        for line in log.read_text().splitlines():
            if line.startswith(REFRESH_MARK):
                _, name, seconds = line.split()
                timings.setdefault(name, []).append(float(seconds))
        if refreshes != 1 or any(len(times) != 1 for times in timings.values()) or len(timings) != 2:
            raise RuntimeError(
                f"expected exactly one token refresh: {refreshes} refresh grants at the provider, "
                f"timed in the worker: {timings}\n{log.read_text()[-3000:]}"
            )
        return Refresh(
            drain=by_worker,
            grants=refreshes,
            tokens_before=tokens,
            tokens_after=self.standin.tokens_seen(),
            round_trip_ms=timings["GoogleOAuth.refresh"][0] * 1000,
            with_store_ms=timings["GmailCredentials._refresh"][0] * 1000,
        )


def report(args, database: str, delivery: list[tuple[Drain, Drain]], refresh: Refresh, load_avg) -> None:
    def med(values) -> float:
        return statistics.median(list(values))

    print(
        f"{time.strftime('%Y-%m-%d')}  {platform.machine()}  {os.cpu_count()} cores  "
        f"Python {platform.python_version()}  {database}  load average {load_avg[0]:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after"
    )
    print()
    rounds = f"{args.rounds} round{'s' if args.rounds != 1 else ''}"
    size = med(w.size for w, _ in delivery)
    print(
        f"A. Gmail delivery: {args.messages} messages of {size:.0f} bytes (raw MIME), pre-filled outbox -> local\n"
        f"   Gmail API stand-in, one user connected over OAuth, concurrency {args.worker_concurrency}, keep-alive "
        f"connections\n   by both; {rounds}, medians; msg/s first to last message"
    )
    print(f"   {'sender':<24}{'msg/s':>8}{'start-up s':>12}{'CPU ms/msg':>12}{'stand-in ms/msg':>17}{'vs plain':>10}")
    plain_rate = med(p.rate for _, p in delivery)
    for name, index in (("plain httpx2 loop", 1), ("emailmcp worker", 0)):
        runs = [pair[index] for pair in delivery]
        rate, startup = med(r.rate for r in runs), med(r.startup for r in runs)
        cpu, sink_cpu = med(r.sender_cpu_ms for r in runs), med(r.sink_cpu_ms for r in runs)
        print(f"   {name:<24}{rate:>8.0f}{startup:>12.2f}{cpu:>12.2f}{sink_cpu:>17.2f}{rate / plain_rate:>9.0%}")
    worker_rate = med(w.rate for w, _ in delivery)
    print(f"   worker / plain loop: {worker_rate / plain_rate:.0%}")
    print(
        "   per round, msg/s: worker "
        + ", ".join(f"{w.rate:.0f}" for w, _ in delivery)
        + "; plain loop "
        + ", ".join(f"{p.rate:.0f}" for _, p in delivery)
    )
    print()

    print(f"B. Token refresh: the stored access token expired (in the database) before {args.messages} more messages")
    print(
        f"   refresh_token grants at the provider during the drain: {refresh.grants} (must be exactly 1);\n"
        f"   bearer tokens seen by the stand-in: {refresh.tokens_before} before, {refresh.tokens_after} after"
    )
    print(
        f"   one refresh, timed in the worker: {refresh.round_trip_ms:.1f} ms round trip to the token endpoint, "
        f"{refresh.with_store_ms:.1f} ms\n   with storing the new token"
    )
    startup = med(w.startup for w, _ in delivery)
    print(f"   {'worker round':<24}{'msg/s':>8}{'start-up s':>12}{'CPU ms/msg':>12}{'stand-in ms/msg':>17}{'vs A':>10}")
    print(
        f"   {'A (median, no refresh)':<24}{worker_rate:>8.0f}{startup:>12.2f}"
        f"{med(w.sender_cpu_ms for w, _ in delivery):>12.2f}{med(w.sink_cpu_ms for w, _ in delivery):>17.2f}"
        f"{1:>9.0%}"
    )
    by_refresh = refresh.drain
    print(
        f"   {'with one refresh':<24}{by_refresh.rate:>8.0f}{by_refresh.startup:>12.2f}"
        f"{by_refresh.sender_cpu_ms:>12.2f}{by_refresh.sink_cpu_ms:>17.2f}{by_refresh.rate / worker_rate:>9.0%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages per delivery round")
    parser.add_argument("--worker-concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32, help="HTTP connections for filling the outbox")
    parser.add_argument("--body-bytes", type=int, default=1024, help="size of the text body of every message")
    args = parser.parse_args()
    # A plain `kill` cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    load_avg = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="emailmcp-bench-gmail-"))
    port, gmail_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    callback_url = f"{url}/v1/oauth/callback"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILMCP_")}
    env |= {
        "EMAILMCP_DATA_DIR": str(workdir / "data"),
        "EMAILMCP_RATE_LIMIT": "0",
        "EMAILMCP_DAILY_SEND_CAP": str(10**9),
        "EMAILMCP_LOG_LEVEL": "warning",
        "EMAILMCP_PUBLIC_URL": url,
        "EMAILMCP_GMAIL_API_BASE": f"http://127.0.0.1:{gmail_port}",
    }
    if os.environ.get("EMAILMCP_BENCH_DATABASE_URL"):
        env["EMAILMCP_DATABASE_URL"] = os.environ["EMAILMCP_BENCH_DATABASE_URL"]
        env["EMAILMCP_SECRET_KEY"] = "bench-" + "x" * 40

    oidc = OidcProvider([callback_url])
    standin = GmailStandIn(gmail_port, workdir / "sample.json")
    server_log = workdir / "serve.log"
    emailmcp = str(Path(sys.executable).parent / "emailmcp")
    server = None
    try:
        oidc.start()
        env |= oidc.emailmcp_env()
        standin.start()
        with open(server_log, "w") as log_file:
            server = subprocess.Popen(
                [emailmcp, "serve", "--no-worker", "--port", str(port)],
                cwd=workdir,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                process_group=0,  # on Ctrl-C the bench stops it
            )
        wait_until_serving(url, server, server_log)
        key = (workdir / "data" / "bootstrap-key").read_text().strip()
        connect_gmail(url, key, DELIVERY_USER, SENDER, callback_url)

        bench = GmailBench(args, env, workdir, url, key, server.pid, standin)
        delivery = [bench.delivery_round(n) for n in range(args.rounds)]
        refresh = bench.refresh_round(oidc)
        report(args, "PostgreSQL" if "EMAILMCP_DATABASE_URL" in env else "SQLite", delivery, refresh, load_avg)
    except Exception:
        if server_log.exists():
            print(f"emailmcp serve log (tail):\n{server_log.read_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the clean-up short
        if server is not None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
        standin.stop()
        oidc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
