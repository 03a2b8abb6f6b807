"""When to try again: shared by the delivery worker and the webhook dispatcher."""

import random
from datetime import timedelta


def backoff(base_seconds: float, attempt: int, retry_after: float | None, cap: timedelta) -> timedelta:
    """Exponential backoff with jitter around the base (attempt 1 waits about `base_seconds`), never sooner than
    the server asked, never longer than `cap`."""
    delay = base_seconds * (2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
    return min(timedelta(seconds=max(delay, retry_after or 0)), cap)
