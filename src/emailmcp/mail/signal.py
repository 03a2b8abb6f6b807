"""Wakes delivery workers when a message is queued, so they need not poll tightly.

In one process an asyncio event does it; across processes on PostgreSQL, NOTIFY on the
`emailmcp_outbox` channel, sent in the enqueueing transaction, reaches workers that LISTEN.
"""

import asyncio

CHANNEL = "emailmcp_outbox"


class OutboxSignal:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            pass
        self._event.clear()
