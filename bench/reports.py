"""Latency of the reports at a million messages, over HTTP, next to the bare SQL behind them.

Seeds 1,000,000 messages over 1,000 users and the last 365 days into one tenant, straight into the database
(SQLite: executemany in chunks inside one transaction; PostgreSQL: COPY), then starts
`emailmcp serve --no-worker` on it. Messages are spread evenly over users and time; 92% sent, 6% failed,
1% cancelled, 1% queued; one or two recipients out of 5,000 addresses, a cc on one in ten. Bodies are kept
only for the last 30 days, as the default retention leaves them. SQLite gets no ANALYZE (the service never
runs one); PostgreSQL gets VACUUM ANALYZE after the COPY, which autovacuum would do on its own.

Measured, one request at a time (latency, not throughput), from this process over keep-alive HTTP:
- per user: GET /v1/reports/users/{id}?time_range=last_30_days for random users (about 82 messages each);
- summary: GET /v1/reports/summary?time_range=last_90_days (about 247,000 messages).
The floor is the same SQL statements, with the same parameters, captured from the service (run in this
process against the same database) and replayed through the plain driver (sqlite3 or psycopg): what the
database needs, without the key check, SQLAlchemy, the framework and HTTP.

SQLite by default (a fresh data dir); with EMAILMCP_BENCH_DATABASE_URL, which must name a fresh, empty
PostgreSQL database, PostgreSQL.

    .venv/bin/python bench/reports.py [--messages 1000000] [--users 1000] [--user-requests 200]
        [--summary-requests 30]
"""

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
from sqlalchemy import event, select

from emailmcp.db import create_engine, create_sessionmaker
from emailmcp.reports import service
from emailmcp.reports.schemas import TimeRange
from emailmcp.settings import Settings
from emailmcp.tenancy.models import Tenant
from emailmcp.tenancy.schemas import Scope, TenantContext

