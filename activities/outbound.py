"""Outbound events of campaigns that began before the outbox (patch `outbox-in-store`):
their history still schedules `emit_outbound_event`, so the activity stays registered. It
no longer POSTs: it enqueues the event in the durable outbox (idempotent by event id), and
the deliverer (starter.outbound) sends it like any other."""

from __future__ import annotations

import asyncio

from temporalio import activity

from dunning.contracts import OutboundEvent
from dunning.store import outbox
from dunning.store.store import Store


class OutboundActivities:
    def __init__(self, store: Store) -> None:
        self.store = store

    @activity.defn(name="emit_outbound_event")
    async def emit(self, event: OutboundEvent) -> int:
        def write() -> None:
            with self.store.write() as conn:
                outbox.enqueue(self.store, conn, event)

        await asyncio.to_thread(write)
        return 1
