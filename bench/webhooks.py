"""How fast webhooks go out, and what subscribing one costs the mail worker.

Starts `emailmcp serve --no-worker` (SQLite by default, or EMAILMCP_BENCH_DATABASE_URL, which must name a fresh,
empty PostgreSQL database) and a receiver, in a process of its own: a bare asyncio HTTP/1.1 server that answers
204 and only counts.

A. Dispatch. Each round stores N message.sent events for a subscribed webhook with the product's own outbox
   writer (`webhooks.events.emit`, one transaction), then starts one `emailmcp worker` and times the receiver's
   first to its N-th request. Baseline, in the same round: a plain httpx2 loop, in a process of its own, POSTing N
   bodies of the same size, signed the same way, at the same concurrency (EMAILMCP_WEBHOOK_CONCURRENCY, 32) to the
   same receiver. So the gap is the dispatcher's own work: claiming under a lease, and recording every attempt.
B. Cost on the send path. Each round queues N sends (capture transport, which only stores the MIME) and times
   `emailmcp worker` from its first message `sent` to its N-th, for a tenant with no webhook and for one with a
   webhook on message.sent (whose deliveries the same worker process also makes), alternating which goes first.

Medians over rounds; the load average is printed because both sides are CPU-bound on a shared machine.

    .venv/bin/python bench/webhooks.py [--events 2000] [--messages 2000] [--rounds 3]
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

from delivery import free_port, wait_until_serving
from emailmcp.db import utcnow
from emailmcp.runtime import Runtime
from emailmcp.settings import Settings
from emailmcp.webhooks import signing
from emailmcp.webhooks.events import emit, message_event, payload
from emailmcp.webhooks.schemas import EventType

CONCURRENCY = 32  # the dispatcher's default (EMAILMCP_WEBHOOK_CONCURRENCY)
STALL_SECONDS = 60
COUNT, FIRST_AT, LAST_AT = range(3)


# -- the receiver: its own process, counting into shared memory --------------------------------------------------


class Counting(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, Content-Length bodies only: enough for both senders, and cheap."""

    def __init__(self, stats) -> None:
        self.stats = stats
        self.buffer = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head, found, rest = self.buffer.partition(b"\r\n\r\n")
            if not found:
                return
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            now = time.monotonic()
            with self.stats.get_lock():
                if self.stats[COUNT] == 0:
                    self.stats[FIRST_AT] = now
                self.stats[COUNT] += 1
                self.stats[LAST_AT] = now
            self.transport.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")


def receiver_process(port: int, stats, ready) -> None:
    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(lambda: Counting(stats), "127.0.0.1", port)
        ready.set()
        await server.serve_forever()

    asyncio.run(serve())


def reset(stats) -> None:
    with stats.get_lock():
        for index in range(3):
            stats[index] = 0


def wait_for_requests(stats, total: int, sender) -> float:
    """Requests per second from the receiver's first to its `total`-th request."""
    seen, progress_at = -1, time.monotonic()
    while True:
        with stats.get_lock():
            count, first, last = int(stats[COUNT]), stats[FIRST_AT], stats[LAST_AT]
        if count >= total:
            return (total - 1) / (last - first)
        if count != seen:
            seen, progress_at = count, time.monotonic()
        exited = sender.poll() is not None if isinstance(sender, subprocess.Popen) else not sender.is_alive()
        if exited or time.monotonic() - progress_at > STALL_SECONDS:
            raise RuntimeError(f"the sender {'exited' if exited else 'stalled'} at {count}/{total} requests")
        time.sleep(0.005)


# -- the baseline: plain httpx2, signing as the dispatcher does ---------------------------------------------------


async def plain_loop(url: str, bodies: list[bytes], secret: str) -> None:
    queue = list(reversed(bodies))
    limits = httpx2.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx2.AsyncClient(limits=limits, timeout=30) as client:

        async def sender() -> None:
            while queue:
                body = queue.pop()
                webhook_id = json.loads(body)["id"]
                headers = signing.headers([secret], webhook_id, int(time.time()), body)
                response = await client.post(url, content=body, headers=headers | {"content-type": "application/json"})
                response.raise_for_status()

        await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))


def plain_process(url: str, bodies: list[bytes], secret: str) -> None:
    asyncio.run(plain_loop(url, bodies, secret))


