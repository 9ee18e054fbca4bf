"""The fake provider behind `PaymentProvider`: outcomes scripted in the engine's database.

    retry_charge         the scripted card (`dunning simulate set-card`): 'succeed' ->
                         succeeded, 'decline:<code>' -> declined with that code. No card:
                         the last decline again (fake_state.read_last_decline), else
                         `generic_decline`. Codes are Stripe's, classified as such.
    cancel_subscription  'canceled' (again 'canceled' when already cancelled)
    mark_unpaid          'unpaid'

The fake provider's account (dunning.providers.fake_account) follows, in the same
transaction, as a real provider's would: a successful charge pays the open invoice,
cancel cancels, mark_unpaid marks the invoice uncollectible.

Every call is recorded in `fake_provider_calls`; a repeated idempotency key returns the
first call's result and records nothing new. `reference` is ``fake_<action>_<call id>``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine

from dunning.declines import classify
from dunning.providers import fake_account, fake_state
from dunning.providers.actions import ChargeResult

PROVIDER = "fake"


def charge_result(call: fake_state.FakeCall) -> ChargeResult:
    reference = f"fake_{call.action}_{call.id}"
    if call.result.startswith("declined:"):
        code = call.result.removeprefix("declined:")
        return ChargeResult("declined", code, classify(PROVIDER, code), reference=reference)
    return ChargeResult("succeeded", reference=reference)


class FakeProvider:
    name = PROVIDER

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self.clock = clock or (lambda: datetime.now(UTC))

    def _decide_charge(self, subscription_id: str) -> Callable[[Connection], str]:
        def decide(conn: Connection) -> str:
            card = fake_state.read_card(conn, subscription_id)
            if card == fake_state.SUCCEED:
                fake_account.paid(conn, subscription_id, self.clock())  # the provider's own word changes too
                return "succeeded"
            if card is not None:
                return "declined:" + card.removeprefix("decline:")
            last = fake_state.read_last_decline(conn, subscription_id)
            return "declined:" + (last or fake_state.DEFAULT_DECLINE)

        return decide

    def retry_charge(self, subscription_id: str, invoice_id: str | None, idempotency_key: str) -> ChargeResult:
        call = fake_state.call_once(
            self.engine, subscription_id, "charge", idempotency_key, self._decide_charge(subscription_id),
            now=self.clock(),
        )  # fmt: skip
        return charge_result(call)

    def cancel_subscription(self, subscription_id: str, idempotency_key: str) -> str:
        call = fake_state.call_once(
            self.engine, subscription_id, "cancel", idempotency_key,
            self._account(subscription_id, "canceled", status="canceled"), now=self.clock(),
        )  # fmt: skip
        return call.result

    def mark_unpaid(self, subscription_id: str, invoice_id: str | None, idempotency_key: str) -> str:
        call = fake_state.call_once(
            self.engine, subscription_id, "mark_unpaid", idempotency_key,
            self._account(subscription_id, "unpaid", status="unpaid", invoice_state="uncollectible"), now=self.clock(),
        )  # fmt: skip
        return call.result

    def _account(self, subscription_id: str, result: str, **changes: str) -> Callable[[Connection], str]:
        """Record `result`, changing the fake account (when the fake provider knows it)."""

        def decide(conn: Connection) -> str:
            if fake_account.read(conn, subscription_id) is not None:
                fake_account.write(conn, subscription_id, self.clock(), **changes)
            return result

        return decide
