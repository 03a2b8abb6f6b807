"""Per-key request limits, in memory for one process or in Redis shared by every replica."""

import math
import time
from dataclasses import dataclass
from functools import lru_cache

from limits import RateLimitItem, parse_many
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string


@dataclass(frozen=True)
class RateLimitState:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset_seconds)
        return headers


@lru_cache(maxsize=256)
def parse_limits(spec: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(spec))


def _storage_uri(redis_url: str | None) -> str:
    if not redis_url:
        return "async+memory://"
    scheme, sep, rest = redis_url.partition("://")
    return f"async+{scheme}://{rest}" if sep and not scheme.startswith("async+") else redis_url


class RateLimiter:
    def __init__(self, default_spec: str, redis_url: str | None) -> None:
        self.default_spec = default_spec
        self._limiter = SlidingWindowCounterRateLimiter(storage_from_string(_storage_uri(redis_url)))

    async def hit(self, identifier: str, spec: str | None = None) -> RateLimitState | None:
        """Counts one request; None when limiting is off. The tightest limit decides."""
        spec = spec or self.default_spec
        if spec == "0":
            return None
        tightest: RateLimitState | None = None
        for item in parse_limits(spec):
            allowed = await self._limiter.hit(item, identifier)
            stats = await self._limiter.get_window_stats(item, identifier)
            state = RateLimitState(
                allowed=allowed,
                limit=item.amount,
                remaining=max(stats.remaining, 0),
                reset_seconds=max(1, math.ceil(stats.reset_time - time.time())),
            )
            if tightest is None or not state.allowed or (tightest.allowed and state.remaining < tightest.remaining):
                tightest = state
            if not allowed:
                break
        return tightest
