"""Requests per second and latency of the dashboard's pages next to GET /health, on a seeded tenant.

Seeds 200 users and 20,000 messages over the last 30 days into one tenant of a fresh database, straight into the
database as bench/reports.py does (SQLite: executemany in one transaction; PostgreSQL: COPY, then VACUUM ANALYZE),
with its mix: 92% sent, 6% failed, 1% cancelled, 1% queued, one or two recipients, a cc on one in ten. Creates a key
with the mail scope with `emailmcp keys create`, starts `emailmcp serve --no-worker` on the database (rate limits
off) and signs in once, as a browser does: GET /dashboard/sign-in for the form's csrf_token and its cookie, then
POST /dashboard/sign-in (api_key, csrf_token) -> 303 and the session cookie.

A load process of its own (as in bench/http_overhead.py) holds N async httpx2 clients with that cookie, one
connection each, and drives each page for --seconds at 1 and at N clients, in rounds (an untimed one first; the
pages take turns, in reverse order every other round):

  health    GET /health                          no session, no database: the baseline
  overview  GET /dashboard                       tenant summary for the last 30 days, chart and per-day table
  users     GET /dashboard/users                 the first 50 users
  user      GET /dashboard/users/{id}            a user's last 30 days and mailbox (the users take turns)
  messages  GET /dashboard/messages              the newest 50 messages, the whole page
  rows      GET /dashboard/messages/rows         the same 50 rows alone: the htmx partial polled every second

Per row: requests per second, p50 and p99 latency, server CPU per request (the `serve` process, Linux /proc), the
response's size, and the rate as a share of /health's at the same number of clients; medians over rounds. Then,
in this process on the same database, where a page's time goes: the domain service's calls alone (the queries
through SQLAlchemy, as the page makes them) and the template's rendering alone, one at a time, medians.

SQLite by default (a fresh data dir); with EMAILMCP_BENCH_DATABASE_URL, which must name a fresh, empty
PostgreSQL database, PostgreSQL.

    .venv/bin/python bench/dashboard.py [--seconds 1.5] [--rounds 3] [--concurrency 8] [--users 200]
        [--messages 20000] [--days 30] [--pages health,overview,users,user,messages,rows]
"""

import argparse
import asyncio
import multiprocessing
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx2
from sqlalchemy import select

from delivery import cpu_seconds
from emailmcp.dashboard import endpoints, presenters
from emailmcp.dashboard.auth import SESSION_COOKIE, Viewer
from emailmcp.db import create_engine, create_sessionmaker
from emailmcp.mail import service as mail
from emailmcp.reports import service as reports_service
from emailmcp.reports.schemas import TimeRange
from emailmcp.settings import Settings
from emailmcp.tenancy.models import Tenant
from emailmcp.tenancy.schemas import Scope, TenantContext
from emailmcp.users import service as users_service
from http_overhead import database_name, free_port
from reports import seed_postgres, seed_sqlite, user_name

PAGES = {
    "health": "GET /health",
    "overview": "GET /dashboard",
    "users": "GET /dashboard/users",
    "user": "GET /dashboard/users/{id}",
    "messages": "GET /dashboard/messages",
    "rows": "GET /dashboard/messages/rows",
}
WARMUP_SECONDS = 0.3  # per page and concurrency, in the untimed round
BREAKDOWN_CALLS = 30  # per page, for the in-process split


# -- the server and signing in ------------------------------------------------------------------------------------


