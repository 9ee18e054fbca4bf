"""What recompute reads from a payment provider: its word on one subscription, as a
`dunning.reconcile.ProviderView` (status, the latest invoice's state and amount, when its
payment failed, whether a payment is processing).

    stripe     dunning.providers.stripe_reads.StripeReads        (GET the subscription,
                                                                  its latest invoice)
    braintree  dunning.providers.braintree_reads.BraintreeReads  (subscription.find)
    fake       FakeReads: the fake provider's account table      (dunning.providers.fake_account)

`reader_for(name, settings, store)` picks one from an allowlist. A read that fails raises
`ProviderError` (retryable for network errors, 429 and 5xx); a subscription the provider
does not know is a `ProviderError` that is not retryable. Reads never change anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from dunning.providers import fake_account
from dunning.providers.actions import ProviderError
from dunning.reconcile import ProviderView

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from dunning.config import Settings
    from dunning.store.store import Store


class ProviderReader(Protocol):
    name: str

    def read_subscription(self, subscription_id: str) -> ProviderView:
        """The provider's word on the subscription now. ProviderError when it cannot say."""
        ...


class FakeReads:
    name = "fake"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def read_subscription(self, subscription_id: str) -> ProviderView:
        account = fake_account.get(self.engine, subscription_id)
        if account is None:
            raise ProviderError(
                f"fake: subscription {subscription_id!r} is unknown to the fake provider", retryable=False,
                provider="fake", status=404,
            )  # fmt: skip
        return ProviderView(
            status=account.status, invoice_id=account.invoice_id,
            invoice_state=account.invoice_state,  # type: ignore[arg-type]  # checked by the table
            amount_due=account.amount_due, failed_at=account.failed_at, payment_processing=account.processing,
            payment_started_at=account.payment_started_at,
        )  # fmt: skip


def _stripe(settings: Settings, store: Store) -> ProviderReader:
    from dunning.providers.stripe_reads import StripeReads

    return StripeReads.from_settings(settings)


def _braintree(settings: Settings, store: Store) -> ProviderReader:
    from dunning.providers.braintree_reads import BraintreeReads

    return BraintreeReads.from_settings(settings)


def _fake(settings: Settings, store: Store) -> ProviderReader:
    return FakeReads(store.engine)


READERS: dict[str, Callable[[Settings, Store], ProviderReader]] = {
    "stripe": _stripe,
    "braintree": _braintree,
    "fake": _fake,
}


def reader_for(name: str, settings: Settings, store: Store) -> ProviderReader:
    """The reader for `name`. ValueError for an unknown name; ConfigError naming the
    setting when one it needs is missing (as `actions.provider_for`)."""
    build = READERS.get(name) if isinstance(name, str) else None
    if build is None:
        raise ValueError(f"payment provider {name!r} is unknown (known: {', '.join(sorted(READERS))})")
    return build(settings, store)
