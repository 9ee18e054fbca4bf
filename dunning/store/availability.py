"""Is an error "the database is unreachable now" (retry later), and how to say so without
the URL (it may carry credentials): the kind of database only."""

from __future__ import annotations

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from dunning.store.store import Store

UNAVAILABLE: tuple[type[Exception], ...] = (OperationalError, InterfaceError, PoolTimeout)


def is_unavailable(err: BaseException) -> bool:
    """Connection refused or lost, file unreachable, locked, pool exhausted."""
    return isinstance(err, UNAVAILABLE)


def describe(store: Store, err: BaseException | None = None) -> str:
    """"the postgresql database is unreachable (OperationalError)": kind and error type,
    never the URL, host, user or the driver's message."""
    kind = store.engine.dialect.name
    return f"the {kind} database is unreachable" + (f" ({type(err).__name__})" if err is not None else "")
