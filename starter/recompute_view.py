"""The recompute report in words: what each store says, side by side, the desired state,
and the actions with their reasons (`dunning recompute`; the HTTP route answers JSON)."""

from __future__ import annotations

from datetime import datetime

from starter.recompute import Report

COLUMNS = ("", "provider", "projection", "campaign", "desired")


def _t(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


def table(r: Report) -> list[tuple[str, ...]]:
    o, d = r.observed, r.plan.desired
    p, j, c = o.provider, o.projection, o.campaign
    invoice = f"{p.invoice_id or '-'} {p.invoice_state or '-'}" if p else "-"
    amount = str(p.amount_due) if p and p.amount_due is not None else "-"
    payment = ("processing" if p.payment_processing else _t(p.payment_started_at)) if p else "-"
    return [
        ("status", p.status if p else "unreadable", j.status if j else "(no row)", "-", d.status),
        ("invoice", invoice, "-", "-", "-"),
        ("amount due", amount, "-", "-", "-"),
        ("anchor", _t(p.failed_at) if p else "-", _t(j.dunning_campaign_started_at) if j else "-",
         _t(c.campaign_started_at) if c else "-", _t(d.anchor)),
        ("campaign", "-", f"last {j.last_outcome}" if j and j.last_outcome else "-",
         c.outcome if c else "none", "running" if d.campaign else "none"),
        ("entitlement", "-", j.entitlement if j else "-", c.entitlement if c else "-", d.entitlement),
        ("payment", payment, "-", _t(c.payment_started_at) if c else "-", "-"),
    ]  # fmt: skip


def render(r: Report) -> str:
    rows = [COLUMNS, *table(r)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [f"subscription {r.subscription_id} ({r.provider}){' - dry run, nothing changed' if r.dry_run else ''}"]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    for what, err in (("provider", r.provider_error), ("campaign", r.campaign_error)):
        if err:
            lines.append(f"{what} not read: {err}")
    lines.append(f"rule: {r.plan.rule}")
    verb = "would do" if r.dry_run else "did"
    if r.plan.actions:
        results = {a.kind: a.result for a in r.applied}
        lines.append(f"actions ({verb}):")
        for a in r.plan.actions:
            done = f" -> {results[a.kind]}" if a.kind in results else ""
            lines.append(f"  {a.kind}{_detail(a)}{done}: {a.reason}")
        lines.append(f"drift: {', '.join(r.plan.drift)}")
    else:
        lines.append("actions: none, the stores agree" if not r.plan.deferred else "actions: none")
    if r.plan.deferred:
        lines.append(f"deferred: {r.plan.deferred}")
    for a in r.plan.withheld:
        lines.append(f"  withheld {a.kind}{_detail(a)}: {a.reason}")
    lines.append(f"status: {r.status}")
    return "\n".join(lines)


def _detail(a: object) -> str:
    for name in ("anchor", "level", "field"):
        value = getattr(a, name, None)
        if value is not None:
            shown = _t(value) if isinstance(value, datetime) else str(value)
            extra = getattr(a, "value", None) if name == "field" else getattr(a, "outcome", None)
            tail = f"={_t(extra) if isinstance(extra, datetime) else extra}" if name == "field" else (
                f" {extra}" if extra else "")  # fmt: skip
            return f" {shown}{tail}"
    return ""
