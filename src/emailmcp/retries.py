"""When to try again: shared by the delivery worker and the webhook dispatcher."""

import math
import random
from datetime import timedelta


def backoff(base_seconds: float, attempt: int, retry_after: float | None, cap: timedelta) -> timedelta:
    """Exponential backoff with jitter around the base (attempt 1 waits about `base_seconds`), never sooner than
    the server asked, never longer than `cap`, whatever the attempt number or the server's answer."""
    limit = cap.total_seconds()
    delay = base_seconds * (2 ** min(max(attempt - 1, 0), 64)) * random.uniform(0.5, 1.5)
    asked = retry_after if retry_after is not None and math.isfinite(retry_after) else 0.0
    return timedelta(seconds=min(max(delay, asked), limit))