class Server:
    """A fresh data dir (or EMAILMCP_BENCH_DATABASE_URL), migrated, a mail key, the seed, `serve --no-worker`."""

    def __init__(self, args) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="emailmcp-bench-dashboard-"))
        self.pg_url = os.environ.get("EMAILMCP_BENCH_DATABASE_URL")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILMCP_")}
        self.env |= {
            "EMAILMCP_DATA_DIR": str(self.workdir / "data"),
            "EMAILMCP_RATE_LIMIT": "0",
            "EMAILMCP_LOG_LEVEL": "warning",
        }
        if self.pg_url:
            self.env["EMAILMCP_DATABASE_URL"] = self.pg_url
            self.env["EMAILMCP_SECRET_KEY"] = "bench-" + "x" * 40
        self.settings = Settings(
            _env_file=None,
            data_dir=self.workdir / "data",
            database_url=self.pg_url,
            secret_key=self.env.get("EMAILMCP_SECRET_KEY"),
        )
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process: subprocess.Popen | None = None
        self.emailmcp(["migrate"])
        self.key = self.emailmcp(["keys", "create", "--tenant", "default", "--scope", "mail", "--name", "bench"])
        self.key = self.key.split()[-1]
        started = time.perf_counter()
        now = datetime.now(UTC)
        if self.pg_url:
            seed_postgres(self.pg_url.replace("postgresql+psycopg://", "postgresql://"), *self.seed_args(args, now))
        else:
            seed_sqlite(self.settings.sqlite_path, *self.seed_args(args, now))
        self.seeded = time.perf_counter() - started

    @staticmethod
    def seed_args(args, now: datetime) -> tuple:
        return args.messages, args.users, now, args.days

    def emailmcp(self, arguments: list[str]) -> str:
        command = [str(Path(sys.executable).parent / "emailmcp"), *arguments]
        return subprocess.run(
            command, cwd=self.workdir, env=self.env, check=True, capture_output=True, text=True
        ).stdout

    def start(self) -> None:
        port = self.url.rsplit(":", 1)[1]
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "emailmcp"), "serve", "--port", port, "--no-worker"],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(300):
            try:
                if httpx2.get(f"{self.url}/health").status_code == 200:
                    return
            except httpx2.TransportError:
                time.sleep(0.1)
        raise RuntimeError("emailmcp serve did not answer /health")

    def stop(self) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def sign_in(url: str, key: str) -> str:
    """The session cookie's value, signing in as a browser does."""
    with httpx2.Client(base_url=url, timeout=30) as client:
        form = client.get("/dashboard/sign-in")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        if form.status_code != 200 or token is None:
            raise RuntimeError(f"GET /dashboard/sign-in: {form.status_code} {form.text[:300]}")
        answer = client.post("/dashboard/sign-in", data={"api_key": key, "csrf_token": token.group(1)})
        cookie = client.cookies.get(SESSION_COOKIE)
        if answer.status_code != 303 or not cookie:
            raise RuntimeError(f"POST /dashboard/sign-in: {answer.status_code} {answer.text[:300]}")
        overview = client.get("/dashboard")
        if overview.status_code != 200 or "Top senders" not in overview.text:
            raise RuntimeError(f"GET /dashboard after signing in: {overview.status_code} {overview.text[:300]}")
        return cookie


# -- the load process ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    rate: float  # requests per second
    p50_ms: float
    p99_ms: float
    errors: int
    first_error: str | None
    server_cpu_ms: float  # per request
    kilobytes: float  # median response body


def target(page: str, n: int, users: int) -> str:
    if page == "health":
        return "/health"
    if page == "overview":
        return "/dashboard"
    if page == "users":
        return "/dashboard/users"
    if page == "user":
        return f"/dashboard/users/{user_name(n % users)}"
    if page == "messages":
        return "/dashboard/messages"
    return "/dashboard/messages/rows"


async def measure(clients, server_pid: int, page: str, concurrency: int, seconds: float, users: int) -> Measurement:
    latencies: list[float] = []
    sizes: list[int] = []
    errors: list[str] = []
    counter = iter(range(10**9))
    headers = {"HX-Request": "true"} if page == "rows" else {}

    async def worker(client) -> None:
        while time.perf_counter() < deadline:
            path = target(page, next(counter), users)
            started = time.perf_counter()
            response = await client.get(path, headers=headers)
            latencies.append(time.perf_counter() - started)
            sizes.append(len(response.content))
            if response.status_code != 200:
                errors.append(f"{path}: {response.status_code} {response.text[:200]}")

    server_cpu, started = cpu_seconds(server_pid), time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(worker(client) for client in clients[:concurrency]))
    elapsed = time.perf_counter() - started
    server_cpu = cpu_seconds(server_pid) - server_cpu
    latencies.sort()
    return Measurement(
        rate=len(latencies) / elapsed,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        errors=len(errors),
        first_error=errors[0] if errors else None,
        server_cpu_ms=server_cpu / len(latencies) * 1000,
        kilobytes=statistics.median(sizes) / 1024,
    )


