"""`dunning rollout report`: gather shadow campaigns from the ledger and the provider's
word on each (dunning.providers.reads), then judge them (dunning.rollout_report)."""

from __future__ import annotations

from datetime import datetime

from dunning.config import ConfigError, Settings
from dunning.providers.actions import ProviderError
from dunning.providers.reads import ProviderReader, reader_for
from dunning.reconcile import ProviderView
from dunning.rollout_report import Report, ShadowRun, build
from dunning.store import shadow
from dunning.store.store import Store


def gather(settings: Settings, store: Store, since: datetime | None = None, limit: int = 1000) -> Report:
    readers: dict[str, ProviderReader | None] = {}
    runs = []
    for c in shadow.campaigns(store, since, limit):
        row = store.get_subscription(c.subscription_id)
        name = row.provider if row else "fake"
        if name not in readers:
            try:
                readers[name] = reader_for(name, settings, store)
            except (ConfigError, ValueError):
                readers[name] = None
        view: ProviderView | None = None
        reader = readers[name]
        if reader is not None and c.outcome is not None:
            try:
                view = reader.read_subscription(c.subscription_id)
            except ProviderError:
                view = None
        runs.append(ShadowRun(c.subscription_id, c.campaign_started_at, tuple(a for a, _, _ in c.actions),
                              c.outcome, view))  # fmt: skip
    return build(runs)
