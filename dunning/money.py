"""PURE: an amount in minor units, written for its currency: `format_amount(150000, "jpy")`
is "¥150,000", `format_amount(1234, "usd")` is "$12.34", `format_amount(1234, "chf")` is
"12.34 CHF". The exponent is ISO 4217's: 0 for JPY-like currencies, 3 for BHD-like ones,
2 otherwise. Unknown currency: None (the template then shows no amount rather than a wrong one).
"""

from __future__ import annotations

import re

ZERO_DECIMAL = frozenset(
    "bif clp djf gnf isk jpy kmf krw pyg rwf ugx uyi vnd vuv xaf xof xpf".split()
)  # fmt: skip
THREE_DECIMAL = frozenset("bhd iqd jod kwd lyd omr tnd".split())
SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "inr": "₹", "krw": "₩", "cad": "CA$", "aud": "A$"}
_CODE = re.compile(r"^[a-z]{3}$")


def exponent(currency: str) -> int:
    code = currency.lower()
    return 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2


def format_amount(minor: int | None, currency: str | None) -> str | None:
    if minor is None or currency is None or not _CODE.match(currency.lower()) or minor < 0:
        return None
    code = currency.lower()
    places = exponent(code)
    whole, frac = divmod(minor, 10**places)
    number = f"{whole:,}" + (f".{frac:0{places}d}" if places else "")
    symbol = SYMBOLS.get(code)
    return f"{symbol}{number}" if symbol else f"{number} {code.upper()}"
