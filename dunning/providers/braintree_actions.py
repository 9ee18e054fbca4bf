"""Braintree behind `PaymentProvider`, over `braintree.BraintreeGateway`.

    retry_charge         gateway.subscription.retry_charge(id, amount=None,
                         submit_for_settlement=True)
                         -> POST /merchants/<merchant>/transactions
                            <transaction><subscription-id>..</subscription-id><type>sale</type>..
    cancel_subscription  gateway.subscription.cancel(id)
                         -> PUT /merchants/<merchant>/subscriptions/<id>/cancel
    mark_unpaid          not offered: Braintree has no invoice to mark uncollectible
                         (ProviderError, not retryable; use on_exhaustion cancel or none)

A processor decline comes back as an error result carrying the transaction: its
`processor_response_code` (else `gateway_rejection_reason`) is the decline code, classified
with `declines.classify("braintree", code, processor_response_type)`.

Braintree has no idempotency keys. Two of its own rules stand in for them: a
subscription that is no longer past due refuses a retry (91531), and cancelling a
cancelled subscription is refused (81905). After 91531 the subscription is read: Active
means an earlier attempt was paid (succeeded); any other status is an error. 81905 is a
success.

`braintree_api_base` (DUNNING_BRAINTREE_API_BASE), e.g. ``http://127.0.0.1:PORT``,
replaces the environment's host with a custom `braintree.Environment` (no SSL), so tests
reach a local server.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import braintree
from braintree.exceptions.authentication_error import AuthenticationError
from braintree.exceptions.authorization_error import AuthorizationError
from braintree.exceptions.braintree_error import BraintreeError
from braintree.exceptions.configuration_error import ConfigurationError
from braintree.exceptions.gateway_timeout_error import GatewayTimeoutError
from braintree.exceptions.not_found_error import NotFoundError
from braintree.exceptions.request_timeout_error import RequestTimeoutError
from braintree.exceptions.server_error import ServerError
from braintree.exceptions.service_unavailable_error import ServiceUnavailableError
from braintree.exceptions.too_many_requests_error import TooManyRequestsError
from braintree.exceptions.upgrade_required_error import UpgradeRequiredError

from dunning.config import ConfigError
from dunning.declines import classify
from dunning.providers.actions import ChargeResult, ProviderError, retryable_status

if TYPE_CHECKING:
    from dunning.config import Settings

PROVIDER = "braintree"
T = TypeVar("T")

ALREADY_CANCELED = braintree.ErrorCodes.Subscription.StatusIsCanceled  # "81905"
NOT_PAST_DUE = braintree.ErrorCodes.Transaction.SubscriptionStatusMustBePastDue  # "91531"
SUCCESS_STATUSES = frozenset(
    {"authorized", "authorizing", "submitted_for_settlement", "settling", "settled",
     "settlement_pending", "settlement_confirmed"}
)  # fmt: skip

_STATUS_OF: dict[type[BraintreeError], int] = {
    AuthenticationError: 401,
    AuthorizationError: 403,
    NotFoundError: 404,
    RequestTimeoutError: 408,
    UpgradeRequiredError: 426,
    TooManyRequestsError: 429,
    ServerError: 500,
    ServiceUnavailableError: 503,
    GatewayTimeoutError: 504,
}
_HINTS: dict[int, str] = {
    401: "check DUNNING_BRAINTREE_PUBLIC_KEY and DUNNING_BRAINTREE_PRIVATE_KEY",
    403: "the API keys may not do this; check DUNNING_BRAINTREE_MERCHANT_ID and the keys' role",
    404: "unknown subscription, or a wrong DUNNING_BRAINTREE_MERCHANT_ID",
    426: "the braintree library is too old for the gateway",
}


def provider_error(err: Exception, what: str) -> ProviderError:
    """Map a braintree library exception to a ProviderError (retryable or not)."""
    status = next((code for cls, code in _STATUS_OF.items() if isinstance(err, cls)), None)
    if status is None and (m := re.search(r"HTTP_RESPONSE (\d{3})", str(err))):
        status = int(m[1])  # UnexpectedError for any other status
    if isinstance(err, ConfigurationError):
        retryable = False
    elif status is not None:
        retryable = retryable_status(status)
    else:
        retryable = True  # connection error, timeout, unreadable answer
    shown = f"HTTP {status}" if status else "no usable response"
    detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    hint = f"; {_HINTS[status]}" if status in _HINTS else ""
    return ProviderError(
        f"braintree: {what} failed ({shown}, {detail}){hint}", retryable=retryable, provider=PROVIDER, status=status
    )


def environment(settings: Settings) -> braintree.Environment:
    """The named environment, or a custom one at `braintree_api_base`."""
    base = settings.braintree_api_base
    if not base:
        try:
            return braintree.Environment.parse_environment(settings.braintree_environment)
        except ConfigurationError:
            known = ", ".join(sorted(braintree.Environment.All))
            raise ConfigError(
                f"DUNNING_BRAINTREE_ENVIRONMENT = {settings.braintree_environment!r}: must be one of {known}"
            ) from None
    parts = urlsplit(base)
    try:
        port = parts.port
    except ValueError:
        port = -1
    rule = "must be http://HOST:PORT (no SSL, e.g. a local test server) or https://HOST"
    if parts.scheme == "http" and parts.hostname and port != -1 and port != 443 and parts.path in ("", "/"):
        return braintree.Environment("custom", parts.hostname, str(port or 80), "", False, None)
    if parts.scheme == "https" and parts.hostname and port in (None, 443) and parts.path in ("", "/"):
        return braintree.Environment("custom", parts.hostname, "443", "", True, True)  # system CA bundle
    raise ConfigError(f"DUNNING_BRAINTREE_API_BASE = {base!r}: {rule}")


def gateway_from_settings(settings: Settings) -> braintree.BraintreeGateway:
    missing = [
        env
        for env, value in (
            ("DUNNING_BRAINTREE_MERCHANT_ID", settings.braintree_merchant_id),
            ("DUNNING_BRAINTREE_PUBLIC_KEY", settings.braintree_public_key),
            ("DUNNING_BRAINTREE_PRIVATE_KEY", settings.braintree_private_key),
        )
        if not value
    ]
    if missing:
        raise ConfigError(f"braintree is not configured: set {' and '.join(missing)} to let the engine call Braintree")
    return braintree.BraintreeGateway(
        braintree.Configuration(
            environment=environment(settings),
            merchant_id=settings.braintree_merchant_id,
            public_key=settings.braintree_public_key,
            private_key=settings.braintree_private_key,
            wrap_http_exceptions=True,  # requests' errors become braintree ConnectionError/TimeoutError
        )
    )


def _errors(result: Any) -> list[tuple[str, str]]:
    errors = getattr(result, "errors", None)
    deep = getattr(errors, "deep_errors", None) or []
    return [(str(getattr(e, "code", "")), str(getattr(e, "message", ""))) for e in deep]


def _describe(result: Any) -> str:
    listed = "; ".join(f"{code} {message}".strip() for code, message in _errors(result))
    return listed or str(getattr(result, "message", "") or "no reason given")


def _status(value: Any) -> str:
    """Braintree's status in snake case ("Past Due" -> "past_due"), as the webhook adapter says it."""
    return re.sub(r"[\s-]+", "_", str(value or "").strip().lower()) or "unknown"


