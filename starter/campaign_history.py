"""`dunning campaign history SUB`: every ledger row of a subscription in words, so ops can
answer "why did this customer get this email?" without SQL. Each email shows its
Message-ID (the one in the customer's mail client), the step in words, the day of the
campaign it went out and how late; retries, consequences, skips, failures, the end, bad
debt, drift repairs and shadow actions are explained the same way. Ids only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dunning.stage_names import outcome_words, words
from dunning.store.store import LedgerEvent

ENDS = ("dunning.recovered", "dunning.resolved", "dunning.exhausted", "dunning.recovered_after_cancel")


@dataclass(frozen=True)
class Line:
    at: str
    day: float
    campaign: str
    what: str
    why: str
    message_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _late(data: dict[str, Any]) -> str:
    late = data.get("late_by")
    return f"; sent {float(late) / 3600:.1f} h late" if isinstance(late, (int, float)) and late >= 3600 else (
        f"; {float(late):.0f} s late" if isinstance(late, (int, float)) else "")  # fmt: skip


def explain(e: LedgerEvent) -> tuple[str, str]:
    d, key = e.data or {}, e.step_key
    if e.type == "dunning.campaign_started":
        amount = f", {d['amount_due']} {d.get('currency', '')}".rstrip() if d.get("amount_due") is not None else ""
        mode = " (shadow: records, does nothing)" if d.get("mode") == "shadow" else ""
        return "campaign started" + mode, (f"a payment failed at the provider ({d.get('provider', '?')}"
                                           f", decline class {d.get('decline_class', 'unknown')}{amount})")  # fmt: skip
    if e.type == "dunning.step_sent":
        sends = f"; {d['sends']} SMTP sends, same Message-ID" if isinstance(d.get("sends"), int) and d["sends"] > 1 else ""
        why = ("the decline asks the customer for a new payment method" if key.startswith("class:")
               else "the cadence's step for this day")  # fmt: skip
        return f"email sent: {words(key)}", why + _late(d) + sends
    if e.type == "dunning.retry_attempted":
        result = d.get("status", "?") + (f" ({d['decline_class']} decline {d.get('decline_code') or ''})".rstrip(" )") + ")"
                                         if d.get("decline_class") else "")  # fmt: skip
        return f"payment retried: {words(key)}", f"result {result}{_late(d)}"
    if e.type == "dunning.consequence_changed":
        return f"entitlement {d.get('previous', '?')} -> {d.get('level', '?')}", f"the ladder's rung {key}{_late(d)}"
    if e.type == "dunning.action_skipped":
        return f"skipped: {words(key)}", f"reason {d.get('reason', '?')}"
    if e.type == "dunning.action_failed":
        return f"failed: {words(key)}", f"{d.get('error', '?')}: {d.get('message', '')}"
    if e.type in ENDS:
        return f"campaign ended {outcome_words(e.type.removeprefix('dunning.'))}", str(d.get("reason", ""))
    if e.type == "dunning.shadow_action":
        return f"shadow: would {d.get('action', '?')} ({words(key)})", "rollout mode shadow: nothing was done"
    if e.type == "dunning.drift_detected":
        return "recompute repaired drift", f"{d.get('source', '?')}: {', '.join(d.get('drift', []))}"
    if e.type.startswith("bad_debt."):
        return e.type.replace("_", " ").replace(".", ": "), ", ".join(f"{k} {v}" for k, v in sorted(d.items()))[:200]
    return e.type, ""


def history(events: list[LedgerEvent], day_seconds: float = 86400) -> list[Line]:
    """`day`: the campaign's day of each row, in the engine's days (`day_seconds`, shorter
    with DUNNING_DAY_SECONDS on a dev stack)."""
    out = []
    for e in events:
        what, why = explain(e)
        day = round((e.occurred_at - e.campaign_started_at).total_seconds() / day_seconds, 2)
        out.append(Line(at=e.occurred_at.isoformat(timespec="seconds"), day=day,
                        campaign=e.campaign_started_at.isoformat(timespec="seconds"), what=what, why=why,
                        message_id=(e.data or {}).get("message_id") if e.type == "dunning.step_sent" else None))  # fmt: skip
    return out


def render(lines: list[Line]) -> str:
    rows = []
    for line in lines:
        mid = f"\n      Message-ID {line.message_id}" if line.message_id else ""
        rows.append(f"{line.at}  day {line.day:>5g}  {line.what}\n      {line.why}{mid}")
    return "\n".join(rows) or "no ledger rows"
