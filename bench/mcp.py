"""What an MCP tool call over streamable HTTP costs next to the same action through POST /llm/execute-action.

Starts `emailmcp serve` (SQLite by default, or EMAILMCP_BENCH_DATABASE_URL; rate limits off; capture transport, the
default of a fresh server) with bench/http_overhead.py's start_server, creates a key with the mail scope and one
with the llm scope with `emailmcp keys create`, then times one action through each path, in the same rounds
against the same server:

  execute   POST /llm/execute-action with an httpx2.AsyncClient (X-API-Key: llm key, X-MCP-API-Key: mail key)
  sdk       POST /mcp through the official SDK's Client (mode="legacy": initialize handshake, 2025-11-25)
  sdk-2026  the same Client with mode="auto" (2026-07-28 protocol, no handshake)
  raw       hand-made JSON-RPC tools/call POSTs to /mcp with httpx2 (MCP-Protocol-Version 2025-11-25), no SDK
  raw-2026  the same with the 2026-07-28 headers and _meta

for a read (check_status) and for send_email (queued and then captured by the server's own delivery worker), at
concurrency 1 (one client, sequential calls) and N (N clients of their own, each with one connection). Each path
has a load process of its own, which opens its N clients once (the SDK's handshake is not timed) and keeps them
for the whole run; a measurement is a few warm-up calls per client, then --calls timed calls. Before each
measurement the server is left to go idle, so that the delivery of mail captured by the previous one does not land
in the next. Within a round the paths take turns, in reverse order every other round; an untimed round comes first.

Per row: calls per second, p50 and p99 latency, server CPU per call (the `serve` process, Linux /proc; it includes
the delivery worker's share for send_email), the load process's CPU per call, and the rate as a share of
execute-action's at the same concurrency. Medians over rounds.

    .venv/bin/python bench/mcp.py [--rounds 5] [--calls 200] [--concurrency 8] [--warmup 3]
        [--paths execute,sdk,sdk-2026,raw,raw-2026] [--actions check_status,send_email]
"""

import argparse
import asyncio
import itertools
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
# This script is bench/mcp.py, and Python puts its directory first on sys.path, where it would shadow the SDK's
# `mcp` package: take it out for the SDK, then put it back at the end for the other benchmarks' helpers.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != BENCH_DIR]

import httpx2  # noqa: E402
from mcp.client.client import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

sys.path.append(str(BENCH_DIR))
from delivery import cpu_seconds  # noqa: E402
from http_overhead import database_name, start_server  # noqa: E402

PATHS = {
    "execute": "POST /llm/execute-action",
    "sdk": "MCP, SDK Client (legacy)",
    "sdk-2026": "MCP, SDK Client (2026-07-28)",
    "raw": "MCP, raw JSON-RPC (2025-11-25)",
    "raw-2026": "MCP, raw JSON-RPC (2026-07-28)",
}
ACTIONS = {
    "check_status": {},
    "send_email": {"to": ["rcpt@example.com"], "subject": "Bench", "body": "A message from bench/mcp.py.\n" * 8},
}
READ_USER = "bench-user"  # created by start_server
SENDS_PER_USER = 400  # below the daily cap of 500 per user: send_email moves to a fresh user every 400 calls
LEGACY_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
IDLE_CPU_SHARE = 0.1  # the server counts as idle below this share of one core over IDLE_WINDOW
IDLE_WINDOW = 0.25
IDLE_TIMEOUT = 60


# -- keys ---------------------------------------------------------------------------------------------------------


