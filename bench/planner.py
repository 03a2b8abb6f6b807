"""How long the offline planner takes per prompt, and what /llm/inference serves next to GET /health.

A. In-process: `rules.plan_prompt` alone, and the whole of `llm.service.infer` with the rules planner (the plan,
   then every step checked against the action registry), over a mix of prompts (the eval prompt set when
   ../shared/eval is there, plus bench/http_overhead.py's), many times each; p50 and p99 per prompt.
B. Over HTTP: `emailmcp serve` (SQLite, rate limits off) driven by a separate load process at a fixed concurrency:
   POST /llm/inference (key check, planning) next to GET /health in the same run.

Target: p99 under 2 ms in-process.

    .venv/bin/python bench/planner.py [--iterations 200] [--seconds 5] [--concurrency 32] [--rounds 3]
"""

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from emailmcp.llm import rules  # noqa: E402
from emailmcp.llm.schemas import InferenceIn  # noqa: E402
from emailmcp.llm.service import Planners, infer  # noqa: E402
from emailmcp.settings import Settings  # noqa: E402
from http_overhead import INFERENCE_PROMPTS, run_load, start_server  # noqa: E402

EVAL_PROMPTS = BENCH_DIR.parent.parent / "shared" / "eval" / "prompts_dev.jsonl"
TARGET_P99_MS = 2.0


def prompts() -> list[str]:
    found = list(INFERENCE_PROMPTS)
    if EVAL_PROMPTS.exists():
        found += [json.loads(line)["prompt"] for line in EVAL_PROMPTS.read_text().splitlines() if line.strip()]
    return found


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples.sort()
    return statistics.median(samples) * 1000, samples[int(len(samples) * 0.99)] * 1000


def time_rules(texts: list[str], iterations: int) -> tuple[float, float]:
    samples = []
    for _ in range(iterations):
        for text in texts:
            started = time.perf_counter()
            rules.plan_prompt(text)
            samples.append(time.perf_counter() - started)
    return percentiles(samples)


async def time_infer(texts: list[str], iterations: int) -> tuple[float, float]:
    planners = Planners(Settings(_env_file=None))
    requests = [InferenceIn(prompt=text, user_id="bench-user") for text in texts]
    samples = []
    for _ in range(iterations):
        for request in requests:
            started = time.perf_counter()
            await infer(planners, request)
            samples.append(time.perf_counter() - started)
    return percentiles(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    texts = prompts()
    rules_p50, rules_p99 = time_rules(texts, args.iterations)
    infer_p50, infer_p99 = asyncio.run(time_infer(texts, args.iterations))

    url, key, server, workdir = start_server()
    try:
        results: dict[str, list[tuple[float, float, float, int]]] = {"baseline": [], "inference": []}
        for _ in range(args.rounds):
            for endpoint in results:
                results[endpoint].append(run_load(url, key, endpoint, args.seconds, args.concurrency))
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"{time.strftime('%Y-%m-%d')}  {platform.machine()}  {os.cpu_count()} cores  Python {platform.python_version()}"
        f"  load average {os.getloadavg()[0]:.2f}"
    )
    print(f"\nA. In-process, {len(texts)} prompts x {args.iterations}: ms per prompt")
    print(f"   {'':<34}{'p50':>8}{'p99':>8}")
    print(f"   {'rules.plan_prompt':<34}{rules_p50:>8.3f}{rules_p99:>8.3f}")
    print(f"   {'service.infer (plan + registry)':<34}{infer_p50:>8.3f}{infer_p99:>8.3f}")
    verdict = "met" if infer_p99 < TARGET_P99_MS else "NOT met"
    print(f"   target p99 < {TARGET_P99_MS} ms: {verdict}")

    rounds_text = f"{args.rounds} rounds of {args.seconds:g} s"
    print(f"\nB. Over HTTP (SQLite), concurrency {args.concurrency}, {rounds_text}, medians")
    base = statistics.median(r[0] for r in results["baseline"])
    print(f"   {'endpoint':<22}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'vs /health':>12}")
    for endpoint, rounds in results.items():
        rps = statistics.median(r[0] for r in rounds)
        name = "GET /health" if endpoint == "baseline" else "POST /llm/inference"
        print(
            f"   {name:<22}{rps:>8.0f}{statistics.median(r[1] for r in rounds):>9.1f}"
            f"{statistics.median(r[2] for r in rounds):>9.1f}{sum(r[3] for r in rounds):>8}{rps / base:>11.0%}"
        )


if __name__ == "__main__":
    main()
