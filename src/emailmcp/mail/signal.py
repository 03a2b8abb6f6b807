"""Wakes delivery workers when a message is queued, so they need not poll tightly.

In one process an asyncio event does it; across processes on PostgreSQL, NOTIFY on the
`emailmcp_outbox` channel, sent in the enqueueing transaction, reaches workers that LISTEN.
"""

import asyncio
import contextlib

CHANNEL = "emailmcp_outbox"


class OutboxSignal:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait(self, seconds: float) -> None:
        """Returns when notified or after `seconds`, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)
        self._event.clear()
