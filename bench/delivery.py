"""How fast one delivery worker drains the outbox, and how fast the API accepts sends.

Starts `emailmcp serve --no-worker` (SQLite by default, or EMAILMCP_BENCH_DATABASE_URL, which must name a fresh,
empty PostgreSQL database) and a local aiosmtpd sink, in a process of its own, that only counts what it receives.

A. Delivery. Each round fills the outbox with N sends over HTTP for a user whose SMTP mailbox (security none) is
   the sink, then starts one `emailmcp worker --concurrency C` and waits until the sink has N messages. Baseline,
   in the same round: a plain aiosmtplib loop, in a process of its own, sending N messages with the same bytes and
   envelope to the same sink at the same concurrency and with the worker's connection handling: each sender keeps
   its connection open for up to MAX_MESSAGES_PER_CONNECTION messages, like the worker's SmtpPool (with
   --connection-per-message, one connection per message, like SmtpTransport without a pool). Rates run
   from the sink's first to its N-th message, so process start-up (shown apart) is left out; CPU columns are the
   sender's and the sink's CPU time over that window per message (Linux /proc).
B. Enqueue. Accepted sends (POST /v1/users/{id}/messages, 202) per second from a separate load process at a fixed
   concurrency (each connection sends for a user of its own), next to GET /health on the same server. The server
   runs --no-worker, so no delivery competes with the API.

Medians over rounds. The load average is printed because the baseline loop is CPU-bound: on a shared machine its
rate, and so every ratio, moves with whatever else is running.

    .venv/bin/python bench/delivery.py [--messages 2000] [--worker-concurrency 8] [--rounds 3]
        [--seconds 5] [--concurrency 32] [--body-bytes 1024] [--connection-per-message]
"""

import argparse
import asyncio
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
import httpx2
from aiosmtpd.controller import Controller

from emailmcp.mail.transports.smtp import MAX_MESSAGES_PER_CONNECTION

SENDER = "bench@example.com"
RECIPIENT = "rcpt@example.com"
DELIVERY_USER = "bench-delivery"
STALL_SECONDS = 60  # give up when the sink sees no new message for this long

# Targets from the issue.
DELIVERY_TARGET = 0.80  # worker rate / plain aiosmtplib rate
ENQUEUE_TARGET = 0.50  # accepted sends per second / GET /health per second
ENQUEUE_SQLITE_FLOOR = 500  # accepted sends per second on SQLite


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far; NaN where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the SMTP sink: its own process, counting into shared memory ------------------------------------------------

COUNT, FIRST_AT, LAST_AT, BYTES = range(4)


class CountingHandler:
    """Accepts every message; counts them and their bytes, times the first and last, keeps one as a sample."""

    def __init__(self, stats, sample_path: Path) -> None:
        self.stats = stats  # multiprocessing.Array("d", 4): count, first and last time.monotonic(), total bytes
        self.sample_path = sample_path

    async def handle_DATA(self, server, session, envelope) -> str:
        now = time.monotonic()
        raw = envelope.original_content or b""
        with self.stats.get_lock():
            if self.stats[COUNT] == 0:
                self.stats[FIRST_AT] = now
                if not self.sample_path.exists():
                    self.sample_path.write_bytes(raw)
            self.stats[COUNT] += 1
            self.stats[LAST_AT] = now
            self.stats[BYTES] += len(raw)
        return "250 2.0.0 OK: queued"


def sink_process(port: int, stats, sample_path: Path, ready, stop) -> None:
    controller = Controller(
        CountingHandler(stats, sample_path), hostname="127.0.0.1", port=port, server_hostname="localhost"
    )
    controller.start()
    ready.set()
    stop.wait()
    controller.stop()


def reset_sink(stats) -> None:
    with stats.get_lock():
        for index in range(4):
            stats[index] = 0


