"""How fast one delivery worker drains the outbox, and how fast the API accepts sends.

Starts `emailmcp serve --no-worker` (SQLite by default, or EMAILMCP_BENCH_DATABASE_URL, which must name a fresh,
empty PostgreSQL database) and a local aiosmtpd sink in a process of its own that only counts what it receives.

A. Delivery. Each round fills the outbox with N sends over HTTP for a user whose SMTP mailbox (security none) is
   the sink, then starts one `emailmcp worker --concurrency C` and waits until the sink has N messages. Baseline,
   in the same round: a plain aiosmtplib loop, in a process of its own, sending N messages with the same bytes and
   envelope to the same sink at the same concurrency, one connection per message like SmtpTransport. Rates run
   from the sink's first to its N-th message, so process start-up (shown apart) is left out.
B. Enqueue. Accepted sends (POST /v1/users/{id}/messages, 202) per second from a separate load process at a fixed
   concurrency (each connection sends for a user of its own), next to GET /health on the same server. The server
   runs --no-worker, so no delivery competes with the API.

Medians over rounds.

    .venv/bin/python bench/delivery.py [--messages 2000] [--worker-concurrency 8] [--rounds 3]
        [--seconds 5] [--concurrency 32] [--body-bytes 1024]
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
from pathlib import Path

import aiosmtplib
import httpx2
from aiosmtpd.controller import Controller

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


def wait_for_sink(stats, total: int, sender: subprocess.Popen | multiprocessing.Process, log: Path | None) -> None:
    """Blocks until the sink has `total` messages; fails if the sender dies or stalls first."""
    seen, progress_at = -1, time.monotonic()
    while True:
        with stats.get_lock():
            count = int(stats[COUNT])
        if count >= total:
            return
        if count != seen:
            seen, progress_at = count, time.monotonic()
        exited = sender.poll() is not None if isinstance(sender, subprocess.Popen) else not sender.is_alive()
        if exited or time.monotonic() - progress_at > STALL_SECONDS:
            detail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"the sender {'exited' if exited else 'stalled'} at {count}/{total} messages\n{detail}")
        time.sleep(0.005)


# -- the baseline: plain aiosmtplib, one connection per message, like SmtpTransport ---------------------------


async def plain_loop(port: int, mime: bytes, total: int, concurrency: int) -> None:
    remaining = total

    async def sender() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30, use_tls=False, start_tls=False)
            async with client:
                await client.sendmail(SENDER, [RECIPIENT], mime)

    await asyncio.gather(*(sender() for _ in range(concurrency)))


def plain_process(port: int, mime: bytes, total: int, concurrency: int) -> None:
    asyncio.run(plain_loop(port, mime, total, concurrency))


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


def run_load(
    url: str,
    key: str,
    endpoint: str,
    concurrency: int,
    body: dict,
    seconds: float | None = None,
    total: int | None = None,
) -> tuple[float, float, float, list[str]]:
    """Requests per second, p50 and p99 ms, and the failed responses."""
    receiver, sender = multiprocessing.Pipe(duplex=False)
    process = multiprocessing.Process(
        target=load_process, args=(sender, url, key, endpoint, concurrency, body, seconds, total)
    )
    started = time.perf_counter()
    process.start()
    errors, latencies = receiver.recv()
    elapsed = seconds or time.perf_counter() - started
    process.join()
    latencies.sort()
    return (
        len(latencies) / elapsed,
        statistics.median(latencies) * 1000,
        latencies[int(len(latencies) * 0.99)] * 1000,
        errors,
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


def delivery_round(args, env, workdir: Path, url: str, key: str, body: dict, sink_port: int, stats, round_no: int):
    """One round of A: fill, drain with the worker, then the plain loop. Returns (rate, start-up s) for each."""
    errors = run_load(url, key, "enqueue", args.concurrency, body, total=args.messages)[3]
    if errors:
        raise RuntimeError(f"{len(errors)} of {args.messages} sends were refused while filling the outbox: {errors[0]}")

    reset_sink(stats)
    log = workdir / f"worker-{round_no}.log"
    emailmcp = str(Path(sys.executable).parent / "emailmcp")
    spawned = time.monotonic()
    with open(log, "w") as log_file:
        worker = subprocess.Popen(
            [emailmcp, "worker", "--concurrency", str(args.worker_concurrency)],
            cwd=workdir,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_sink(stats, args.messages, worker, log)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    worker_result = measured(stats, args.messages, spawned)
    pending = httpx2.get(
        f"{url}/v1/messages", params={"status": "pending", "limit": 1}, headers={"Authorization": f"Bearer {key}"}
    ).json()["messages"]
    if pending:
        raise RuntimeError("the worker left messages pending in the outbox")

    mime = (workdir / "sample.eml").read_bytes()
    reset_sink(stats)
    spawned = time.monotonic()
    plain = multiprocessing.Process(
        target=plain_process, args=(sink_port, mime, args.messages, args.worker_concurrency)
    )
    plain.start()
    try:
        wait_for_sink(stats, args.messages, plain, None)
    finally:
        plain.join(30)
    return worker_result, measured(stats, args.messages, spawned)


def measured(stats, total: int, spawned: float) -> tuple[float, float, float]:
    """Messages per second from the sink's first to its last message, start-up seconds, mean bytes."""
    with stats.get_lock():
        count, first_at, last_at, size = stats[COUNT], stats[FIRST_AT], stats[LAST_AT], stats[BYTES]
    if count != total:
        raise RuntimeError(f"the sink received {count:.0f} messages, expected {total}")
    return (total - 1) / (last_at - first_at), first_at - spawned, size / count


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per delivery round")
    parser.add_argument("--worker-concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5, help="per enqueue and /health round")
    parser.add_argument("--concurrency", type=int, default=32, help="HTTP connections for the enqueue figures")
    parser.add_argument("--body-bytes", type=int, default=1024, help="size of the text body of every message")
    args = parser.parse_args()

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
    line = "Benchmark message, the same for every send. " * (args.body_bytes // 45 + 1)
    body = {"to": [RECIPIENT], "subject": "Delivery benchmark", "body": line[: args.body_bytes]}

    stats = multiprocessing.Array("d", 4)
    sink_ready, sink_stop = multiprocessing.Event(), multiprocessing.Event()
    sink = multiprocessing.Process(
        target=sink_process, args=(sink_port, stats, workdir / "sample.eml", sink_ready, sink_stop)
    )
    sink.start()
    server_log = workdir / "serve.log"
    emailmcp = str(Path(sys.executable).parent / "emailmcp")
    with open(server_log, "w") as log_file:
        server = subprocess.Popen(
            [emailmcp, "serve", "--no-worker", "--port", str(port)],
            cwd=workdir,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        if not sink_ready.wait(30):
            raise RuntimeError("the SMTP sink did not start")
        wait_until_serving(url, server, server_log)
        key = (workdir / "data" / "bootstrap-key").read_text().strip()
        for user in [DELIVERY_USER, *(f"bench-enqueue-{n}" for n in range(args.concurrency))]:
            connect_mailbox(url, key, user, sink_port)

        delivery = [
            delivery_round(args, env, workdir, url, key, body, sink_port, stats, n) for n in range(args.rounds)
        ]
        enqueue: dict[str, list[tuple[float, float, float, list[str]]]] = {"health": [], "enqueue": []}
        for _ in range(args.rounds):
            for endpoint in enqueue:
                enqueue[endpoint].append(run_load(url, key, endpoint, args.concurrency, body, seconds=args.seconds))

        database = "PostgreSQL" if "EMAILMCP_DATABASE_URL" in env else "SQLite"
        print(
            f"{time.strftime('%Y-%m-%d')}  {platform.machine()}  {os.cpu_count()} cores  "
            f"Python {platform.python_version()}  {database}"
        )
        print()
        size = statistics.median(r[0][2] for r in delivery)
        print(
            f"A. Delivery: {args.messages} messages of {size:.0f} bytes from a pre-filled outbox to a local aiosmtpd "
            f"sink,\n   concurrency {args.worker_concurrency}, one SMTP connection per message; "
            f"{args.rounds} rounds, medians; msg/s from the sink's first to its last message"
        )
        worker_rate = statistics.median(r[0][0] for r in delivery)
        plain_rate = statistics.median(r[1][0] for r in delivery)
        print(f"   {'sender':<28}{'msg/s':>8}{'start-up s':>12}{'vs plain':>10}")
        for name, index, rate in (("plain aiosmtplib loop", 1, plain_rate), ("emailmcp worker", 0, worker_rate)):
            startup = statistics.median(r[index][1] for r in delivery)
            print(f"   {name:<28}{rate:>8.0f}{startup:>12.2f}{rate / plain_rate:>9.0%}")
        ratio = worker_rate / plain_rate
        print(f"   target: worker >= {DELIVERY_TARGET:.0%} of the plain loop: {verdict(ratio >= DELIVERY_TARGET)}")
        print()

        print(
            f"B. Enqueue: server started with --no-worker (no delivery competes); concurrency {args.concurrency}, "
            f"{args.rounds} rounds\n   of {args.seconds:g} s per endpoint, medians; each connection sends for a "
            "user of its own"
        )
        print(f"   {'endpoint':<28}{'req/s':>8}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'vs /health':>12}")
        health_rate = statistics.median(r[0] for r in enqueue["health"])
        names = {"health": "GET /health", "enqueue": "POST .../messages (202)"}
        for endpoint, rounds in enqueue.items():
            rate = statistics.median(r[0] for r in rounds)
            p50 = statistics.median(r[1] for r in rounds)
            p99 = statistics.median(r[2] for r in rounds)
            errors = sum(len(r[3]) for r in rounds)
            print(f"   {names[endpoint]:<28}{rate:>8.0f}{p50:>10.1f}{p99:>10.1f}{errors:>8}{rate / health_rate:>11.0%}")
        enqueue_rate = statistics.median(r[0] for r in enqueue["enqueue"])
        print(
            f"   target: enqueue >= {ENQUEUE_TARGET:.0%} of /health: "
            f"{verdict(enqueue_rate / health_rate >= ENQUEUE_TARGET)}"
        )
        if database == "SQLite":
            print(
                f"   target: >= {ENQUEUE_SQLITE_FLOOR} accepted sends/s on SQLite: "
                f"{verdict(enqueue_rate >= ENQUEUE_SQLITE_FLOOR)}"
            )
    except Exception:
        print(f"emailmcp serve log (tail):\n{server_log.read_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        server.terminate()
        server.wait(10)
        sink_stop.set()
        sink.join(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
