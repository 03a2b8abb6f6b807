"""Wakes background loops (delivery workers, the webhook dispatcher) when work arrives, so they need not poll
tightly.

In one process an asyncio event does it; across processes on PostgreSQL, a NOTIFY sent in the transaction that
wrote the work reaches every process that LISTENs on the channel (`listen`).
"""

import asyncio
import contextlib

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

log = structlog.get_logger(__name__)

OUTBOX_CHANNEL = "emailmcp_outbox"
WEBHOOKS_CHANNEL = "emailmcp_webhooks"


class Wakeup:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait(self, seconds: float) -> None:
        """Returns when notified or after `seconds`, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)
        self._event.clear()


async def listen(engine: AsyncEngine, channel: str, wakeup: Wakeup) -> None:
    """PostgreSQL: turns NOTIFY on `channel` from any process into `wakeup.notify()`, reconnecting as needed."""
    import psycopg

    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {channel}")
                async for _ in conn.notifies():
                    wakeup.notify()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("listen_failed", channel=channel, retry_seconds=5)
            await asyncio.sleep(5)
