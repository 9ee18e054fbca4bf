"""Aggregates of the ledger for /metrics: drift the sweep or support found, and bad debt.

    drift_counts       `dunning.drift_detected` rows per drifted field: a row whose
                       data["drift"] names two fields counts once for each (a field named
                       twice in one row counts once)
    drift_by_source    the same rows per data["source"] (sweep | support)
    bad_debt_breakdown entries per decline class and plan, exits per how and reason they
                       left, how many are in bad debt now, and how long exits stayed

All in SQL (JSON read per dialect where needed), so the cost does not grow with memory.
A value a row lacks is counted under "unknown".
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, exists, func, select, text
from sqlalchemy.orm import aliased

from dunning.store.bad_debt import ENTERED, EXITED
from dunning.store.schema import dunning_events
from dunning.store.store import _READ, Store

DRIFT = "dunning.drift_detected"
UNKNOWN = "unknown"

# One row per (row, distinct string field) of data["drift"], when it is a JSON array.
_DRIFT_FIELDS = {
    "sqlite": """
        SELECT j.value, count(DISTINCT e.id) FROM dunning_events AS e, json_each(e.data, '$.drift') AS j
        WHERE e.type = :type AND json_type(e.data, '$.drift') = 'array' AND j.type = 'text'
        GROUP BY j.value""",
    "postgresql": """
        SELECT j.value #>> '{}', count(DISTINCT e.id) FROM dunning_events AS e
        CROSS JOIN LATERAL json_array_elements(
            CASE WHEN json_typeof(e.data -> 'drift') = 'array' THEN e.data -> 'drift' ELSE '[]'::json END
        ) AS j(value)
        WHERE e.type = :type AND json_typeof(j.value) = 'string'
        GROUP BY 1""",
}


def _reader(store: Store) -> Connection:
    return store.engine.execution_options(**{_READ: True}).connect()


def _sorted(pairs: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, n in pairs:
        name = UNKNOWN if key is None else str(key)
        out[name] = out.get(name, 0) + int(n)
    return dict(sorted(out.items()))


def drift_counts(store: Store) -> dict[str, int]:
    """Drift rows per drifted field, e.g. {"projection.entitlement": 3, ...}."""
    with _reader(store) as conn:
        rows = conn.execute(text(_DRIFT_FIELDS[conn.dialect.name]), {"type": DRIFT}).all()
    return _sorted(rows)


def _grouped(conn: Connection, type_: str, field: str) -> dict[str, int]:
    """Rows of `type_` per data[field] (missing or null: "unknown")."""
    e = dunning_events.c
    value = e.data[field].as_string().label("value")
    return _sorted(conn.execute(select(value, func.count()).where(e.type == type_).group_by(value)).all())


def drift_by_source(store: Store) -> dict[str, int]:
    """Drift rows per source, e.g. {"support": 1, "sweep": 4}."""
    with _reader(store) as conn:
        return _grouped(conn, DRIFT, "source")


def _in_bad_debt(conn: Connection) -> int:
    """Subscriptions whose newest bad-debt row is an entry (the pay path's own rule)."""
    e, later = dunning_events.c, aliased(dunning_events).c
    newer = exists().where(
        later.subscription_id == e.subscription_id, later.type.in_((ENTERED, EXITED)), later.id > e.id
    )
    return int(conn.execute(select(func.count()).where(e.type == ENTERED, ~newer)).scalar_one())


def _stay_days(conn: Connection) -> dict[str, Any]:
    """Exits' days_in_bad_debt: count, median (p50) and max, rounded to 0.01 days."""
    e = dunning_events.c
    days = e.data["days_in_bad_debt"].as_float()
    where = (e.type == EXITED, days.is_not(None))
    n, longest = conn.execute(select(func.count(), func.max(days)).where(*where)).one()
    if not n:
        return {"count": 0, "p50": None, "max": None}
    middle = select(days).where(*where).order_by(days).offset((n - 1) // 2).limit(1 if n % 2 else 2)
    values = [float(v) for v in conn.execute(middle).scalars().all()]
    return {"count": int(n), "p50": round(sum(values) / len(values), 2), "max": round(float(longest), 2)}


def bad_debt_breakdown(store: Store) -> dict[str, Any]:
    """Bad debt from the ledger (JSON-able):

    {"entered": {"total", "by_decline_class", "by_plan"},
     "exited": {"total", "by_how", "by_reason", "stay_days": {"count", "p50", "max"}},
     "in_bad_debt": subscriptions in bad debt now}"""
    with _reader(store) as conn, conn.begin():
        by_class, by_plan = _grouped(conn, ENTERED, "decline_class"), _grouped(conn, ENTERED, "plan_id")
        by_how, by_reason = _grouped(conn, EXITED, "how"), _grouped(conn, EXITED, "reason")
        current, stay = _in_bad_debt(conn), _stay_days(conn)
    return {
        "entered": {"total": sum(by_class.values()), "by_decline_class": by_class, "by_plan": by_plan},
        "exited": {"total": sum(by_how.values()), "by_how": by_how, "by_reason": by_reason, "stay_days": stay},
        "in_bad_debt": current,
    }
