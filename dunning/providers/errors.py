"""What a provider adapter says when a webhook is refused, or accepted and not acted on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

WebhookReason = Literal[
    "missing_signature",
    "bad_signature",
    "stale_timestamp",
    "malformed_body",
    "provider_disabled",
    "body_too_large",
]

_STATUS: dict[str, int] = {
    "missing_signature": 400,
    "bad_signature": 400,
    "stale_timestamp": 400,
    "malformed_body": 400,
    "provider_disabled": 404,
    "body_too_large": 413,
}


class WebhookError(Exception):
    """A webhook the engine refuses. `status` is the HTTP status to answer with,
    `reason` a short machine reason (for counters and logs), the message says in words
    what was wrong. The provider redelivers on any non-2xx answer."""

    def __init__(self, reason: WebhookReason, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.reason: WebhookReason = reason
        self.status: int = status if status is not None else _STATUS[reason]
        self.message = message

    def __repr__(self) -> str:
        return f"WebhookError(status={self.status}, reason={self.reason!r}, message={self.message!r})"


def provider_disabled(provider: str, *env_vars: str) -> WebhookError:
    """The provider's webhook is not configured: name the setting(s) that enable it."""
    names = " and ".join(env_vars)
    return WebhookError(
        "provider_disabled",
        f"{provider} webhooks are disabled: set {names} to enable them",
    )


def body_too_large(size: int, limit: int) -> WebhookError:
    return WebhookError("body_too_large", f"request body is {size} bytes; the limit is {limit} bytes")


@dataclass(frozen=True)
class Ignored:
    """A genuine (verified) event the engine records but does not act on.

    `reason`: `unhandled_type` (a type the engine has no use for), `no_subscription`
    (a handled type that names no subscription), `no_relevant_change` (e.g. a subscription
    update that changes nothing the engine watches)."""

    provider: str
    event_id: str
    event_type: str
    reason: str