async def serve_measurements(conn, url: str, cookie: str, server_pid: int, clients: int, users: int) -> None:
    loop = asyncio.get_running_loop()
    opened = [
        httpx2.AsyncClient(
            base_url=url,
            cookies={SESSION_COOKIE: cookie},
            limits=httpx2.Limits(max_connections=1, max_keepalive_connections=1),
            timeout=60,
        )
        for _ in range(clients)
    ]
    try:
        conn.send("ready")
        while (request := await loop.run_in_executor(None, conn.recv)) is not None:
            try:
                conn.send(await measure(opened, server_pid, *request, users))
            except Exception as exc:
                conn.send(RuntimeError(repr(exc)))
    finally:
        for client in opened:
            await client.aclose()


def load_process(conn, *args) -> None:
    try:
        asyncio.run(serve_measurements(conn, *args))
    except Exception as exc:
        conn.send(RuntimeError(repr(exc)))


class LoadProcess:
    """The clients in a process of their own, so that their CPU is not the driver's or the server's."""

    def __init__(self, url: str, cookie: str, server_pid: int, clients: int, users: int) -> None:
        self.conn, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(
            target=load_process, args=(child, url, cookie, server_pid, clients, users), daemon=True
        )
        self.process.start()
        self.answer()

    def answer(self):
        result = self.conn.recv()
        if isinstance(result, Exception):
            raise result
        return result

    def measure(self, page: str, concurrency: int, seconds: float) -> Measurement:
        self.conn.send((page, concurrency, seconds))
        return self.answer()

    def stop(self) -> None:
        if self.process.is_alive():
            self.conn.send(None)
            self.process.join(30)


# -- where the time goes: the service's calls and the template, in this process ----------------------------------


async def breakdown(settings: Settings, users: int, calls: int) -> dict[str, tuple[float, float]]:
    """Per page, the median ms of its service calls and of rendering its template, one call at a time."""
    engine = create_engine(settings)
    sessions = create_sessionmaker(engine)
    try:
        async with sessions() as session:
            tenant_id = await session.scalar(select(Tenant.id).where(Tenant.name == "default"))
        ctx = TenantContext(tenant_id, "default", "bench", frozenset({Scope.mail}))
        viewer = Viewer(tenant=ctx, session_id="bench", csrf_token="bench")
        base = {"viewer": viewer, "scopes": {Scope.mail.value}, "capture": True}
        month = TimeRange.last_30_days

        async def overview(n: int) -> tuple[str, dict]:
            async with sessions() as session:
                summary = await reports_service.tenant_summary(session, ctx, month)
            figures = presenters.chart_figures(summary)
            return "overview.html", {"summary": summary, "figures": figures, "ranges": endpoints.RANGES}

        async def users_page(n: int) -> tuple[str, dict]:
            async with sessions() as session:
                page = await users_service.list_users(session, ctx, None, 50)
            return "users.html", {"page": page, "error": ""}

        async def user(n: int) -> tuple[str, dict]:
            async with sessions() as session:
                report = await reports_service.user_report(session, ctx, user_name(n % users), month)
                mailbox = await users_service.get_mailbox(session, ctx, user_name(n % users))
            context = {"report": report, "figures": presenters.chart_figures(report), "mailbox": mailbox}
            context |= {"ranges": endpoints.RANGES, "gmail_configured": False}
            return "user.html", context | {"connect_status": None, "connect_error": None}

        async def messages(n: int, template: str = "messages.html") -> tuple[str, dict]:
            async with sessions() as session:
                page = await mail.list_messages(session, ctx, None, None, None, 50)
            return template, {"page": page, "user_id": "", "status": "", "statuses": endpoints.STATUSES}

        async def rows(n: int) -> tuple[str, dict]:
            return await messages(n, "_message_rows.html")

        results = {}
        for page, call in (
            ("overview", overview),
            ("users", users_page),
            ("user", user),
            ("messages", messages),
            ("rows", rows),
        ):
            await call(0)  # warm: statements compiled, templates loaded
            service_ms, render_ms = [], []
            for n in range(calls):
                started = time.perf_counter()
                template, context = await call(n)
                service_ms.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                endpoints.templates.get_template(template).render(base | context)
                render_ms.append((time.perf_counter() - started) * 1000)
            results[page] = (statistics.median(service_ms), statistics.median(render_ms))
        return results
    finally:
        await engine.dispose()