# -- the product side ---------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args, env: dict, workdir: Path, url: str, key: str, receiver_url: str, stats) -> None:
        self.args, self.env, self.workdir, self.url, self.key = args, env, workdir, url, key
        self.receiver_url, self.stats = receiver_url, stats
        self.settings = Settings(
            data_dir=workdir / "data",
            database_url=env.get("EMAILMCP_DATABASE_URL"),
            secret_key=env.get("EMAILMCP_SECRET_KEY"),
        )
        self.emailmcp = str(Path(sys.executable).parent / "emailmcp")

    def rest(self, key: str | None = None) -> httpx2.Client:
        return httpx2.Client(base_url=self.url, headers={"Authorization": f"Bearer {key or self.key}"}, timeout=60)

    def tenant_key(self, name: str) -> str:
        result = subprocess.run(
            [self.emailmcp, "keys", "create", "--tenant", name, "--scope", "mail", "--scope", "admin"],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.strip().splitlines()[-1]

    def subscribe(self, key: str) -> dict:
        with self.rest(key) as client:
            response = client.post("/v1/webhooks", json={"url": self.receiver_url, "events": ["message.sent"]})
            response.raise_for_status()
            return response.json()

    def start_worker(self, log: Path) -> subprocess.Popen:
        with open(log, "a") as log_file:
            return subprocess.Popen(
                [self.emailmcp, "worker"], env=self.env, cwd=self.workdir, stdout=log_file, stderr=subprocess.STDOUT
            )

    def sql(self, statement: str) -> list[tuple]:
        url = self.env.get("EMAILMCP_DATABASE_URL")
        if url is None:
            with sqlite3.connect(self.workdir / "data" / "emailmcp.db") as conn:
                return conn.execute(statement).fetchall()
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            return conn.execute(statement).fetchall()

    async def store_events(self, tenant: str, count: int) -> list[bytes]:
        """N message.sent events through the product's outbox writer; returns their bodies as delivered."""
        [(tenant_id, user_pk)] = self.sql(
            "SELECT t.id, u.id FROM tenants t JOIN end_users u ON u.tenant_id = t.id "
            f"WHERE t.name = '{tenant}' ORDER BY u.id LIMIT 1"
        )
        runtime = Runtime.create(self.settings)
        try:
            now = utcnow()
            events = [
                message_event(
                    EventType.message_sent,
                    tenant_id,
                    user_pk,
                    id=f"msg_bench{n:08d}",
                    message_id=f"<bench{n}@example.com>",
                    status="sent",
                    transport="smtp",
                    attempts=1,
                    error=None,
                    refused_recipients=None,
                    sent_at=now,
                    provider_message_id=None,
                )
                for n in range(count)
            ]
            async with runtime.engine.begin() as conn:
                await emit(conn, events)
            async with runtime.engine.connect() as conn:
                rows = (await conn.exec_driver_sql("SELECT id, type, data FROM webhook_events ORDER BY id")).all()
        finally:
            await runtime.close()
        bodies = []
        for event_id, event_type, data in rows[-count:]:
            data = json.loads(data) if isinstance(data, str) else data
            body = payload(event_id, event_type, now, data)
            bodies.append(json.dumps(body, separators=(",", ":")).encode())
        return bodies

    def dispatch_round(self, tenant: str, secret: str) -> tuple[float, float]:
        bodies = asyncio.run(self.store_events(tenant, self.args.events))
        reset(self.stats)
        worker = self.start_worker(self.workdir / "worker.log")
        try:
            product = wait_for_requests(self.stats, self.args.events, worker)
        finally:
            worker.terminate()
            worker.wait(30)
        reset(self.stats)
        plain = multiprocessing.Process(target=plain_process, args=(self.receiver_url, bodies, secret))
        plain.start()
        baseline = wait_for_requests(self.stats, self.args.events, plain)
        plain.join(30)
        return product, baseline

    def send_round(self, key: str) -> float:
        """Messages sent per second by one worker draining N queued sends, from its first `sent` to its last."""
        with self.rest(key) as client:
            for n in range(self.args.messages):
                response = client.post("/v1/users/bench/messages", json={"to": ["a@example.com"], "body": f"n{n}"})
                response.raise_for_status()
        queued = "SELECT count(*) FROM messages WHERE status IN ('queued', 'sending')"
        started = time.monotonic()
        worker = self.start_worker(self.workdir / "worker.log")
        first = None
        try:
            while (left := self.sql(queued)[0][0]) > 0:
                if first is None and left < self.args.messages:
                    first = (time.monotonic(), left)
                if worker.poll() is not None or time.monotonic() - started > 300:
                    raise RuntimeError("the worker exited or stalled")
                time.sleep(0.01)
            finished = time.monotonic()
        finally:
            worker.terminate()
            worker.wait(30)
        if first is None:
            raise RuntimeError("the drain was too quick to measure; queue more messages")
        return first[1] / (finished - first[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="events per dispatch round")
    parser.add_argument("--messages", type=int, default=2000, help="sends per round of B")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    load_avg = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="emailmcp-bench-"))
    port, receiver_port = free_port(), free_port()
    url, receiver_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{receiver_port}/hooks"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILMCP_")}
    env |= {
        "EMAILMCP_DATA_DIR": str(workdir / "data"),
        "EMAILMCP_RATE_LIMIT": "0",
        "EMAILMCP_DAILY_SEND_CAP": str(10**9),
        "EMAILMCP_WEBHOOK_ALLOW_HTTP": "true",
        "EMAILMCP_WEBHOOK_ALLOW_PRIVATE_HOSTS": "true",
        "EMAILMCP_LOG_LEVEL": "warning",
    }
    if os.environ.get("EMAILMCP_BENCH_DATABASE_URL"):
        env["EMAILMCP_DATABASE_URL"] = os.environ["EMAILMCP_BENCH_DATABASE_URL"]
        env["EMAILMCP_SECRET_KEY"] = "bench-" + "x" * 40

    stats = multiprocessing.Array("d", 3)
    ready = multiprocessing.Event()
    receiver = multiprocessing.Process(target=receiver_process, args=(receiver_port, stats, ready), daemon=True)
    server = None
    server_log = workdir / "serve.log"
    try:
        receiver.start()
        ready.wait(10)
        with open(server_log, "w") as log_file:
            server = subprocess.Popen(
                [str(Path(sys.executable).parent / "emailmcp"), "serve", "--no-worker", "--port", str(port)],
                cwd=workdir,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        wait_until_serving(url, server, server_log)
        key = (workdir / "data" / "bootstrap-key").read_text().strip()
        bench = Bench(args, env, workdir, url, key, receiver_url, stats)

        dispatch_key = bench.tenant_key("bench-dispatch")
        secret = bench.subscribe(dispatch_key)["secret"]
        with bench.rest(dispatch_key) as client:
            client.post("/v1/users", json={"user_id": "bench"}).raise_for_status()
        quiet_key, subscribed_key = bench.tenant_key("bench-quiet"), bench.tenant_key("bench-subscribed")
        bench.subscribe(subscribed_key)

        dispatch = [bench.dispatch_round("bench-dispatch", secret) for _ in range(args.rounds)]
        sends: dict[str, list[float]] = {"no webhook": [], "webhook on message.sent": []}
        for round_no in range(args.rounds):  # alternating which goes first
            order = [("no webhook", quiet_key), ("webhook on message.sent", subscribed_key)]
            for name, key in order if round_no % 2 == 0 else reversed(order):
                sends[name].append(bench.send_round(key))
        database = "PostgreSQL" if "EMAILMCP_DATABASE_URL" in env else "SQLite"
        report(args, database, dispatch, sends, load_avg)
    except Exception:
        if server_log.exists():
            print(f"emailmcp serve log (tail):\n{server_log.read_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        receiver.terminate()
        shutil.rmtree(workdir, ignore_errors=True)


def report(args, database: str, dispatch: list[tuple[float, float]], sends: dict[str, list[float]], load_avg) -> None:
    med = statistics.median
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {database}")
    print(f"load average before: {load_avg[0]:.2f}; after: {os.getloadavg()[0]:.2f}; {args.rounds} rounds, medians")
    product, plain = med(r[0] for r in dispatch), med(r[1] for r in dispatch)
    print(f"\nA. Dispatch of {args.events} events at concurrency {CONCURRENCY}")
    print(f"   {'sender':<34}{'req/s':>8}{'vs plain loop':>16}")
    print(f"   {'plain httpx2 loop (signing)':<34}{plain:>8.0f}{'100%':>16}")
    print(f"   {'emailmcp worker (dispatcher)':<34}{product:>8.0f}{product / plain:>16.0%}")
    print(f"   per round (dispatcher/plain): {', '.join(f'{a:.0f}/{b:.0f}' for a, b in dispatch)}")
    quiet = med(sends["no webhook"])
    print(f"\nB. One worker draining {args.messages} queued sends (capture transport), from its first to its last")
    print(f"   {'tenant':<34}{'msg/s':>8}{'vs no webhook':>16}")
    for name, rates in sends.items():
        print(f"   {name:<34}{med(rates):>8.0f}{med(rates) / quiet:>16.0%}")


if __name__ == "__main__":
    main()