@dataclass(frozen=True)
class Drain:
    rate: float  # messages per second from the sink's first to its last message
    startup: float  # seconds from starting the sender to the sink's first message
    size: float  # mean message bytes
    sender_cpu_ms: float  # sender CPU per message over the measured window
    sink_cpu_ms: float


def drain(stats, total: int, sender: subprocess.Popen | multiprocessing.Process, sink_pid: int, log: Path | None):
    """Waits until the sink has `total` messages and measures the drain; fails if the sender dies or stalls."""
    spawned = time.monotonic()
    seen, progress_at, first = -1, spawned, None
    while True:
        with stats.get_lock():
            count = int(stats[COUNT])
        if count and first is None:
            first = (count, cpu_seconds(sender.pid), cpu_seconds(sink_pid))
        if count >= total:
            break
        if count != seen:
            seen, progress_at = count, time.monotonic()
        exited = sender.poll() is not None if isinstance(sender, subprocess.Popen) else not sender.is_alive()
        if exited or time.monotonic() - progress_at > STALL_SECONDS:
            detail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"the sender {'exited' if exited else 'stalled'} at {count}/{total} messages\n{detail}")
        time.sleep(0.005)
    sender_cpu, sink_cpu = cpu_seconds(sender.pid), cpu_seconds(sink_pid)
    with stats.get_lock():
        count, first_at, last_at, size = stats[COUNT], stats[FIRST_AT], stats[LAST_AT], stats[BYTES]
    if count != total:
        raise RuntimeError(f"the sink received {count:.0f} messages, expected {total}")
    measured = max(total - first[0], 1)
    return Drain(
        rate=(total - 1) / (last_at - first_at),
        startup=first_at - spawned,
        size=size / count,
        sender_cpu_ms=(sender_cpu - first[1]) / measured * 1000,
        sink_cpu_ms=(sink_cpu - first[2]) / measured * 1000,
    )


# -- the baseline: plain aiosmtplib, with the worker's connection reuse (or one connection per message) ----------


async def plain_loop(port: int, mime: bytes, total: int, concurrency: int, per_connection: int) -> None:
    """Each of `concurrency` senders sends over a connection of its own, opening a new one every `per_connection`
    messages."""
    remaining = total

    async def sender() -> None:
        nonlocal remaining
        while remaining > 0:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30, use_tls=False, start_tls=False)
            async with client:
                for _ in range(per_connection):
                    if remaining <= 0:
                        break
                    remaining -= 1
                    await client.sendmail(SENDER, [RECIPIENT], mime)

    await asyncio.gather(*(sender() for _ in range(concurrency)))


def plain_process(port: int, mime: bytes, total: int, concurrency: int, per_connection: int) -> None:
    asyncio.run(plain_loop(port, mime, total, concurrency, per_connection))


# -- HTTP load, from a process of its own ---------------------------------------------------------------------


async def drive(
    url: str, key: str, endpoint: str, concurrency: int, body: dict, seconds: float | None, total: int | None
) -> tuple[list[str], list[float]]:
    """Runs `endpoint` ("health" or "enqueue") for `seconds`, or until `total` requests were made."""
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.perf_counter() + seconds if seconds else float("inf")
    remaining = total if total is not None else float("inf")
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=60
    ) as client:

        async def worker(n: int) -> None:
            nonlocal remaining
            user = DELIVERY_USER if total is not None else f"bench-enqueue-{n}"
            while remaining > 0 and time.perf_counter() < deadline:
                remaining -= 1
                started = time.perf_counter()
                if endpoint == "health":
                    response = await client.get("/health")
                else:
                    response = await client.post(f"/v1/users/{user}/messages", json=body)
                latencies.append(time.perf_counter() - started)
                if response.status_code >= 300:
                    errors.append(f"{response.status_code} {response.text[:200]}")

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return errors, latencies


def load_process(out, *args) -> None:
    out.send(asyncio.run(drive(*args)))


@dataclass(frozen=True)
class Load:
    rate: float
    p50_ms: float
    p99_ms: float
    errors: list[str]
    server_cpu_ms: float  # server CPU per request


