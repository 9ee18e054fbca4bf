"""PURE: is a piece of text fit to be stored and sent on? Ids and words from the outside
(webhooks, the payment service, the CLI) are refused, never cut or cleaned, when they
hold a NUL character (PostgreSQL cannot store it), a lone surrogate (it is not Unicode:
no database, JSON encoder or Temporal payload takes it), or more characters than their
column holds (an id must match exactly, so it is never truncated).

`problem` answers in words that name the fault and never repeat the text (it may be an
email address).
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_ID = 255  # every *_id column


def problem(value: str, limit: int) -> str | None:
    """What is wrong with `value` (None: nothing)."""
    if "\x00" in value:
        return f"contains a NUL character (at position {value.index(chr(0))})"
    for i, ch in enumerate(value):
        if "\ud800" <= ch <= "\udfff":
            return f"contains a lone surrogate (U+{ord(ch):04X} at position {i}), which is not valid Unicode"
    if len(value) > limit:
        return f"is {len(value)} characters; at most {limit} are accepted"
    return None


def first_problem(fields: Iterable[tuple[str, str | None, int]]) -> str | None:
    """`<name> <problem>` for the first (name, value, limit) whose value is not fit; None
    values pass."""
    for name, value, limit in fields:
        found = problem(value, limit) if isinstance(value, str) else None
        if found:
            return f"{name} {found}"
    return None


def key_problem(key: str) -> str | None:
    """What is wrong with an Idempotency-Key (None when it is fine)."""
    if not (0 < len(key) <= MAX_ID and key.isprintable()):
        return f"Idempotency-Key must be 1 to {MAX_ID} printable characters"
    return None