# -- the report -----------------------------------------------------------------------------------------------


def report(args, server: Server, results, split, load_avg, elapsed: float) -> None:
    def med(values) -> float:
        return statistics.median(list(values))

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(
        f"{time.strftime('%Y-%m-%d')}  {platform.machine()}  {os.cpu_count()} cores  "
        f"Python {platform.python_version()}  {database_name()}  commit {commit}  load average "
        f"{load_avg[0]:.2f} before, {os.getloadavg()[0]:.2f} after  ({elapsed:.0f} s)"
    )
    print(
        f"seeded {args.messages:,} messages over {args.users} users and {args.days} days in {server.seeded:.1f} s; "
        f"{args.rounds} rounds of {args.seconds:g} s per row, medians; ratio: req/s over /health's"
    )
    print(
        f"{'page':<30}{'clients':>8}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'server ms':>11}"
        f"{'KB':>7}{'vs /health':>12}"
    )
    for concurrency in args.levels:
        base = med(m.rate for m in results["health", concurrency]) if "health" in args.pages else None
        for page in args.pages:
            runs = results[page, concurrency]
            rate = med(m.rate for m in runs)
            ratio = f"{rate / base:>11.0%}" if base else f"{'':>11}"
            print(
                f"{PAGES[page]:<30}{concurrency:>8}{rate:>8.0f}{med(m.p50_ms for m in runs):>9.1f}"
                f"{med(m.p99_ms for m in runs):>9.1f}{sum(m.errors for m in runs):>8}"
                f"{med(m.server_cpu_ms for m in runs):>11.2f}{med(m.kilobytes for m in runs):>7.1f} {ratio}"
            )
    if split:
        print(f"\nin-process, one at a time, medians of {BREAKDOWN_CALLS}: the service's calls and the template")
        print(f"{'page':<30}{'service ms':>11}{'render ms':>11}")
        for page, (service_ms, render_ms) in split.items():
            print(f"{PAGES[page]:<30}{service_ms:>11.2f}{render_ms:>11.2f}")
    failures = [(key, m.first_error) for key, runs in results.items() for m in runs if m.first_error]
    for (page, concurrency), error in failures[:5]:
        print(f"error: {page} x{concurrency}: {error}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per page, concurrency and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8, help="clients of the concurrent rows (besides 1)")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--pages", default=",".join(PAGES), help=f"comma-separated, of: {', '.join(PAGES)}")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the in-process service/template split")
    args = parser.parse_args()
    args.pages = [page for page in args.pages.split(",") if page]
    if unknown := set(args.pages) - set(PAGES):
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    args.levels = sorted({1, args.concurrency})

    load_avg, started = os.getloadavg(), time.perf_counter()
    server = Server(args)
    load: LoadProcess | None = None
    try:
        server.start()
        cookie = sign_in(server.url, server.key)
        load = LoadProcess(server.url, cookie, server.process.pid, max(args.levels), args.users)
        plan = [(page, concurrency) for concurrency in args.levels for page in args.pages]
        results: dict[tuple[str, int], list[Measurement]] = {key: [] for key in plan}
        for round_number in range(-1, args.rounds):  # round -1: the untimed pass
            seconds = WARMUP_SECONDS if round_number < 0 else args.seconds
            for page, concurrency in plan if round_number % 2 == 0 else plan[::-1]:
                if server.process.poll() is not None:
                    raise RuntimeError(f"emailmcp serve exited with status {server.process.returncode}")
                measurement = load.measure(page, concurrency, seconds)
                if round_number >= 0:
                    results[page, concurrency].append(measurement)
        split = None
        if not args.no_breakdown:
            split = asyncio.run(breakdown(server.settings, args.users, BREAKDOWN_CALLS))
        report(args, server, results, split, load_avg, time.perf_counter() - started)
    finally:
        if load:
            load.stop()
        server.stop()


if __name__ == "__main__":
    main()
