"""Coalesces concurrent requests into one database round trip (group commit, batched lookups).

Items submitted while a batch is being handled wait for the next one, so every item is handled by
a batch that started after it arrived: a lookup never answers from a snapshot older than its request.
"""

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass
class Pending(Generic[T]):
    item: T
    future: asyncio.Future = field(repr=False)

    def resolve(self, value: Any) -> None:
        if not self.future.done():  # the caller may have gone away (client disconnected)
            self.future.set_result(value)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class Batcher(Generic[T]):
    """Hands everything submitted since the last batch to `handle`, which resolves or fails each pending item."""

    def __init__(self, handle: Callable[[list[Pending[T]]], Awaitable[None]], max_batch: int = 256) -> None:
        self._handle = handle
        self._max_batch = max_batch
        self._queue: list[Pending[T]] = []
        self._task: asyncio.Task | None = None

    async def submit(self, item: T) -> Any:
        pending = Pending(item, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        if self._task is None or self._task.done():
            # A context of its own: the batch serves many requests and must not carry the first one's log context.
            self._task = asyncio.create_task(self._drain(), context=contextvars.Context())
        return await pending.future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            try:
                await self._handle(batch)
            except Exception as exc:
                for pending in batch:
                    pending.fail(exc)
            for pending in batch:
                pending.fail(RuntimeError("the batch handler left this item unanswered"))

    async def close(self) -> None:
        """Waits for submitted items to be handled."""
        if self._task is not None:
            await asyncio.shield(self._task)