USER_TARGET_MS = 50  # per-user last_30_days report, p95
SUMMARY_TARGET_MS = 500  # tenant last_90_days summary, p95
CHUNK = 50_000
COLUMNS = [
    "id",
    "tenant_id",
    "user_pk",
    "status",
    "transport",
    "via_mailbox",
    "message_id",
    "from_address",
    "to",
    "cc",
    "bcc",
    "reply_to",
    "subject",
    "body_type",
    "body",
    "references",
    "size_bytes",
    "next_attempt_at",
    "attempts",
    "entry_point",
    "created_at",
    "updated_at",
    "sent_at",
]
QUOTED_COLUMNS = ", ".join(f'"{column}"' for column in COLUMNS)
STATUSES = ["sent"] * 92 + ["failed"] * 6 + ["cancelled", "queued"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def user_name(n: int) -> str:
    return f"user-{n:04d}"


def message_rows(tenant_id: int, user_pks: list[int], total: int, now: datetime, iso, days: int = 365):
    """The seeded messages in creation order over the last `days` days, `iso` turning a datetime into what the
    driver stores. Those of the last 30 days still have their body, as retention would leave them."""
    rng = random.Random(4)
    addresses = [f"rcpt{n}@example{n % 50}.com" for n in range(5000)]
    start = now - timedelta(days=days)
    step = timedelta(days=days) / total
    body_from = now - timedelta(days=30)
    for n in range(total):
        created = start + step * n
        status = rng.choice(STATUSES)
        to = rng.sample(addresses, rng.choice((1, 1, 1, 2)))
        cc = [rng.choice(addresses)] if rng.random() < 0.1 else []
        stamp = iso(created)
        yield (
            f"msg_{int(created.timestamp() * 1000):012x}{n:012x}",
            tenant_id,
            rng.choice(user_pks),
            status,
            "capture",
            False,
            f"<seed{n}@bench.example>",
            "sender@example.com",
            json.dumps(to),
            json.dumps(cc),
            "[]",
            "[]",
            f"Order {n} shipped",
            "text",
            "x" * 200 if created >= body_from else None,
            "[]",
            400,
            stamp,
            1,
            "rest",
            stamp,
            stamp,
            iso(created + timedelta(seconds=2)) if status == "sent" else None,
        )


def sqlite_stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def seed_sqlite(path: Path, total: int, users: int, now: datetime, days: int = 365) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        tenant_id = conn.execute("SELECT id FROM tenants WHERE name = 'default'").fetchone()[0]
        stamp = sqlite_stamp(now)
        conn.executemany(
            "INSERT INTO end_users (tenant_id, user_id, created_at, updated_at) VALUES (?, ?, ?, ?)",
            [(tenant_id, user_name(n), stamp, stamp) for n in range(users)],
        )
        user_pks = [row[0] for row in conn.execute("SELECT id FROM end_users WHERE tenant_id = ?", (tenant_id,))]
        insert = f"INSERT INTO messages ({QUOTED_COLUMNS}) VALUES ({', '.join('?' * len(COLUMNS))})"
        rows = message_rows(tenant_id, user_pks, total, now, sqlite_stamp, days)
        while chunk := [row for _, row in zip(range(CHUNK), rows, strict=False)]:
            conn.executemany(insert, chunk)
        conn.execute("COMMIT")
    finally:
        conn.close()


def seed_postgres(url: str, total: int, users: int, now: datetime, days: int = 365) -> None:
    import psycopg

    with psycopg.connect(url) as conn:
        tenant_id = conn.execute("SELECT id FROM tenants WHERE name = 'default'").fetchone()[0]
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO end_users (tenant_id, user_id, created_at, updated_at) VALUES (%s, %s, %s, %s)",
                [(tenant_id, user_name(n), now, now) for n in range(users)],
            )
        user_pks = [row[0] for row in conn.execute("SELECT id FROM end_users WHERE tenant_id = %s", (tenant_id,))]
        with conn.cursor().copy(f"COPY messages ({QUOTED_COLUMNS}) FROM STDIN") as copy:
            for row in message_rows(tenant_id, user_pks, total, now, lambda value: value, days):
                copy.write_row(row)
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


async def capture_statements(settings: Settings, user_ids: list[str]) -> tuple[list[list], list]:
    """The SQL the service runs for each user's report and for the summary, as sent to the driver."""
    engine = create_engine(settings)
    sessions = create_sessionmaker(engine)
    recorded: list = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        recorded.append((statement, parameters))

    try:
        async with sessions() as session:
            tenant_id = await session.scalar(select(Tenant.id).where(Tenant.name == "default"))
        ctx = TenantContext(tenant_id, "default", "bench", frozenset({Scope.mail}))
        per_user = []
        for user_id in user_ids:
            recorded.clear()
            async with sessions() as session:
                await service.user_report(session, ctx, user_id, TimeRange.last_30_days)
            per_user.append(list(recorded))
        recorded.clear()
        async with sessions() as session:
            await service.tenant_summary(session, ctx, TimeRange.last_90_days)
        return per_user, list(recorded)
    finally:
        await engine.dispose()


def replay(conn, statements: list) -> float:
    """Seconds to run the statements through the plain driver, fetching every row."""
    started = time.perf_counter()
    for statement, parameters in statements:
        conn.execute(statement, parameters).fetchall()
    return time.perf_counter() - started


