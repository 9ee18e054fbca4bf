"""Webhook counters (`dunning.webhooks` by provider, outcome and reason, and how long
each took) and the gauges read from the store (`store_gauges`: what is stuck, drift
found, bad debt); `prometheus_registry` serves them all as Prometheus text.

Kept in process (served as JSON by GET /metrics.json) and added to OpenTelemetry
instruments of the same name (no-ops unless the host process installs a MeterProvider).
Every attribute value is from a closed set: a route's provider name, an outcome word, a
WebhookError reason, an Ignored reason or a projection action; never request data.

Prometheus (GET /metrics): `StoreCollector` reads the store at scrape time into
`dunning_*` families; each app has its own CollectorRegistry (nothing is registered in
prometheus_client's global one). Labels are mapped onto closed sets ("other" for a value
outside it, "none" for a missing one). While the database is unreachable the scrape
still answers: the in-process webhook families and `dunning_store_up 0`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from dunning.contracts import DECLINE_CLASSES
from dunning.store import availability, inbox_parking, ledger_stats, metrics_queries, outbox
from dunning.store.store import Store
from dunning.store.stuck import stuck

if TYPE_CHECKING:
    from dunning.config import Settings

OUTCOMES = ("processed", "duplicate", "ignored", "rejected", "unavailable", "busy", "parked", "error")
PROVIDERS = ("stripe", "braintree", "fake")
END_OUTCOMES = ("recovered", "resolved", "exhausted", "recovered_after_cancel")
RETRY_RESULTS = ("succeeded", "declined", "unconfirmed", "superseded")
STEP_RESULTS = {"dunning.step_sent": "sent", "dunning.action_skipped": "skipped", "dunning.action_failed": "failed"}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TOKEN = re.compile(r"[a-z][a-z0-9_.]{0,63}")  # names our own code writes (drift fields, how)
PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # text/plain; version=0.0.4; charset=utf-8
log = logging.getLogger("dunning.api")


class WebhookCounter:
    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()
        meter = metrics.get_meter("dunning.api")
        self._otel = meter.create_counter(
            "dunning.webhooks", unit="{request}", description="Webhook requests by provider, outcome and reason"
        )
        self._otel_seconds = meter.create_histogram(
            "dunning.webhooks.duration", unit="s", description="Time to answer a webhook, by provider and outcome"
        )
        self.latency = Histogram(
            "dunning_webhook_duration_seconds", "Time to answer a webhook, by provider and outcome",
            ("provider", "outcome"), registry=None, buckets=LATENCY_BUCKETS,
        )  # fmt: skip

    def add(self, provider: str, outcome: str, reason: str, seconds: float | None = None) -> None:
        with self._lock:
            self._counts[(provider, outcome, reason)] += 1
        self._otel.add(1, {"provider": provider, "outcome": outcome, "reason": reason})
        if seconds is not None:
            self.latency.labels(provider, outcome).observe(seconds)
            self._otel_seconds.record(seconds, {"provider": provider, "outcome": outcome})

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
    """Gauges for GET /metrics.json, read from the database (synchronous: call it in a thread).

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


# --- Prometheus ----------------------------------------------------------------------
def _one_of(value: Any, allowed: Iterable[str], missing: str = "none") -> str:
    if value is None or value == "":
        return missing
    return str(value) if str(value) in allowed else "other"


def _token(value: Any) -> str:
    return str(value) if value is not None and _TOKEN.fullmatch(str(value)) else "other"


Family = type[CounterMetricFamily] | type[GaugeMetricFamily]


def _family(kind: Family, name: str, doc: str, labels: tuple[str, ...], counts: dict, zeros: Iterable = ()) -> Metric:
    """A labelled family; `zeros`: label values shown as 0 when nothing was counted."""
    family = kind(name, doc, labels=list(labels))
    merged: Counter[tuple[str, ...]] = Counter({(z if isinstance(z, tuple) else (z,)): 0 for z in zeros})
    for key, n in counts.items():
        merged[key if isinstance(key, tuple) else (key,)] += n
    for key, n in sorted(merged.items()):
        family.add_metric(list(key), n)
    return family


def _plain(kind: Family, name: str, doc: str, value: float) -> Metric:
    return kind(name, doc, value=value)


