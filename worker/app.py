"""Build the Temporal client and the worker that runs campaigns."""

from __future__ import annotations

import concurrent.futures

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from activities.campaign import CampaignActivities
from activities.outbound import OutboundActivities
from activities.payments import PaymentActivities
from dunning.config import Settings
from dunning.store.store import Store
from workflows.campaign import DunningCampaign


async def connect(settings: Settings) -> Client:
    """The one way every process reaches Temporal: same converter everywhere."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        tls=settings.temporal_tls,
        api_key=settings.temporal_api_key,
    )


def build_worker(client: Client, settings: Settings, store: Store, task_queue: str | None = None) -> Worker:
    payments = PaymentActivities(settings, store)
    activities = [
        *CampaignActivities(settings, store).all(),
        payments.retry_payment,
        payments.terminal_action,
        OutboundActivities(settings).emit,
    ]
    return Worker(
        client,
        task_queue=task_queue or settings.temporal_task_queue,
        workflows=[DunningCampaign],
        activities=activities,
        activity_executor=concurrent.futures.ThreadPoolExecutor(max_workers=8),
    )


async def run_worker(settings: Settings) -> None:
    store = Store.open(settings.db_url)
    client = await connect(settings)
    try:
        await build_worker(client, settings, store).run()
    finally:
        store.dispose()
