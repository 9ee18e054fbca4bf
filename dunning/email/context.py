"""What a campaign email's templates are given: what the customer needs to act, and no
internal id.

    customer_name, company_name, support_email     from the store and `[email]`
    amount_due      formatted for its currency (dunning.money), from the campaign's
                    `dunning.campaign_started` ledger row; None when unknown
    plan_name       `[email] plans[plan_id]`; None when the plan has no name there
    update_payment_url   `[email] update_payment_url` with {token} a signed, expiring
                    link token bound to the subscription (dunning.links); None unset
    campaign_started_at, grace_ends_at (the real deadline), first_notice_at, step_key
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from dunning import links
from dunning.contracts import StepRequest
from dunning.money import format_amount

if TYPE_CHECKING:
    from dunning.config import Settings
    from dunning.store.store import Customer, Store


def payment_link(settings: Settings, subscription_id: str, now: datetime) -> str | None:
    e = settings.email
    if not e.update_payment_url or not e.link_secret:
        return None
    token = links.sign(subscription_id, now + timedelta(days=e.link_ttl_days), e.link_secret)
    return e.update_payment_url.replace("{token}", token)


def email_context(settings: Settings, store: Store, req: StepRequest, customer: Customer) -> dict[str, Any]:
    begun = store.ledger_data(req.subscription_id, req.campaign_started_at, "dunning.campaign_started")
    plan = begun.get("plan_id")
    return {
        "customer_name": customer.name,
        "company_name": settings.email.company_name,
        "support_email": settings.email.support_email,
        "amount_due": format_amount(begun.get("amount_due"), begun.get("currency")),
        "plan_name": settings.email.plans.get(plan) if isinstance(plan, str) else None,
        "update_payment_url": payment_link(settings, req.subscription_id, datetime.now(UTC)),
        "step_key": req.step_key,
        "campaign_started_at": req.campaign_started_at,
        "grace_ends_at": req.grace_ends_at,
        "first_notice_at": req.first_notice_at,
    }