def timed_get(client: httpx2.Client, path: str, params: dict) -> float:
    started = time.perf_counter()
    response = client.get(path, params=params)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--user-requests", type=int, default=200)
    parser.add_argument("--summary-requests", type=int, default=30)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="emailmcp-bench-reports-"))
    data_dir = workdir / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILMCP_")}
    env |= {"EMAILMCP_DATA_DIR": str(data_dir), "EMAILMCP_RATE_LIMIT": "0", "EMAILMCP_LOG_LEVEL": "warning"}
    pg_url = os.environ.get("EMAILMCP_BENCH_DATABASE_URL")
    if pg_url:
        env["EMAILMCP_DATABASE_URL"] = pg_url
        env["EMAILMCP_SECRET_KEY"] = "bench-" + "x" * 40
    settings = Settings(
        _env_file=None, data_dir=data_dir, database_url=pg_url, secret_key=env.get("EMAILMCP_SECRET_KEY")
    )
    emailmcp = str(Path(sys.executable).parent / "emailmcp")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = None
    try:
        subprocess.run([emailmcp, "migrate"], cwd=workdir, env=env, check=True, capture_output=True)
        key = subprocess.run(
            [emailmcp, "keys", "create", "--tenant", "default", "--scope", "mail"],
            cwd=workdir,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()[-1]
        now = datetime.now(UTC)
        started = time.perf_counter()
        if pg_url:
            plain_url = pg_url.replace("postgresql+psycopg://", "postgresql://")
            seed_postgres(plain_url, args.messages, args.users, now)
        else:
            seed_sqlite(settings.sqlite_path, args.messages, args.users, now)
        seeded = time.perf_counter() - started

        server = subprocess.Popen(
            [emailmcp, "serve", "--port", str(port), "--no-worker"],
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(300):
            try:
                if httpx2.get(f"{url}/health").status_code == 200:
                    break
            except httpx2.TransportError:
                time.sleep(0.1)

        rng = random.Random(7)
        user_ids = [user_name(rng.randrange(args.users)) for _ in range(args.user_requests)]
        with httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            timed_get(client, "/v1/reports/summary", {"time_range": "last_90_days"})  # warm the caches
            user_ms = [
                timed_get(client, f"/v1/reports/users/{user_id}", {"time_range": "last_30_days"}) * 1000
                for user_id in user_ids
            ]
            summary_ms = [
                timed_get(client, "/v1/reports/summary", {"time_range": "last_90_days"}) * 1000
                for _ in range(args.summary_requests)
            ]

        per_user_sql, summary_sql = asyncio.run(capture_statements(settings, user_ids))
        if pg_url:
            import psycopg

            conn = psycopg.connect(plain_url, autocommit=True)
        else:
            conn = sqlite3.connect(settings.sqlite_path)
        # One connection, warmed like the server's pooled ones, so the floor holds no connection set-up.
        with closing(conn):
            replay(conn, summary_sql)
            replay(conn, per_user_sql[0])
            user_floor = [replay(conn, statements) * 1000 for statements in per_user_sql]
            summary_floor = [replay(conn, summary_sql) * 1000 for _ in range(args.summary_requests)]

        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        print(
            f"{time.strftime('%Y-%m-%d')}  {platform.machine()}  {os.cpu_count()} cores  "
            f"Python {platform.python_version()}  {'PostgreSQL' if pg_url else 'SQLite'}  commit {commit}  "
            f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
        )
        print(f"seeded {args.messages:,} messages over {args.users:,} users and 365 days in {seeded:.0f} s")
        print(f"{'report':<34}{'p50 ms':>9}{'p95 ms':>9}{'SQL p50':>9}{'SQL p95':>9}{'target p95':>12}  met")
        for name, http, floor, target in (
            (f"per user, last_30_days (n={len(user_ms)})", user_ms, user_floor, USER_TARGET_MS),
            (f"summary, last_90_days (n={len(summary_ms)})", summary_ms, summary_floor, SUMMARY_TARGET_MS),
        ):
            p95 = percentile(http, 0.95)
            print(
                f"{name:<34}{statistics.median(http):>9.1f}{p95:>9.1f}{statistics.median(floor):>9.1f}"
                f"{percentile(floor, 0.95):>9.1f}{f'< {target}':>12}  {'met' if p95 < target else 'NOT MET'}"
            )
        print(f"statements per report: per user {len(per_user_sql[0])}, summary {len(summary_sql)}")
    finally:
        if server:
            server.terminate()
            server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
