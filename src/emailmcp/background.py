"""What runs beside the API (or alone, in `emailmcp worker`): mail delivery and webhook dispatch."""

import asyncio

from emailmcp.mail.worker import DeliveryWorker
from emailmcp.runtime import Runtime
from emailmcp.webhooks.dispatcher import WebhookDispatcher


async def run_background(runtime: Runtime, stop: asyncio.Event, concurrency: int = 8) -> None:
    """Delivers mail and webhooks until `stop` is set, then stops both gracefully."""
    await asyncio.gather(DeliveryWorker(runtime, concurrency).run(stop), WebhookDispatcher(runtime).run(stop))
