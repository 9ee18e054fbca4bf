"""PURE: text that may leave the store (activity failures, log lines, ledger data) never
carries an email address. SMTP servers and providers echo recipients in their errors;
`scrub` replaces anything address-shaped before such text goes anywhere."""

from __future__ import annotations

import re

# Deliberately broad: a local part, '@', a domain-ish tail (also `<a@b>` and quoted forms).
_ADDRESS = re.compile(r"[^\s<>\"'(),;:\[\]]+@[^\s<>\"'(),;:\[\]]+")
REDACTED = "<address>"
MAX = 500


def scrub(text: str, limit: int = MAX) -> str:
    """`text` with every address replaced by `<address>`, bounded to `limit` characters."""
    cleaned = _ADDRESS.sub(REDACTED, text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"
