"""The ledger rows the recovery report needs, on SQLite and PostgreSQL (SQLAlchemy Core,
no dialect-specific SQL), read in one read-only transaction; the numbers are made by the
pure `dunning.analytics` (whose docstring states every definition).

    campaign_rows   `dunning.campaign_started` and end rows (recovered, recovered_after_cancel,
                    exhausted, resolved) of the campaigns begun in [since, until), whenever
                    the end was written (the eventual outcome)
    bad_debt_rows   `bad_debt.entered` / `bad_debt.exited` rows that occurred in
                    [since, until), each with its campaign's `campaign_started` data (the
                    currency and amount_due, the shadow mark)
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, and_, select
from sqlalchemy.orm import aliased

from dunning.analytics import ENDS, ENTERED, EXITED, STARTED, LedgerRow, report
from dunning.analytics_model import RecoveryReport
from dunning.store.schema import dunning_events
from dunning.store.store import _READ, Store, _utc


def campaign_rows(conn: Connection, since: datetime, until: datetime) -> list[LedgerRow]:
    e = dunning_events.c
    query = (
        select(e.type, e.subscription_id, e.campaign_started_at, e.occurred_at, e.data)
        .where(e.type.in_((STARTED, *ENDS)), e.campaign_started_at >= since, e.campaign_started_at < until)
        .order_by(e.id)
    )
    return [LedgerRow(*r) for r in conn.execute(query).all()]


def bad_debt_rows(conn: Connection, since: datetime, until: datetime) -> list[LedgerRow]:
    e = dunning_events
    s = aliased(dunning_events)
    same_campaign = and_(
        s.c.subscription_id == e.c.subscription_id,
        s.c.campaign_started_at == e.c.campaign_started_at,
        s.c.type == STARTED,
        s.c.step_key == "",
    )
    query = (
        select(e.c.type, e.c.subscription_id, e.c.campaign_started_at, e.c.occurred_at, e.c.data, s.c.data)
        .select_from(e.outerjoin(s, same_campaign))
        .where(e.c.type.in_((ENTERED, EXITED)), e.c.occurred_at >= since, e.c.occurred_at < until)
        .order_by(e.c.id)
    )
    return [LedgerRow(*r) for r in conn.execute(query).all()]


def recovered_vs_lost(store: Store, since: datetime, until: datetime) -> RecoveryReport:
    """Recovered vs lost for the campaigns begun in [since, until), from the ledger alone
    (definitions: `dunning.analytics`). Raises ValueError for a naive time or an empty period."""
    since, until = _utc("since", since), _utc("until", until)
    if since >= until:
        raise ValueError(f"since ({since.isoformat()}) must be before until ({until.isoformat()})")
    with store.engine.execution_options(**{_READ: True}).connect() as conn, conn.begin():
        campaigns, bad_debt = campaign_rows(conn, since, until), bad_debt_rows(conn, since, until)
    return report(campaigns, bad_debt, since, until)
