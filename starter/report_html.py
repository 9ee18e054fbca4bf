"""The recovery report (`dunning.analytics_model.RecoveryReport`) as ONE self-contained HTML
file: inline CSS, inline SVG charts drawn in Python (starter.report_svg), no script, no URL
to fetch; every string goes through html.escape. Each chart is followed by a table of the
numbers behind it. Definitions: `dunning.analytics`."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path

from dunning.analytics_model import Group, Money, RecoveryReport
from starter.report_svg import BLUE, GREEN, GREY, ORANGE, RED, TEAL, Bar, Segment, columns, nice_top, rows, stacked

# ISO 4217 currencies without minor units (amounts are minor units = whole units there)
ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())

CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;margin:12px;background:#fff}
h1{font-size:22px;margin:4px 0}h2{font-size:16px;margin:0 0 6px}
.period{color:#555;margin:0 0 10px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:14px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;flex:1 1 0;min-width:120px}
.card b{display:block;font-size:22px}.card span{color:#555;font-size:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:14px}
section{border:1px solid #e3e3e3;border-radius:6px;padding:10px;min-width:0}.tw{overflow-x:auto}
svg.chart{display:block;max-width:100%;height:auto;margin-bottom:6px}
svg .grid{stroke:#eee}svg .axis{stroke:#999}
svg text{font-size:11px;fill:#333}svg .tick{fill:#777}svg .val{font-weight:600}
svg .note{fill:#888;font-style:italic}svg .inbar{fill:#fff;font-weight:600}
table{border-collapse:collapse;width:100%;font-size:11.5px}
th,td{border-bottom:1px solid #eee;padding:2px 3px;text-align:right;white-space:nowrap;vertical-align:top}
th:first-child,td:first-child{text-align:left}th{color:#555;font-weight:600;white-space:normal}
.muted{color:#777;font-size:12px}footer{margin-top:14px;color:#555;font-size:12px}
"""

DEFINITIONS = (
    "A campaign is one failed payment: a dunning.campaign_started ledger row (shadow ones excluded) begun "
    "in the period. Recovered: it ended recovered or recovered_after_cancel, whenever that happened. Lost: "
    "exhausted or resolved without payment. In progress: no end yet; it stays in the denominator. Recovery "
    "rate = recovered / campaigns. Days to recovery = recovery time - failure time in real days. Cohort week: "
    "the ISO week of the failure (UTC). Bad debt: entries and exits that happened in the period. Amounts are "
    "per currency, never added across currencies."
)


def money(currency: str, minor: int) -> str:
    if currency == "unknown":
        return f"{minor:,} (minor units, currency unknown)"
    if currency.lower() in ZERO_DECIMAL:
        return f"{currency.upper()} {minor:,}"
    return f"{currency.upper()} {minor / 100:,.2f}"


def money_list(m: Money) -> str:
    return " · ".join(money(c, v) for c, v in sorted(m.items())) or "—"


def money_lines(m: Money) -> list[str]:
    """One line per currency (a table cell)."""
    return [money(c, v) for c, v in sorted(m.items())] or ["—"]


def pct(rate: float | None) -> str:
    return "—" if rate is None else f"{rate:.1%}"


def _pct_tick(v: float) -> str:
    return f"{v:.0%}"


