"""What an authenticated, database-backed request costs next to the bare /health endpoint.

Starts `emailmcp serve` (SQLite by default, or EMAILMCP_BENCH_DATABASE_URL), then drives it from a
separate load process at a fixed concurrency for a fixed time, alternating rounds of:
  baseline  GET /health                      (no key, no database)
  profile   GET /v1/users/{id}/profile       (key check, rate limit, one tenant-scoped query)
  upsert    POST /v1/users                   (key check, one insert-or-nothing and a read, a commit)
and prints requests per second, median and p99 latency, and each endpoint's ratio to the baseline.

    .venv/bin/python bench/http_overhead.py [--seconds 5] [--concurrency 32] [--rounds 3]
"""

import argparse
import asyncio
import multiprocessing
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

# What /llm/inference is driven with (bench/planner.py): a mix of the requests people make.
INFERENCE_PROMPTS = [
    "Send an email to dana@example.com saying the draft is ready for review",
    "How many emails did I send in the last 7 days?",
    "email chris@example.org with subject Standup moved and body Standup is at 10:30 today",
    "Which emails could not be delivered?",
    "Send the weekly analytics to manager@example.com",
    "Is my email account connected?",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def drive(url: str, key: str, endpoint: str, seconds: float, concurrency: int) -> tuple[int, list[float]]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=30
    ) as client:

        async def worker(n: int) -> None:
            nonlocal errors
            i = 0
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                if endpoint == "baseline":
                    response = await client.get("/health")
                elif endpoint == "profile":
                    response = await client.get("/v1/users/bench-user/profile")
                elif endpoint == "inference":
                    i += 1
                    prompt = INFERENCE_PROMPTS[i % len(INFERENCE_PROMPTS)]
                    response = await client.post(
                        "/llm/inference", json={"prompt": prompt, "user_id": "bench-user"}, headers={"X-API-Key": key}
                    )
                else:
                    i += 1
                    response = await client.post("/v1/users", json={"user_id": f"u-{n}-{i % 50}"})
                latencies.append(time.perf_counter() - started)
                if response.status_code >= 300:
                    errors += 1

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return errors, latencies


def load_process(url: str, key: str, endpoint: str, seconds: float, concurrency: int, out) -> None:
    out.send(asyncio.run(drive(url, key, endpoint, seconds, concurrency)))


def run_load(url: str, key: str, endpoint: str, seconds: float, concurrency: int) -> tuple[float, float, float, int]:
    receiver, sender = multiprocessing.Pipe(duplex=False)
    process = multiprocessing.Process(target=load_process, args=(url, key, endpoint, seconds, concurrency, sender))
    process.start()
    errors, latencies = receiver.recv()
    process.join()
    latencies.sort()
    return (
        len(latencies) / seconds,
        statistics.median(latencies) * 1000,
        latencies[int(len(latencies) * 0.99)] * 1000,
        errors,
    )


def start_server() -> tuple[str, str, subprocess.Popen, Path]:
    """`emailmcp serve` on a fresh data dir (or EMAILMCP_BENCH_DATABASE_URL), rate limits off, with a user."""
    workdir = Path(tempfile.mkdtemp(prefix="emailmcp-bench-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILMCP_")}
    env |= {"EMAILMCP_DATA_DIR": str(workdir / "data"), "EMAILMCP_RATE_LIMIT": "0", "EMAILMCP_LOG_LEVEL": "warning"}
    if os.environ.get("EMAILMCP_BENCH_DATABASE_URL"):
        env["EMAILMCP_DATABASE_URL"] = os.environ["EMAILMCP_BENCH_DATABASE_URL"]
        env["EMAILMCP_SECRET_KEY"] = "bench-" + "x" * 40
    emailmcp = str(Path(sys.executable).parent / "emailmcp")
    server = subprocess.Popen(
        [emailmcp, "serve", "--port", str(port)],
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
    key = (workdir / "data" / "bootstrap-key").read_text().strip()
    httpx2.post(f"{url}/v1/users", json={"user_id": "bench-user"}, headers={"Authorization": f"Bearer {key}"})
    return url, key, server, workdir


def database_name() -> str:
    return "PostgreSQL" if os.environ.get("EMAILMCP_BENCH_DATABASE_URL") else "SQLite"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    url, key, server, workdir = start_server()
    try:
        results: dict[str, list[tuple[float, float, float, int]]] = {"baseline": [], "profile": [], "upsert": []}
        for _ in range(args.rounds):
            for endpoint in results:
                results[endpoint].append(run_load(url, key, endpoint, args.seconds, args.concurrency))

        database = database_name()
        print(
            f"{time.strftime('%Y-%m-%d')}  {platform.machine()}  {os.cpu_count()} cores  "
            f"Python {platform.python_version()}  {database}"
        )
        print(
            f"concurrency {args.concurrency}, {args.rounds} rounds of {args.seconds:g} s per endpoint,"
            " medians over rounds"
        )
        base_rps = statistics.median(r[0] for r in results["baseline"])
        print(f"{'endpoint':<10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'vs /health':>12}")
        for endpoint, rounds in results.items():
            rps = statistics.median(r[0] for r in rounds)
            p50 = statistics.median(r[1] for r in rounds)
            p99 = statistics.median(r[2] for r in rounds)
            errors = sum(r[3] for r in rounds)
            print(f"{endpoint:<10}{rps:>10.0f}{p50:>10.1f}{p99:>10.1f}{errors:>8}{rps / base_rps:>11.0%}")
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
