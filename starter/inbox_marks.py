"""Group commit of the receive path's last write: an inbox row marked dispatched once
Temporal has the event. Dispatches that finish while a mark is being written wait for the
next one and share its transaction, so under load many events cost one commit. Each caller
still returns only once its own row is committed."""

from __future__ import annotations

import asyncio
import weakref

from dunning.store.store import Store

Mark = tuple[str, str, "str | None"]


class MarkBatcher:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: list[tuple[Mark, asyncio.Future[bool]]] = []
        self._flushing = False
        self._task: asyncio.Task[None] | None = None

    async def mark(self, provider: str, event_id: str, reason: str | None) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append(((provider, event_id, reason), future))
        if not self._flushing:
            self._flushing = True
            self._task = asyncio.get_running_loop().create_task(self._flush())  # held: the loop keeps weak refs
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    done = await asyncio.to_thread(self.store.inbox_mark_dispatched_many, [m for m, _ in batch])
                except Exception as err:  # every caller of this batch sees the failure
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(err)
                    continue
                for (_, future), ok in zip(batch, done, strict=True):
                    if not future.done():
                        future.set_result(ok)
        finally:
            self._flushing = False


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.WeakKeyDictionary[Store, MarkBatcher]] = (
    weakref.WeakKeyDictionary()
)


async def mark_dispatched(store: Store, provider: str, event_id: str, reason: str | None) -> bool:
    """received -> dispatched (False if the row was not 'received'), grouped with others."""
    per_store = _batchers.setdefault(asyncio.get_running_loop(), weakref.WeakKeyDictionary())
    batcher = per_store.get(store)
    if batcher is None:
        batcher = per_store[store] = MarkBatcher(store)
    return await batcher.mark(provider, event_id, reason)
