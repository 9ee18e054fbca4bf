"""PURE: shadow decisions against what happened at the provider (`dunning rollout report`),
so the next step of a rollout (individual -> 5 -> 10 -> 25 -> 50 -> 100 %) is decided
from numbers.

For each shadow campaign (its `dunning.shadow_action` rows) and the provider's word now:

    verdict          when
    ---------------  ------------------------------------------------------------------
    running          the campaign has not ended
    recovered        it ended recovered: the customer paid while it ran (restrictions it
                     would have applied before that are counted: a restricted payer)
    true_positive    it would have cancelled / marked unpaid, and the provider still shows
                     the debt (past_due/unpaid/canceled without a paid invoice)
    false_positive   it would have cancelled / marked unpaid, and the provider shows the
                     invoice paid or the subscription active: the customer paid after all
    resolved         it ended resolved (voided, written off, cancelled by someone else)
    unknown          the provider could not be read

false-positive rate = false_positive / (true_positive + false_positive).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from dunning.reconcile import ProviderView

TERMINAL = frozenset({"cancel", "mark_unpaid"})


@dataclass(frozen=True)
class ShadowRun:
    subscription_id: str
    campaign_started_at: datetime
    actions: tuple[str, ...]  # action kinds in order: email, charge, consequence, cancel, ...
    outcome: str | None  # None: running
    provider: ProviderView | None  # None: unreadable


@dataclass
class Report:
    campaigns: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    restricted_payers: int = 0  # recovered campaigns that would have restricted before the payment
    false_positives: list[str] = field(default_factory=list)  # subscription ids, for a closer look

    @property
    def false_positive_rate(self) -> float | None:
        judged = self.verdicts["true_positive"] + self.verdicts["false_positive"]
        return self.verdicts["false_positive"] / judged if judged else None

    def as_dict(self) -> dict[str, object]:
        return {
            "campaigns": self.campaigns, "verdicts": dict(sorted(self.verdicts.items())),
            "actions": dict(sorted(self.actions.items())), "restricted_payers": self.restricted_payers,
            "false_positive_rate": self.false_positive_rate, "false_positives": self.false_positives,
        }  # fmt: skip


def verdict(run: ShadowRun) -> str:
    if run.outcome is None:
        return "running"
    if run.outcome == "recovered":
        return "recovered"
    if not TERMINAL & set(run.actions):
        return "resolved" if run.outcome == "resolved" else "no_terminal_action"
    p = run.provider
    if p is None:
        return "unknown"
    if p.invoice_state == "paid" or p.status == "active":
        return "false_positive"
    return "true_positive"


def build(runs: list[ShadowRun]) -> Report:
    out = Report(campaigns=len(runs))
    for run in runs:
        v = verdict(run)
        out.verdicts[v] += 1
        out.actions.update(run.actions)
        if v == "recovered" and "consequence" in run.actions:
            out.restricted_payers += 1
        if v == "false_positive":
            out.false_positives.append(run.subscription_id)
    return out


def render(report: Report) -> str:
    rate = report.false_positive_rate
    lines = [
        f"shadow campaigns     {report.campaigns}",
        "verdicts             " + (", ".join(f"{k} {n}" for k, n in sorted(report.verdicts.items())) or "-"),
        "would have done      " + (", ".join(f"{k} {n}" for k, n in sorted(report.actions.items())) or "-"),
        f"false-positive rate  {'-' if rate is None else f'{rate:.1%}'} (terminal actions on customers who paid)",
        f"restricted payers    {report.restricted_payers} (would have restricted before the payment came)",
    ]
    if report.false_positives:
        lines.append("false positives      " + ", ".join(report.false_positives[:20]))
    return "\n".join(lines)
