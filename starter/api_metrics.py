"""Webhook counters (`dunning.webhooks` by provider, outcome and reason) and the gauges
read from the store (`store_gauges`: what is stuck, drift found, bad debt).

Kept in process (served as JSON by GET /metrics) and added to an OpenTelemetry counter
of the same name (a no-op unless the host process installs a MeterProvider). Every
attribute value is from a closed set: a route's provider name, an outcome word, a
WebhookError reason, an Ignored reason or a projection action; never request data.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics

from dunning.store import ledger_stats
from dunning.store.store import Store
from dunning.store.stuck import stuck

if TYPE_CHECKING:
    from dunning.config import Settings

OUTCOMES = ("processed", "duplicate", "ignored", "rejected", "unavailable", "busy", "parked", "error")


class WebhookCounter:
    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()
        self._otel = metrics.get_meter("dunning.api").create_counter(
            "dunning.webhooks", unit="{request}", description="Webhook requests by provider, outcome and reason"
        )

    def add(self, provider: str, outcome: str, reason: str) -> None:
        with self._lock:
            self._counts[(provider, outcome, reason)] += 1
        self._otel.add(1, {"provider": provider, "outcome": outcome, "reason": reason})

    def count(self, provider: str | None = None, outcome: str | None = None, reason: str | None = None) -> int:
        with self._lock:
            return sum(
                n
                for (p, o, r), n in self._counts.items()
                if provider in (None, p) and outcome in (None, o) and reason in (None, r)
            )

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            items = sorted(self._counts.items())
        return [{"provider": p, "outcome": o, "reason": r, "count": n} for (p, o, r), n in items]


def store_gauges(store: Store, settings: Settings, now: datetime) -> dict[str, Any]:
    """Gauges for GET /metrics, read from the database (synchronous: call it in a thread).

    dunning.stuck.*                   counts of `dunning.store.stuck` with the in-flight
                                      window ([recompute] in_flight_window_seconds)
    dunning.drift_detected            drift rows per drifted field
    dunning.drift_detected.by_source  drift rows per source (sweep | support)
    dunning.bad_debt.breakdown        `ledger_stats.bad_debt_breakdown`
    """
    found = stuck(store, settings.recompute.in_flight_window, now, limit=0)
    return {
        "dunning.stuck.payments_in_flight": found.payments_in_flight,
        "dunning.stuck.unconfirmed_steps": found.unconfirmed_steps,
        "dunning.stuck.parked_events": found.parked_events,
        "dunning.drift_detected": ledger_stats.drift_counts(store),
        "dunning.drift_detected.by_source": ledger_stats.drift_by_source(store),
        "dunning.bad_debt.breakdown": ledger_stats.bad_debt_breakdown(store),
    }