class StoreCollector:
    """A prometheus_client collector: the webhook counter and the store, read per scrape."""

    def __init__(self, store: Store, settings: Settings, counter: WebhookCounter) -> None:
        self.store, self.settings, self.counter = store, settings, counter
        self.levels = {"full", "canceled", *(rule.level for rule in settings.campaign.consequences)}

    def describe(self) -> list[Metric]:
        return []  # nothing is read at registration

    def collect(self) -> Iterator[Metric]:
        webhooks = {(d["provider"], d["outcome"], d["reason"]): d["count"] for d in self.counter.snapshot()}
        yield _family(CounterMetricFamily, "dunning_webhooks", "Webhook requests by provider, outcome and reason",
                      ("provider", "outcome", "reason"), webhooks)  # fmt: skip
        yield from self.counter.latency.collect()
        try:
            families = list(self._store_families())
        except Exception as err:
            if not availability.is_unavailable(err):
                raise
            log.warning("metrics scrape without the store: %s", availability.describe(self.store, err))
            yield _plain(GaugeMetricFamily, "dunning_store_up", "1 when the database answered this scrape", 0)
            return
        yield _plain(GaugeMetricFamily, "dunning_store_up", "1 when the database answered this scrape", 1)
        yield from families

    def _store_families(self) -> Iterator[Metric]:
        s, counts = self.store, metrics_queries.metric_counts(self.store)
        started: Counter[tuple[str, str]] = Counter()
        steps: Counter[str] = Counter()
        retries: Counter[tuple[str, str]] = Counter()
        changes: Counter[str] = Counter()
        for (type_, provider, mode, status, decline, level), n in counts.ledger.items():
            if type_ == metrics_queries.STARTED:
                started[(_one_of(provider, PROVIDERS, "unknown"), "shadow" if mode == "shadow" else "live")] += n
            elif type_ in STEP_RESULTS:
                steps[STEP_RESULTS[str(type_)]] += n
            elif type_ == "dunning.retry_attempted":
                retries[(_one_of(status, RETRY_RESULTS), _one_of(decline, DECLINE_CLASSES))] += n
            elif type_ == "dunning.consequence_changed":
                changes[_one_of(level, self.levels)] += n
        ends = {(_one_of(o, END_OUTCOMES), _one_of(p, PROVIDERS, "unknown")): n for (o, p), n in counts.ends.items()}
        C, G = CounterMetricFamily, GaugeMetricFamily
        yield _family(C, "dunning_campaigns_started", "Campaigns started", ("provider", "mode"), started)
        yield _family(C, "dunning_campaigns_ended", "Campaigns ended, by outcome", ("outcome", "provider"), ends)
        yield _family(C, "dunning_steps", "Campaign actions sent, skipped or failed", ("result",), steps,
                      STEP_RESULTS.values())  # fmt: skip
        yield _family(C, "dunning_retries", "Payment retries by result and decline class",
                      ("result", "decline_class"), retries)  # fmt: skip
        yield _family(C, "dunning_consequence_changes", "Entitlement changes by level", ("level",), changes)
        yield _family(G, "dunning_subscriptions", "Subscriptions by entitlement level", ("entitlement",),
                      {_one_of(k, self.levels): n for k, n in counts.entitlements.items()}, self.levels)  # fmt: skip
        failures = {(_one_of(p, PROVIDERS), _one_of(st, ("received", "parked"))): n
                    for (p, st), n in counts.dispatch_failures.items()}  # fmt: skip
        yield _family(G, "dunning_dispatch_failures", "Failed dispatches of inbox rows waiting or parked",
                      ("provider", "status"), failures)  # fmt: skip
        inbox = inbox_parking.counts(s)
        yield _family(G, "dunning_inbox_events", "Inbox rows pending a dispatch or parked", ("status",), inbox)
        deliveries = s.delivery_counts()
        yield _plain(G, "dunning_deliveries_unconfirmed", "Effects claimed, never confirmed", deliveries["unconfirmed"])
        yield _plain(C, "dunning_email_resends", "Extra SMTP copies after an unconfirmed send", deliveries["resends"])
        sent = outbox.outbox_counts(s)
        yield _family(G, "dunning_outbox_events", "Outbound events by status", ("status",),
                      {k: sent[k] for k in ("pending", "delivered")})  # fmt: skip
        yield _plain(G, "dunning_outbox_oldest_pending_age_seconds", "Age of the oldest pending outbound event",
                     sent["oldest_pending_age_seconds"] or 0.0)  # fmt: skip
        bad = ledger_stats.bad_debt_breakdown(s)
        yield _family(C, "dunning_bad_debt_entries", "Bad-debt entries by decline class", ("decline_class",),
                      {_one_of(k, DECLINE_CLASSES): n for k, n in bad["entered"]["by_decline_class"].items()})  # fmt: skip
        yield _family(C, "dunning_bad_debt_exits", "Bad-debt exits by how", ("how",),
                      {_token(k): n for k, n in bad["exited"]["by_how"].items()})  # fmt: skip
        yield _plain(G, "dunning_in_bad_debt", "Subscriptions in bad debt now", bad["in_bad_debt"])
        found = stuck(s, self.settings.recompute.in_flight_window, datetime.now(UTC), limit=0)
        yield _family(G, "dunning_stuck", "Work started and never finished, by kind", ("kind",), {
            "payments_in_flight": found.payments_in_flight, "unconfirmed_steps": found.unconfirmed_steps,
            "parked_events": found.parked_events})  # fmt: skip
        yield _family(C, "dunning_drift_detected", "Drift found, by field", ("field",),
                      {_token(k): n for k, n in ledger_stats.drift_counts(s).items()})  # fmt: skip
        yield _family(C, "dunning_drift_detected_by_source", "Drift found, by source", ("source",),
                      {_token(k): n for k, n in ledger_stats.drift_by_source(s).items()})  # fmt: skip


def prometheus_registry(store: Store, settings: Settings, counter: WebhookCounter) -> CollectorRegistry:
    """A registry of one app's metrics (not prometheus_client's global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, settings, counter))
    return registry


def prometheus_text(registry: CollectorRegistry) -> bytes:
    """The exposition text (format 0.0.4); reads the store: call it in a thread."""
    return generate_latest(registry)


def wants_json(accept: str | None) -> bool:
    """True when the Accept header ranks application/json at least as high as text/plain
    and application/openmetrics-text (the first listed wins a tie); */* does not count,
    and no header is False: Prometheus text."""
    ranked: dict[str, tuple[float, int]] = {}
    for order, part in enumerate((accept or "").split(",")):
        kind, *params = (p.strip().lower() for p in part.split(";"))
        q = 1.0
        for name, _, value in (p.partition("=") for p in params):
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if kind not in ranked or q > ranked[kind][0]:
            ranked[kind] = (q, -order)
    json = ranked.get("application/json", (0.0, 0))
    rivals = [ranked[k] for k in ("text/plain", "application/openmetrics-text") if k in ranked]
    return json[0] > 0 and all(json > rival for rival in rivals)
