"""PURE: recovery analytics over plain ledger rows (`dunning_events`, the append-only
ledger); the rows are read by `dunning.store.ledger_analytics`, rendered by `dunning report`.

Definitions (industry-style: a cohort of failed payments and what became of them):

    campaign          one `dunning.campaign_started` row whose campaign_started_at (the
                      provider's time of the failure) is in [since, until), shadow ones
                      (data["mode"] == "shadow") excluded; identity (subscription_id,
                      campaign_started_at)
    failed            all campaigns: their count, and the sum of data["amount_due"] (minor
                      units) per data["currency"] ("unknown" when absent); a campaign without
                      amount_due is counted, and counted again in `amount_unknown`
    recovered         the campaign has a `dunning.recovered` or `dunning.recovered_after_cancel`
                      row (a payment after the terminal action turns an exhausted campaign
                      into a recovered one); its path: `recovery_path` of that row's reason
    lost              otherwise a `dunning.exhausted` row, or a `dunning.resolved` row (ended
                      without payment: invoice voided or uncollectible, subscription cancelled)
    in progress       no end row yet: kept in the denominator, shown separately
    recovery rate     recovered / failed, by count (and per currency by amount); None when
                      there is no campaign. The outcome is the eventual one the ledger holds
                      when the report runs (an end after `until` counts): young cohorts are
                      still maturing, so their rate only rises
    days to recovery  (recovery row's occurred_at - campaign_started_at) in real days
                      (86,400 s, not the settings' day_seconds), bucketed in `BUCKETS`
    cohort week       the ISO week of campaign_started_at in UTC, e.g. "2026-W47"; every week
                      the period touches is listed, empty ones too
    bad debt          `bad_debt.entered` / `bad_debt.exited` rows whose occurred_at is in
                      [since, until) (event time, not cohort); amounts in the currency of the
                      campaign they belong to: entries the campaign's amount_due, exits their
                      data["amount"]; exits counted by data["how"]

Money is a dict currency -> minor units: different currencies are never added.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dunning.analytics_model import BadDebt, Bucket, Group, LedgerRow, Money, PathShare, RecoveryReport

STARTED = "dunning.campaign_started"
RECOVERIES = ("dunning.recovered", "dunning.recovered_after_cancel")
LOSSES = ("dunning.exhausted", "dunning.resolved")
ENDS = RECOVERIES + LOSSES
ENTERED, EXITED = "bad_debt.entered", "bad_debt.exited"
UNKNOWN = "unknown"
DAY = 86_400.0
# days-to-recovery buckets: [low, high) in days; None = no upper bound
BUCKETS: tuple[tuple[float, float | None], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 5), (5, 7), (7, 10), (10, 14), (14, 21), (21, 28), (28, None),
)  # fmt: skip

ENGINE_RETRY, CARD_UPDATE, PAYMENT_SERVICE = "engine_retry", "card_update", "payment_service"
PROVIDER_RETRY, INFERRED, OTHER = "provider_retry", "inferred", "other"
PATHS = (ENGINE_RETRY, PROVIDER_RETRY, CARD_UPDATE, PAYMENT_SERVICE, INFERRED, OTHER)
_SERVICE_CODES = {
    "card_updated": CARD_UPDATE, "retry_succeeded": PAYMENT_SERVICE, "payment_succeeded": PAYMENT_SERVICE,
    "paid_out_of_band": PAYMENT_SERVICE, "invoice_paid": PAYMENT_SERVICE, "manual_adjustment": PAYMENT_SERVICE,
}  # fmt: skip


def recovery_path(reason: str | None) -> str:
    """How a recovered campaign got paid, from its end row's data["reason"]:

    reason text (as the workflow's `_claim(ending.PAID, ...)` wrote it)   path
    -------------------------------------------------------------------  ---------------
    "payment retry <key> succeeded"  (the engine's own charge)            engine_retry
    "card_updated"  (payment-service code, dunning.reasons)               card_update
    "retry_succeeded", "payment_succeeded", "paid_out_of_band",
    "invoice_paid", "manual_adjustment"  (payment-service codes)          payment_service
    "payment_succeeded: <provider> ..." / "payment_recovered..."
    (a provider webhook, dunning.projection._reason)                      provider_retry
    "superseded: ..."  (an effect found the campaign already paid)        inferred
    anything else ("payment recovered", "payment after the terminal
    action", a host's own note)                                           other
    """
    text = (reason or "").strip()
    if text.startswith("payment retry ") and text.endswith(" succeeded"):
        return ENGINE_RETRY
    if text in _SERVICE_CODES:
        return _SERVICE_CODES[text]
    if text.startswith(("payment_succeeded:", "payment_recovered")):
        return PROVIDER_RETRY
    if text.startswith("superseded:"):
        return INFERRED
    return OTHER


@dataclass
class _Campaign:
    start: LedgerRow
    outcome: str = "in_progress"  # recovered | exhausted | resolved | in_progress
    path: str | None = None
    days: float | None = None

    def value(self, key: str) -> str:
        v = self.start.data.get(key)
        return UNKNOWN if v is None or v == "" else str(v)

    @property
    def currency(self) -> str:
        return self.value("currency").lower()

    @property
    def amount(self) -> int | None:
        return _minor(self.start.data.get("amount_due"))


def _minor(value: Any) -> int | None:
    """An amount in minor units, or None when absent or not a non-negative integer."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def iso_week(at: datetime) -> str:
    year, week, _ = at.astimezone(UTC).isocalendar()
    return f"{year}-W{week:02d}"


def weeks(since: datetime, until: datetime) -> list[str]:
    """Every ISO week [since, until) touches, in order (UTC)."""
    found: list[str] = []
    at, last = since.astimezone(UTC), until - timedelta(microseconds=1)
    while at <= last:
        if not found or found[-1] != iso_week(at):
            found.append(iso_week(at))
        at = min(at + timedelta(days=1), last) if at < last else last + timedelta(days=1)
    return found


def _add(money: Money, currency: str, amount: int | None) -> None:
    if amount is not None:
        money[currency] = money.get(currency, 0) + amount


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _campaigns(rows: Iterable[LedgerRow], since: datetime, until: datetime) -> list[_Campaign]:
    started: dict[tuple[str, datetime], _Campaign] = {}
    ends: list[LedgerRow] = []
    for r in rows:
        if r.type == STARTED and since <= r.campaign_started_at < until and r.data.get("mode") != "shadow":
            started[(r.subscription_id, r.campaign_started_at)] = _Campaign(r)
        elif r.type in ENDS:
            ends.append(r)
    for r in sorted(ends, key=lambda r: (r.type not in RECOVERIES, r.occurred_at)):
        c = started.get((r.subscription_id, r.campaign_started_at))
        if c is None or c.outcome != "in_progress":
            continue  # a recovery wins over a loss; the earliest of a kind wins
        c.outcome = "recovered" if r.type in RECOVERIES else r.type.removeprefix("dunning.")
        if c.outcome == "recovered":
            c.path = recovery_path(r.data.get("reason"))
            c.days = max(0.0, (r.occurred_at - r.campaign_started_at).total_seconds() / DAY)
    return sorted(started.values(), key=lambda c: (c.start.campaign_started_at, c.start.subscription_id))


def _group(key: str, cs: list[_Campaign]) -> Group:
    failed: Money = {}
    recovered: Money = {}
    for c in cs:
        _add(failed, c.currency, c.amount)
        if c.outcome == "recovered":
            _add(recovered, c.currency, c.amount)
    n, won = len(cs), sum(c.outcome == "recovered" for c in cs)
    progress = sum(c.outcome == "in_progress" for c in cs)
    return Group(key=key, campaigns=n, recovered=won, lost=n - won - progress, in_progress=progress,
                 rate=_rate(won, n), failed_amount=failed, recovered_amount=recovered)  # fmt: skip


def _split(cs: list[_Campaign], key: Any, order: Iterable[str] = ()) -> list[Group]:
    groups: dict[str, list[_Campaign]] = {k: [] for k in order}
    for c in cs:
        groups.setdefault(key(c), []).append(c)
    keys = list(order) or sorted(groups)
    return [_group(k, groups[k]) for k in keys]


def _histogram(days: list[float]) -> list[Bucket]:
    return [Bucket(label=f"{lo:g}d+" if hi is None else f"{lo:g}-{hi:g}d", low_days=lo, high_days=hi,
                   count=sum(lo <= d and (hi is None or d < hi) for d in days)) for lo, hi in BUCKETS]  # fmt: skip


def _bad_debt(rows: Iterable[LedgerRow], since: datetime, until: datetime) -> BadDebt:
    out = BadDebt()
    for r in rows:
        if not since <= r.occurred_at < until or (r.campaign or {}).get("mode") == "shadow":
            continue
        camp = _Campaign(LedgerRow(STARTED, r.subscription_id, r.campaign_started_at, r.occurred_at, r.campaign or {}))
        if r.type == ENTERED:
            out.entered += 1
            _add(out.entered_amount, camp.currency, camp.amount)
            cls = str(r.data.get("decline_class") or UNKNOWN)
            out.entered_by_decline_class[cls] = out.entered_by_decline_class.get(cls, 0) + 1
        elif r.type == EXITED:
            out.exited += 1
            how = str(r.data.get("how") or UNKNOWN)
            out.exited_by_how[how] = out.exited_by_how.get(how, 0) + 1
            _add(out.exited_amount, camp.currency, _minor(r.data.get("amount")))
    return out


def report(campaign_rows: Iterable[LedgerRow], bad_debt_rows: Iterable[LedgerRow], since: datetime,
           until: datetime) -> RecoveryReport:  # fmt: skip
    """The report for [since, until) from `campaign_rows` (campaign_started and end rows;
    others are ignored) and `bad_debt_rows` (entered/exited rows)."""
    if since.tzinfo is None or until.tzinfo is None or since >= until:
        raise ValueError("since and until must carry a time zone, and since must be before until")
    cs = _campaigns(campaign_rows, since, until)
    total = _group("all", cs)
    lost: Money = {}
    progress: Money = {}
    for c in cs:
        if c.outcome == "in_progress":
            _add(progress, c.currency, c.amount)
        elif c.outcome != "recovered":
            _add(lost, c.currency, c.amount)
    days = [c.days for c in cs if c.days is not None]
    won = [c for c in cs if c.path is not None]
    paths = {p: [c for c in won if c.path == p] for p in PATHS}
    return RecoveryReport(
        since=since, until=until, campaigns=total.campaigns, recovered=total.recovered, lost=total.lost,
        exhausted=sum(c.outcome == "exhausted" for c in cs), resolved=sum(c.outcome == "resolved" for c in cs),
        in_progress=total.in_progress, recovery_rate=total.rate, amount_unknown=sum(c.amount is None for c in cs),
        failed_amount=total.failed_amount, recovered_amount=total.recovered_amount, lost_amount=lost,
        in_progress_amount=progress,
        amount_rate={k: round(total.recovered_amount.get(k, 0) / v, 4) for k, v in total.failed_amount.items() if v},
        days_to_recovery=_histogram(days), median_days_to_recovery=round(statistics.median(days), 2) if days else None,
        by_provider=_split(cs, lambda c: c.value("provider")),
        by_decline_class=_split(cs, lambda c: c.value("decline_class")),
        by_plan=_split(cs, lambda c: c.value("plan_id")),
        by_cohort_week=_split(cs, lambda c: iso_week(c.start.campaign_started_at), weeks(since, until)),
        by_path=[PathShare(path=p, recovered=len(v), rate=_rate(len(v), len(cs)), amount=_group(p, v).failed_amount)
                 for p, v in paths.items()],
        bad_debt=_bad_debt(bad_debt_rows, since, until),
    )  # fmt: skip