def run_load(
    url: str,
    key: str,
    server_pid: int,
    endpoint: str,
    concurrency: int,
    body: dict,
    seconds: float | None = None,
    total: int | None = None,
) -> Load:
    receiver, sender = multiprocessing.Pipe(duplex=False)
    process = multiprocessing.Process(
        target=load_process, args=(sender, url, key, endpoint, concurrency, body, seconds, total)
    )
    started, server_cpu = time.perf_counter(), cpu_seconds(server_pid)
    process.start()
    errors, latencies = receiver.recv()
    elapsed = seconds or time.perf_counter() - started
    server_cpu = cpu_seconds(server_pid) - server_cpu
    process.join()
    latencies.sort()
    return Load(
        rate=len(latencies) / elapsed,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[int(len(latencies) * 0.99)] * 1000,
        errors=errors,
        server_cpu_ms=server_cpu / len(latencies) * 1000,
    )


# -- the run --------------------------------------------------------------------------------------------------


def wait_until_serving(url: str, server: subprocess.Popen, log: Path) -> None:
    for _ in range(300):
        if server.poll() is not None:
            raise RuntimeError(f"emailmcp serve exited\n{log.read_text()[-3000:]}")
        try:
            if httpx2.get(f"{url}/health").status_code == 200:
                return
        except httpx2.TransportError:
            time.sleep(0.1)
    raise RuntimeError("emailmcp serve did not come up")


def connect_mailbox(url: str, key: str, user: str, sink_port: int) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    httpx2.post(f"{url}/v1/users", json={"user_id": user}, headers=headers).raise_for_status()
    mailbox = {"type": "smtp", "host": "127.0.0.1", "port": sink_port, "security": "none", "from_address": SENDER}
    httpx2.put(f"{url}/v1/users/{user}/mailbox", json=mailbox, headers=headers).raise_for_status()