def _s(obj: Any, name: str) -> str | None:
    value = getattr(obj, name, None)
    return None if value is None or value == "" else str(value)


class BraintreeActions:
    name = PROVIDER

    def __init__(self, gateway: braintree.BraintreeGateway) -> None:
        self.gateway = gateway

    @classmethod
    def from_settings(cls, settings: Settings) -> BraintreeActions:
        return cls(gateway_from_settings(settings))

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ProviderError:
            raise
        except Exception as err:
            raise provider_error(err, what) from err

    def retry_charge(self, subscription_id: str, invoice_id: str | None, idempotency_key: str) -> ChargeResult:
        """Braintree has no invoices (invoice_id is ignored) and no idempotency keys (see module doc)."""
        what = f"retry charge for subscription {subscription_id!r}"
        result = self._call(
            what,
            lambda: self.gateway.subscription.retry_charge(subscription_id, amount=None, submit_for_settlement=True),
        )
        if result is None:
            raise ProviderError(f"braintree: {what} failed (an answer with no result)", retryable=True, provider=PROVIDER)
        txn = getattr(result, "transaction", None)
        if result.is_success and txn is not None and _s(txn, "status") in SUCCESS_STATUSES:
            return ChargeResult("succeeded", reference=_s(txn, "id"))
        if txn is not None:
            code = _s(txn, "processor_response_code")
            if _s(txn, "status") == "gateway_rejected" and not code:
                code = _s(txn, "gateway_rejection_reason")
            klass = classify(PROVIDER, code, _s(txn, "processor_response_type"))
            return ChargeResult("declined", code, klass, reference=_s(txn, "id"))
        if any(code == NOT_PAST_DUE for code, _ in _errors(result)):
            sub = self._call(f"{what} (reading the subscription after 91531)",
                             lambda: self.gateway.subscription.find(subscription_id))  # fmt: skip
            status = _status(getattr(sub, "status", None))
            if status == "active":  # an earlier attempt was paid
                return ChargeResult("succeeded")
            raise ProviderError(
                f"braintree: {what} refused: the subscription is {status}, not past due",
                retryable=False,
                provider=PROVIDER,
            )
        raise ProviderError(f"braintree: {what} refused: {_describe(result)}", retryable=False, provider=PROVIDER)

    def cancel_subscription(self, subscription_id: str, idempotency_key: str) -> str:
        what = f"cancel subscription {subscription_id!r}"
        result = self._call(what, lambda: self.gateway.subscription.cancel(subscription_id))
        if result is None:
            raise ProviderError(f"braintree: {what} failed (an answer with no result)", retryable=True, provider=PROVIDER)
        if result.is_success:
            return _status(getattr(result.subscription, "status", None))
        if any(code == ALREADY_CANCELED for code, _ in _errors(result)):
            return "canceled"
        raise ProviderError(f"braintree: {what} refused: {_describe(result)}", retryable=False, provider=PROVIDER)

    def mark_unpaid(self, subscription_id: str, invoice_id: str | None, idempotency_key: str) -> str:
        raise ProviderError(
            f"braintree: mark unpaid subscription {subscription_id!r} is not supported: Braintree has no invoice "
            "to mark uncollectible; set campaign.providers.braintree.on_exhaustion to 'cancel' or 'none'",
            retryable=False,
            provider=PROVIDER,
        )
