"""HMAC-SHA256 signatures in Stripe's header scheme, with our own secrets:
``t=<unix>,v1=<hex>`` where ``hex = HMAC_SHA256(secret, f"{t}.".encode() + body)``.
Used by the fake provider's webhooks and by outbound events to host apps."""

import hashlib
import hmac


def mac(body: bytes, secret: str, timestamp: int) -> str:
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The signature header for `body`."""
    return f"t={int(timestamp)},v1={mac(body, secret, int(timestamp))}"
