"""PURE: the signed, expiring token in an email's "update your payment method" link, bound
to one subscription, so the host app can trust the link without a lookup.

    token = v1.<base64url(subscription id)>.<expiry, unix seconds>.<base64url(HMAC-SHA256)>
    HMAC key: `[email] link_secret`; message: "v1.<base64url(id)>.<expiry>"

`sign(subscription_id, expires_at, secret)` makes one; `verify(token, secret, now)` answers
the subscription id or raises `BadLink` naming what is wrong (malformed, bad signature,
expired). The host app may use this module, or check the format above in any language.
The token names the subscription (the host's own id), never an email address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

VERSION = "v1"


class BadLink(ValueError):
    pass


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(body: str, secret: str) -> str:
    return _b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest())


def sign(subscription_id: str, expires_at: datetime, secret: str) -> str:
    if not secret:
        raise ValueError("link_secret is empty: links cannot be signed")
    body = f"{VERSION}.{_b64(subscription_id.encode())}.{int(expires_at.timestamp())}"
    return f"{body}.{_mac(body, secret)}"


def verify(token: str, secret: str, now: datetime | None = None) -> str:
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 4 or parts[0] != VERSION or not parts[2].isdigit():
        raise BadLink("malformed link token")
    body = ".".join(parts[:3])
    if not hmac.compare_digest(_mac(body, secret), parts[3]):
        raise BadLink("link token signature does not match")
    if int(parts[2]) < (now or datetime.now(UTC)).timestamp():
        raise BadLink("link token has expired")
    try:
        return _unb64(parts[1]).decode()
    except (ValueError, UnicodeDecodeError):
        raise BadLink("malformed link token") from None
