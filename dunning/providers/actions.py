"""What the engine asks a payment provider to do: retry a charge, cancel, mark unpaid.

One protocol (`PaymentProvider`) over three adapters, picked by `provider_for` from an
allowlist (a provider name never imports code):

    stripe     dunning.providers.stripe_actions.StripeActions      (stripe.StripeClient)
    braintree  dunning.providers.braintree_actions.BraintreeActions (braintree.BraintreeGateway)
    fake       dunning.providers.fake_actions.FakeProvider          (scripted, in the engine's DB)

Results and errors:

- A card decline is a result, not an error: `ChargeResult("declined", code, class)`.
- `ProviderError.retryable` is True for what a later attempt can fix (network errors,
  timeouts, 5xx, 429) and False for what it cannot (bad credentials, unknown object,
  a request the provider refuses). The message names the provider and the call.
- Every call takes an `idempotency_key` (activities derive it from the campaign
  identity). Stripe and the fake provider honour it; Braintree's API has none, and its
  own rule (only a past-due subscription can be retried) guards against a double charge.
- Cancelling an already-cancelled subscription is a success.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from dunning.contracts import DeclineClass

if TYPE_CHECKING:
    from dunning.config import Settings
    from dunning.store.store import Store


@dataclass(frozen=True)
class ChargeResult:
    status: Literal["succeeded", "declined"]
    decline_code: str | None = None
    decline_class: DeclineClass | None = None
    reference: str | None = None  # provider transaction/invoice id


class PaymentProvider(Protocol):
    name: str

    def retry_charge(self, subscription_id: str, invoice_id: str | None, idempotency_key: str) -> ChargeResult:
        """Charge the outstanding amount now (Stripe: pay the open invoice)."""
        ...

    def cancel_subscription(self, subscription_id: str, idempotency_key: str) -> str:
        """Cancel; returns the provider's status after. Already cancelled is a success."""
        ...

    def mark_unpaid(self, subscription_id: str, invoice_id: str | None, idempotency_key: str) -> str:
        """Stop collecting but keep the debt (Stripe: invoice uncollectible); returns the status after."""
        ...


class ProviderError(Exception):
    """A provider call failed. `retryable`: may a later attempt succeed?"""

    def __init__(self, message: str, *, retryable: bool, provider: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.provider = provider
        self.status = status  # HTTP status, when there was one

    def __repr__(self) -> str:
        return f"ProviderError({self.message!r}, retryable={self.retryable})"


def retryable_status(status: int | None) -> bool:
    """No answer (network), 408, 409 (a concurrent request holds the lock), 429 and 5xx."""
    return status is None or status >= 500 or status in (408, 409, 429)


def _stripe(settings: Settings, store: Store) -> PaymentProvider:
    from dunning.providers.stripe_actions import StripeActions

    return StripeActions.from_settings(settings)


def _braintree(settings: Settings, store: Store) -> PaymentProvider:
    from dunning.providers.braintree_actions import BraintreeActions

    return BraintreeActions.from_settings(settings)


def _fake(settings: Settings, store: Store) -> PaymentProvider:
    from dunning.providers.fake_actions import FakeProvider

    return FakeProvider(store.engine)


PROVIDERS: dict[str, Callable[[Settings, Store], PaymentProvider]] = {
    "stripe": _stripe,
    "braintree": _braintree,
    "fake": _fake,
}


def provider_for(name: str, settings: Settings, store: Store) -> PaymentProvider:
    """The adapter for `name` (one of PROVIDERS). ValueError for an unknown name;
    ConfigError naming the environment variable when a needed setting is missing."""
    build = PROVIDERS.get(name) if isinstance(name, str) else None
    if build is None:
        raise ValueError(f"payment provider {name!r} is unknown (known: {', '.join(sorted(PROVIDERS))})")
    return build(settings, store)