def _table(headers: Sequence[str], body: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)

    def cell(c: object) -> str:  # a list: one line each
        return "<br>".join(escape(str(x)) for x in c) if isinstance(c, list) else escape(str(c))

    lines = ["<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in body]
    if not lines:
        lines = [f'<tr><td colspan="{len(headers)}" class="muted">nothing in this period</td></tr>']
    return f'<div class="tw"><table><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table></div>'


def _section(sid: str, title: str, chart: str, table: str, note: str = "") -> str:
    extra = f'<p class="muted">{escape(note)}</p>' if note else ""
    return f'<section id="{escape(sid)}"><h2>{escape(title)}</h2>\n{chart}\n{table}{extra}</section>'


def _groups_table(name: str, groups: Sequence[Group]) -> str:
    body = [(g.key, g.campaigns, g.recovered, g.lost, g.in_progress, pct(g.rate), money_lines(g.failed_amount),
             money_lines(g.recovered_amount)) for g in groups]  # fmt: skip
    return _table([name, "campaigns", "recovered", "lost", "in progress", "rate", "failed", "recovered amount"], body)


def _rate_bar(g: Group, color: str = BLUE) -> Bar:
    text = f"{pct(g.rate)} ({g.recovered}/{g.campaigns})" if g.campaigns else "no campaigns"
    return Bar(g.key, g.rate, text, color, short=pct(g.rate) if g.campaigns else "–")


def _cohort(r: RecoveryReport) -> str:
    chart = columns("chart-cohort", "Recovery rate by cohort week", [_rate_bar(g) for g in r.by_cohort_week],
                    1.0, _pct_tick)  # fmt: skip
    return _section("sec-cohort", "Recovery rate by cohort week", chart, _groups_table("week", r.by_cohort_week),
                    "Young cohorts are still maturing: their in-progress campaigns may yet recover.")  # fmt: skip


def _amounts(r: RecoveryReport) -> str:
    currencies = sorted(set(r.failed_amount) | set(r.recovered_amount) | set(r.lost_amount))
    parts = [("recovered", r.recovered_amount, GREEN), ("lost", r.lost_amount, RED),
             ("in progress", r.in_progress_amount, GREY)]  # fmt: skip
    lines = [(c.upper(), [Segment(n, m.get(c, 0), money(c, m.get(c, 0)), col) for n, m, col in parts])
             for c in currencies]  # fmt: skip
    chart = stacked("chart-amounts", "Recovered vs lost amounts, per currency", lines)
    body = [(c.upper(), money(c, r.failed_amount.get(c, 0)), money(c, r.recovered_amount.get(c, 0)),
             money(c, r.lost_amount.get(c, 0)), money(c, r.in_progress_amount.get(c, 0)),
             pct(r.amount_rate.get(c))) for c in currencies]  # fmt: skip
    table = _table(["currency", "failed", "recovered", "lost", "in progress", "amount recovered"], body)
    note = f"{r.amount_unknown} campaign(s) without a known amount are counted, but in no amount."
    return _section("sec-amounts", "Recovered vs lost amounts (per currency)", chart, table, note)


def _days(r: RecoveryReport) -> str:
    top = nice_top(max([4] + [b.count for b in r.days_to_recovery]))  # whole-number ticks
    bars = [Bar(b.label, b.count, str(b.count), GREEN) for b in r.days_to_recovery]
    chart = columns("chart-days", "Days to recovery", bars, top, lambda v: f"{v:g}")
    table = _table(["days", "recoveries"], [(b.label, b.count) for b in r.days_to_recovery])
    median = "—" if r.median_days_to_recovery is None else f"{r.median_days_to_recovery:g} days"
    return _section("sec-days", "Days to recovery", chart, table, f"Median: {median}.")


def _decline(r: RecoveryReport) -> str:
    chart = rows("chart-decline", "Recovery rate by decline class", [_rate_bar(g) for g in r.by_decline_class],
                 1.0, _pct_tick)  # fmt: skip
    table = _groups_table("decline class", r.by_decline_class)
    return _section("sec-decline", "Recovery rate by decline class", chart, table)


def _paths(r: RecoveryReport) -> str:
    bars = [Bar(p.path, p.rate, f"{pct(p.rate)} ({p.recovered})", TEAL) for p in r.by_path]
    top = nice_top(max([p.rate or 0 for p in r.by_path]), cap=1.0)
    chart = rows("chart-path", "Share of campaigns recovered, by recovery path", bars, top, _pct_tick)
    table = _table(["path", "recovered", "share of campaigns", "amount"],
                   [(p.path, p.recovered, pct(p.rate), money_lines(p.amount)) for p in r.by_path])  # fmt: skip
    return _section("sec-path", "Recovery rate by recovery path", chart, table,
                    "The paths' shares add up to the recovery rate.")  # fmt: skip


def _bad_debt(r: RecoveryReport) -> str:
    bd = r.bad_debt
    bars = [Bar("entered", bd.entered, str(bd.entered), ORANGE)]
    bars += [Bar(f"exited: {how}", n, str(n), TEAL) for how, n in sorted(bd.exited_by_how.items())]
    if not bd.exited_by_how:
        bars.append(Bar("exited", 0, "0", TEAL))
    top = nice_top(max([4.0] + [b.value or 0 for b in bars]))
    chart = columns("chart-bad-debt", "Bad debt entries and exits", bars, top, lambda v: f"{v:g}")
    body: list[tuple[str, int, list[str]]] = [("entered", bd.entered, money_lines(bd.entered_amount))]
    body += [(f"entered: {c}", n, []) for c, n in sorted(bd.entered_by_decline_class.items())]
    body += [("exited", bd.exited, money_lines(bd.exited_amount))]
    body += [(f"exited: {how}", n, []) for how, n in sorted(bd.exited_by_how.items())]
    return _section("sec-bad-debt", "Bad debt entries and exits", chart, _table(["", "rows", "amount"], body),
                    "Rows that happened in the period (event time, not cohort).")  # fmt: skip


def _cards(r: RecoveryReport) -> str:
    median = "—" if r.median_days_to_recovery is None else f"{r.median_days_to_recovery:g} d"
    cards = [("failed payments", str(r.campaigns), money_list(r.failed_amount)),
             ("recovered", str(r.recovered), money_list(r.recovered_amount)),
             ("recovery rate", pct(r.recovery_rate), "recovered / failed payments"),
             ("lost", str(r.lost), f"exhausted {r.exhausted}, resolved {r.resolved}"),
             ("in progress", str(r.in_progress), money_list(r.in_progress_amount)),
             ("median days to recovery", median, "")]  # fmt: skip
    return "".join(f'<div class="card"><span>{escape(a)}</span><b>{escape(b)}</b><span>{escape(c)}</span></div>'
                   for a, b, c in cards)  # fmt: skip


def render(r: RecoveryReport) -> str:
    """The whole page, as text."""
    period = f"Failed payments begun {r.since.isoformat()} to {r.until.isoformat()} (until excluded)"
    sections = [_cohort(r), _amounts(r), _days(r), _decline(r), _paths(r), _bad_debt(r)]
    splits = (f'<section id="sec-splits"><h2>By provider and plan</h2>{_groups_table("provider", r.by_provider)}'
              f'<br>{_groups_table("plan", r.by_plan)}</section>')  # fmt: skip
    return "\n".join([
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Dunning recovery report</title>", f"<style>{CSS}</style></head><body>",
        f'<h1>Dunning recovery report</h1><p class="period">{escape(period)}</p>',
        f'<div class="cards">{_cards(r)}</div>', '<div class="grid">', *sections, splits, "</div>",
        f"<footer>{escape(DEFINITIONS)}</footer>", "</body></html>",
    ])  # fmt: skip


def write(r: RecoveryReport, path: Path) -> None:
    path.write_text(render(r), encoding="utf-8")
