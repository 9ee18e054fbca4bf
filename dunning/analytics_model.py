"""The recovery report's input rows and its shape (JSON-able: `RecoveryReport.model_dump(mode="json")`).
Definitions of every number: `dunning.analytics`. Money is a dict currency -> minor units
(lower-case ISO 4217 code, "unknown" when the campaign gave none); currencies are never added."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

Money = dict[str, int]


@dataclass(frozen=True)
class LedgerRow:
    """One ledger row as the analytics read it. `campaign`: for a bad-debt row, the data
    of its campaign's `dunning.campaign_started` row (None when there is none)."""

    type: str
    subscription_id: str
    campaign_started_at: datetime
    occurred_at: datetime
    data: Mapping[str, Any]
    campaign: Mapping[str, Any] | None = None


class Group(BaseModel):
    """The campaigns of one split value (a provider, a decline class, a plan, a week)."""

    key: str
    campaigns: int
    recovered: int
    lost: int
    in_progress: int
    rate: float | None  # recovered / campaigns; None when there is none
    failed_amount: Money
    recovered_amount: Money


class PathShare(BaseModel):
    """Campaigns recovered by one path; `rate` = those / all campaigns (the paths' rates
    add up to the recovery rate)."""

    path: str
    recovered: int
    rate: float | None
    amount: Money


class Bucket(BaseModel):
    """Recoveries that took [low_days, high_days) days (high None: no upper bound)."""

    label: str  # "0-1d", ..., "28d+"
    low_days: float
    high_days: float | None
    count: int


class BadDebt(BaseModel):
    """Bad-debt rows whose occurred_at is in the period (event time)."""

    entered: int = 0
    entered_amount: Money = Field(default_factory=dict)  # the entered campaigns' amount_due
    entered_by_decline_class: dict[str, int] = Field(default_factory=dict)
    exited: int = 0
    exited_by_how: dict[str, int] = Field(default_factory=dict)
    exited_amount: Money = Field(default_factory=dict)  # the exits' amount, in their campaign's currency


class RecoveryReport(BaseModel):
    """Recovered vs lost for the campaigns begun in [since, until)."""

    since: datetime
    until: datetime
    campaigns: int  # failed payments: the denominator (in progress included)
    recovered: int
    lost: int  # exhausted + resolved
    exhausted: int
    resolved: int
    in_progress: int
    recovery_rate: float | None
    amount_unknown: int  # campaigns without amount_due (counted above, in no amount)
    failed_amount: Money
    recovered_amount: Money
    lost_amount: Money
    in_progress_amount: Money
    amount_rate: dict[str, float]  # per currency: recovered_amount / failed_amount
    days_to_recovery: list[Bucket]
    median_days_to_recovery: float | None
    by_provider: list[Group]
    by_decline_class: list[Group]
    by_plan: list[Group]
    by_cohort_week: list[Group]
    by_path: list[PathShare]
    bad_debt: BadDebt