class Bench:
    def __init__(self, args, env: dict, workdir: Path, url: str, key: str, server_pid: int, sink_port: int, sink):
        self.args, self.env, self.workdir, self.url, self.key = args, env, workdir, url, key
        self.server_pid, self.sink_port, self.sink, self.stats = server_pid, sink_port, sink, sink.stats
        line = "Benchmark message, the same for every send. " * (args.body_bytes // 45 + 1)
        self.body = {"to": [RECIPIENT], "subject": "Delivery benchmark", "body": line[: args.body_bytes]}

    def load(self, endpoint: str, **how) -> Load:
        return run_load(self.url, self.key, self.server_pid, endpoint, self.args.concurrency, self.body, **how)

    def delivery_round(self, round_no: int) -> tuple[Drain, Drain]:
        """Fills the outbox, drains it with one worker, then sends as many with the plain loop."""
        args = self.args
        errors = self.load("enqueue", total=args.messages).errors
        if errors:
            raise RuntimeError(f"{len(errors)} of {args.messages} sends were refused while filling: {errors[0]}")
        pending = self.pending()
        if pending != args.messages:
            raise RuntimeError(f"{pending} messages pending before the worker started, expected {args.messages}")

        reset_sink(self.stats)
        log = self.workdir / f"worker-{round_no}.log"
        emailmcp = str(Path(sys.executable).parent / "emailmcp")
        with open(log, "w") as log_file:
            worker = subprocess.Popen(
                [emailmcp, "worker", "--concurrency", str(args.worker_concurrency)],
                cwd=self.workdir,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            by_worker = drain(self.stats, args.messages, worker, self.sink.pid, log)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        if self.pending():
            raise RuntimeError("the worker left messages pending in the outbox")

        mime = (self.workdir / "sample.eml").read_bytes()
        reset_sink(self.stats)
        per_connection = 1 if args.connection_per_message else MAX_MESSAGES_PER_CONNECTION
        plain = multiprocessing.Process(
            target=plain_process,
            args=(self.sink_port, mime, args.messages, args.worker_concurrency, per_connection),
        )
        plain.start()
        try:
            by_plain = drain(self.stats, args.messages, plain, self.sink.pid, None)
        finally:
            plain.join(30)
        return by_worker, by_plain

    def pending(self) -> int:
        """Messages still to deliver (counted by paging through GET /v1/messages?status=pending)."""
        count, cursor = 0, None
        while True:
            params = {"status": "pending", "limit": 200} | ({"cursor": cursor} if cursor else {})
            page = httpx2.get(
                f"{self.url}/v1/messages", params=params, headers={"Authorization": f"Bearer {self.key}"}
            ).json()
            count += len(page["messages"])
            cursor = page["next_cursor"]
            if not cursor:
                return count


class Sink:
    def __init__(self, port: int, sample_path: Path) -> None:
        self.stats = multiprocessing.Array("d", 4)
        self._ready, self._stop = multiprocessing.Event(), multiprocessing.Event()
        self._process = multiprocessing.Process(
            target=sink_process, args=(port, self.stats, sample_path, self._ready, self._stop)
        )

    @property
    def pid(self) -> int:
        return self._process.pid

    def start(self) -> None:
        self._process.start()
        if not self._ready.wait(30):
            raise RuntimeError("the SMTP sink did not start")

    def stop(self) -> None:
        self._stop.set()
        self._process.join(10)


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def report(args, database: str, delivery: list[tuple[Drain, Drain]], enqueue: dict[str, list[Load]], load_avg):
    def med(values) -> float:
        return statistics.median(list(values))

    print(
        f"{time.strftime('%Y-%m-%d')}  {platform.machine()}  {os.cpu_count()} cores  "
        f"Python {platform.python_version()}  {database}  load average {load_avg[0]:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after"
    )
    print()
    rounds = f"{args.rounds} round{'s' if args.rounds != 1 else ''}"
    connections = (
        "baseline: one SMTP connection per message"
        if args.connection_per_message
        else f"SMTP connections reused for up to {MAX_MESSAGES_PER_CONNECTION} messages by both"
    )
    size = med(w.size for w, _ in delivery)
    print(f"A. Delivery: {args.messages} messages of {size:.0f} bytes, pre-filled outbox -> local aiosmtpd sink,")
    print(f"   concurrency {args.worker_concurrency}, {connections}; {rounds}, medians; msg/s first to last message")
    print(f"   {'sender':<24}{'msg/s':>8}{'start-up s':>12}{'CPU ms/msg':>12}{'sink ms/msg':>13}{'vs plain':>10}")
    plain_rate = med(p.rate for _, p in delivery)
    for name, index in (("plain aiosmtplib loop", 1), ("emailmcp worker", 0)):
        runs = [pair[index] for pair in delivery]
        rate, startup = med(r.rate for r in runs), med(r.startup for r in runs)
        cpu, sink_cpu = med(r.sender_cpu_ms for r in runs), med(r.sink_cpu_ms for r in runs)
        print(f"   {name:<24}{rate:>8.0f}{startup:>12.2f}{cpu:>12.2f}{sink_cpu:>13.2f}{rate / plain_rate:>9.0%}")
    ratio = med(w.rate for w, _ in delivery) / plain_rate
    print(
        f"   target: worker >= {DELIVERY_TARGET:.0%} of the plain loop: {verdict(ratio >= DELIVERY_TARGET)} "
        f"({ratio:.0%}; {DELIVERY_TARGET / ratio:.1f}x needed)"
    )
    print()

    print(
        f"B. Enqueue: server started with --no-worker (no delivery competes); concurrency {args.concurrency}, "
        f"{rounds} of {args.seconds:g} s\n   per endpoint, medians; each connection sends for a user of its own"
    )
    print(f"   {'endpoint':<24}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'CPU ms/req':>12}{'vs /health':>12}")
    names = {"health": "GET /health", "enqueue": "POST .../messages (202)"}
    health_rate = med(r.rate for r in enqueue["health"])
    for endpoint, runs in enqueue.items():
        rate, p50, p99 = med(r.rate for r in runs), med(r.p50_ms for r in runs), med(r.p99_ms for r in runs)
        errors, cpu, share = sum(len(r.errors) for r in runs), med(r.server_cpu_ms for r in runs), rate / health_rate
        print(f"   {names[endpoint]:<24}{rate:>8.0f}{p50:>9.1f}{p99:>9.1f}{errors:>8}{cpu:>12.2f}{share:>11.0%}")
    rate = med(r.rate for r in enqueue["enqueue"])
    print(
        f"   target: enqueue >= {ENQUEUE_TARGET:.0%} of /health: {verdict(rate / health_rate >= ENQUEUE_TARGET)} "
        f"({rate / health_rate:.0%}; {ENQUEUE_TARGET * health_rate / rate:.1f}x needed)"
    )
    if database == "SQLite":
        print(
            f"   target: >= {ENQUEUE_SQLITE_FLOOR} accepted sends/s on SQLite: "
            f"{verdict(rate >= ENQUEUE_SQLITE_FLOOR)} ({rate:.0f}/s; {ENQUEUE_SQLITE_FLOOR / rate:.1f}x needed)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per delivery round")
    parser.add_argument("--worker-concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5, help="per enqueue and /health round")
    parser.add_argument("--concurrency", type=int, default=32, help="HTTP connections, for filling and for B")
    parser.add_argument("--body-bytes", type=int, default=1024, help="size of the text body of every message")
    parser.add_argument(
        "--connection-per-message",
        action="store_true",
        help="baseline opens an SMTP connection per message (the worker reuses connections whatever this says)",
    )
    args = parser.parse_args()

    load_avg = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="emailmcp-bench-"))
    port, sink_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILMCP_")}
    env |= {
        "EMAILMCP_DATA_DIR": str(workdir / "data"),
        "EMAILMCP_RATE_LIMIT": "0",
        "EMAILMCP_DAILY_SEND_CAP": str(10**9),
        "EMAILMCP_SMTP_ALLOW_PRIVATE_HOSTS": "true",
        "EMAILMCP_LOG_LEVEL": "warning",
    }
    if os.environ.get("EMAILMCP_BENCH_DATABASE_URL"):
        env["EMAILMCP_DATABASE_URL"] = os.environ["EMAILMCP_BENCH_DATABASE_URL"]
        env["EMAILMCP_SECRET_KEY"] = "bench-" + "x" * 40

    sink = Sink(sink_port, workdir / "sample.eml")
    server_log = workdir / "serve.log"
    emailmcp = str(Path(sys.executable).parent / "emailmcp")
    server = None
    try:
        sink.start()
        with open(server_log, "w") as log_file:
            server = subprocess.Popen(
                [emailmcp, "serve", "--no-worker", "--port", str(port)],
                cwd=workdir,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        wait_until_serving(url, server, server_log)
        key = (workdir / "data" / "bootstrap-key").read_text().strip()
        for user in [DELIVERY_USER, *(f"bench-enqueue-{n}" for n in range(args.concurrency))]:
            connect_mailbox(url, key, user, sink_port)

        bench = Bench(args, env, workdir, url, key, server.pid, sink_port, sink)
        delivery = [bench.delivery_round(n) for n in range(args.rounds)]
        enqueue: dict[str, list[Load]] = {"health": [], "enqueue": []}
        for _ in range(args.rounds):
            for endpoint, runs in enqueue.items():
                runs.append(bench.load(endpoint, seconds=args.seconds))
        report(args, "PostgreSQL" if "EMAILMCP_DATABASE_URL" in env else "SQLite", delivery, enqueue, load_avg)
    except Exception:
        if server_log.exists():
            print(f"emailmcp serve log (tail):\n{server_log.read_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        sink.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