def create_key(workdir: Path, scope: str) -> str:
    """`emailmcp keys create` against start_server's database (the same environment it gives the server)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILMCP_")}
    env["EMAILMCP_DATA_DIR"] = str(workdir / "data")
    if os.environ.get("EMAILMCP_BENCH_DATABASE_URL"):
        env["EMAILMCP_DATABASE_URL"] = os.environ["EMAILMCP_BENCH_DATABASE_URL"]
        env["EMAILMCP_SECRET_KEY"] = "bench-" + "x" * 40
    emailmcp = str(Path(sys.executable).parent / "emailmcp")
    command = [emailmcp, "keys", "create", "--tenant", "default", "--scope", scope, "--name", f"bench-{scope}"]
    result = subprocess.run(command, cwd=workdir, env=env, check=True, capture_output=True, text=True)
    return result.stdout.split()[-1]


# -- the callers: one per client, each answering None or what went wrong ------------------------------------------


async def open_caller(stack: AsyncExitStack, path: str, url: str, mail_key: str, llm_key: str):
    if path == "execute":
        http = await stack.enter_async_context(
            httpx2.AsyncClient(base_url=url, headers={"X-API-Key": llm_key, "X-MCP-API-Key": mail_key}, timeout=60)
        )

        async def call(action: str, user_id: str, parameters: dict) -> str | None:
            body = {"action_type": action, "user_id": user_id, "parameters": parameters}
            response = await http.post("/llm/execute-action", json=body)
            return None if response.status_code == 200 else f"{response.status_code} {response.text[:300]}"

        return call

    if path.startswith("raw"):
        modern = path.endswith("2026")
        headers = {
            "Authorization": f"Bearer {mail_key}",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": MODERN_VERSION if modern else LEGACY_VERSION,
        }
        http = await stack.enter_async_context(httpx2.AsyncClient(base_url=url, headers=headers, timeout=60))
        ids = itertools.count(1)

        async def call(action: str, user_id: str, parameters: dict) -> str | None:
            params = {"name": action, "arguments": {"user_id": user_id, **parameters}}
            extra = {}
            if modern:
                params["_meta"] = MODERN_META
                extra = {"Mcp-Method": "tools/call", "Mcp-Name": action}
            body = {"jsonrpc": "2.0", "id": next(ids), "method": "tools/call", "params": params}
            response = await http.post("/mcp", json=body, headers=extra)
            if response.status_code != 200:
                return f"{response.status_code} {response.text[:300]}"
            answer = response.json()
            if "error" in answer or answer["result"].get("isError"):
                return response.text[:300]
            return None

        return call

    http = await stack.enter_async_context(
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {mail_key}"}, timeout=60)
    )
    client = await stack.enter_async_context(
        Client(streamable_http_client(f"{url}/mcp", http_client=http), mode="auto" if path == "sdk-2026" else "legacy")
    )

    async def call(action: str, user_id: str, parameters: dict) -> str | None:
        result = await client.call_tool(action, {"user_id": user_id, **parameters})
        return result.content[0].text[:300] if result.is_error else None

    return call


# -- the load processes: one per path, its clients open from start to end --------------------------------------


@dataclass(frozen=True)
class Measurement:
    rate: float  # calls per second
    p50_ms: float
    p99_ms: float
    errors: int
    first_error: str | None
    server_cpu_ms: float  # per call
    client_cpu_ms: float  # per call


async def measure(
    callers, server_pid: int, action: str, concurrency: int, calls: int, warmup: int, tag: str
) -> Measurement:
    """`warmup` untimed calls on each of the first `concurrency` callers, then `calls` timed calls shared by them."""
    parameters = ACTIONS[action]
    sent = [0] * concurrency
    latencies: list[float] = []
    errors: list[str] = []

    def user_for(n: int) -> str:
        if action != "send_email":
            return READ_USER
        sent[n] += 1
        return f"bench-send-{tag}-{n}-{sent[n] // SENDS_PER_USER}"

    async def warm(n: int) -> None:
        for _ in range(warmup):
            error = await callers[n](action, user_for(n), parameters)
            if error:
                errors.append(error)

    await asyncio.gather(*(warm(n) for n in range(concurrency)))
    if errors:
        raise RuntimeError(f"{action}: a warm-up call failed: {errors[0]}")

    remaining = calls

    async def worker(n: int) -> None:
        nonlocal remaining
        call = callers[n]
        while remaining > 0:
            remaining -= 1
            user_id = user_for(n)
            started = time.perf_counter()
            error = await call(action, user_id, parameters)
            latencies.append(time.perf_counter() - started)
            if error:
                errors.append(error)

    client_cpu, server_cpu, started = time.process_time(), cpu_seconds(server_pid), time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    elapsed = time.perf_counter() - started
    client_cpu, server_cpu = time.process_time() - client_cpu, cpu_seconds(server_pid) - server_cpu

    latencies.sort()
    return Measurement(
        rate=len(latencies) / elapsed,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        errors=len(errors),
        first_error=errors[0] if errors else None,
        server_cpu_ms=server_cpu / len(latencies) * 1000,
        client_cpu_ms=client_cpu / len(latencies) * 1000,
    )


async def serve_measurements(conn, url: str, mail_key: str, llm_key: str, server_pid: int, path: str, clients: int):
    """Opens `clients` clients of `path` (the SDK's handshake happens here, untimed), then runs each measurement
    the parent asks for, until it sends None."""
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        callers = [await open_caller(stack, path, url, mail_key, llm_key) for _ in range(clients)]
        conn.send("ready")
        while (request := await loop.run_in_executor(None, conn.recv)) is not None:
            try:
                conn.send(await measure(callers, server_pid, *request))
            except Exception as exc:
                conn.send(RuntimeError(f"{path}: {exc!r}"))


def load_process(conn, *args) -> None:
    try:
        asyncio.run(serve_measurements(conn, *args))
    except Exception as exc:
        conn.send(RuntimeError(f"{args[-2]}: {exc!r}"))


class LoadProcess:
    """A process of its own for one path, so that the clients' CPU is not the driver's or the server's."""

    def __init__(self, url: str, mail_key: str, llm_key: str, server_pid: int, path: str, clients: int) -> None:
        self.conn, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(
            target=load_process, args=(child, url, mail_key, llm_key, server_pid, path, clients), daemon=True
        )
        self.process.start()

    def answer(self):
        result = self.conn.recv()
        if isinstance(result, Exception):
            raise result
        return result

    def measure(self, action: str, concurrency: int, calls: int, warmup: int, tag: str) -> Measurement:
        self.conn.send((action, concurrency, calls, warmup, tag))
        return self.answer()

    def stop(self) -> None:
        if self.process.is_alive():
            self.conn.send(None)
            self.process.join(30)


def wait_until_idle(server_pid: int) -> None:
    """Until the server (and so its delivery worker) uses less than IDLE_CPU_SHARE of a core."""
    deadline = time.monotonic() + IDLE_TIMEOUT
    while time.monotonic() < deadline:
        before = cpu_seconds(server_pid)
        time.sleep(IDLE_WINDOW)
        if not cpu_seconds(server_pid) - before >= IDLE_CPU_SHARE * IDLE_WINDOW:  # NaN without /proc: idle
            return


# -- the report -----------------------------------------------------------------------------------------------


def report(args, results: dict[tuple[str, int, str], list[Measurement]], load_avg, elapsed: float) -> None:
    def med(values) -> float:
        return statistics.median(list(values))

    print(
        f"{time.strftime('%Y-%m-%d')}  {platform.machine()}  {os.cpu_count()} cores  "
        f"Python {platform.python_version()}  {database_name()}  load average {load_avg[0]:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after  ({elapsed:.0f} s)"
    )
    print(
        f"{args.calls} timed calls per row after {args.warmup} warm-up calls per client; {args.rounds} rounds, "
        "medians; ratio: calls/s over execute-action's at the same concurrency"
    )
    for action in args.actions:
        print(f"\n{action}")
        print(
            f"   {'path':<32}{'clients':>8}{'calls/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
            f"{'server ms':>11}{'client ms':>11}{'vs execute':>12}"
        )
        for concurrency in args.levels:
            base = med(m.rate for m in results[action, concurrency, "execute"]) if "execute" in args.paths else None
            for path in args.paths:
                runs = results[action, concurrency, path]
                rate = med(m.rate for m in runs)
                ratio = f"{rate / base:>11.0%}" if base else f"{'':>11}"
                print(
                    f"   {PATHS[path]:<32}{concurrency:>8}{rate:>9.0f}{med(m.p50_ms for m in runs):>9.1f}"
                    f"{med(m.p99_ms for m in runs):>9.1f}{sum(m.errors for m in runs):>8}"
                    f"{med(m.server_cpu_ms for m in runs):>11.2f}{med(m.client_cpu_ms for m in runs):>11.2f} {ratio}"
                )
    failures = [(key, m.first_error) for key, runs in results.items() for m in runs if m.first_error]
    for (action, concurrency, path), error in failures[:5]:
        print(f"error: {path} {action} x{concurrency}: {error}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200, help="timed calls per path, action and concurrency")
    parser.add_argument("--concurrency", type=int, default=8, help="clients of the concurrent rows (besides 1)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per client before each measurement")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of: {', '.join(PATHS)}")
    parser.add_argument("--actions", default=",".join(ACTIONS), help=f"comma-separated, of: {', '.join(ACTIONS)}")
    args = parser.parse_args()
    args.paths = [path for path in args.paths.split(",") if path]
    args.actions = [action for action in args.actions.split(",") if action]
    if unknown := (set(args.paths) - set(PATHS)) | (set(args.actions) - set(ACTIONS)):
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    args.levels = sorted({1, args.concurrency})

    load_avg, started = os.getloadavg(), time.perf_counter()
    url, _, server, workdir = start_server()
    loads: dict[str, LoadProcess] = {}
    try:
        mail_key, llm_key = create_key(workdir, "mail"), create_key(workdir, "llm")
        loads = {path: LoadProcess(url, mail_key, llm_key, server.pid, path, max(args.levels)) for path in args.paths}
        for load in loads.values():
            load.answer()  # its clients are open
        plan = [(action, concurrency) for action in args.actions for concurrency in args.levels]
        results: dict[tuple[str, int, str], list[Measurement]] = {
            (action, concurrency, path): [] for action, concurrency in plan for path in args.paths
        }
        for round_number in range(-1, args.rounds):  # round -1: the untimed pass
            calls = max(20, args.calls // 5) if round_number < 0 else args.calls
            order = args.paths if round_number % 2 == 0 else args.paths[::-1]
            for action, concurrency in plan:
                for path in order:
                    if server.poll() is not None:
                        raise RuntimeError(f"emailmcp serve exited with status {server.returncode}")
                    wait_until_idle(server.pid)
                    tag = f"{round_number + 1}{concurrency}{path}"
                    measurement = loads[path].measure(action, concurrency, calls, args.warmup, tag)
                    if round_number >= 0:
                        results[action, concurrency, path].append(measurement)
        report(args, results, load_avg, time.perf_counter() - started)
    finally:
        for load in loads.values():
            load.stop()
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
