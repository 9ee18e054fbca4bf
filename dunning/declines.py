"""PURE: a provider's decline code -> what the campaign should do about it.

Classes (what they mean for dunning, not for the card network):

``hard``
    Retrying the same payment method will not succeed. The customer must act: a new
    card, corrected details, or a conversation with their bank. The engine stops
    payment retries and leans on the email cadence.
``soft``
    The same payment method may succeed later (funds arrive, a limit resets, the issuer
    comes back up) or the decline is on the merchant side and not the customer's to fix.
    Retries are worth it.
``action_required``
    The same payment method works once the customer does something with it
    (3-D Secure / SCA authentication, activating the card). The engine asks the
    customer to act; a silent retry cannot succeed.
``unknown``
    No code, a code not in the tables, or an unknown provider.

Lookup, in order (codes are compared case- and whitespace-insensitively):

1. The provider's table below (``STRIPE_DECLINES``, ``BRAINTREE_DECLINES``). The fake
   provider speaks Stripe's vocabulary and uses ``STRIPE_DECLINES``.
2. ``response_type`` when given: Braintree's ``processor_response_type``
   (``hard_declined`` -> hard, ``soft_declined`` -> soft; see ``RESPONSE_TYPES``). The
   table wins over it: the table is a deliberate dunning decision, the type is generic.
3. ``unknown``.

Decisions worth knowing (each row of the tables carries its reason as a comment):

- Stripe ``do_not_honor`` is soft: Stripe documents it as a generic issuer decline with
  no reason given, like ``generic_decline``; issuers often approve a later retry.
- ``incorrect_cvc``/``invalid_cvc``/``incorrect_zip`` are hard: an off-session charge
  cannot fix the details; the customer must re-enter them.
- ``card_not_activated`` is action_required: the same card works once the customer
  activates it.
- ``authentication_required`` (Stripe) and 2099 (Braintree) are action_required.
- Stripe's top-level error ``code`` is used when ``decline_code`` is absent, so the
  generic ``card_declined`` is in the table (soft), as are Stripe's advice codes
  (``do_not_try_again``, ``try_again_later``, ``confirm_card_data``) which the Stripe
  adapter consults when the decline code itself is not in the table.
- Braintree merchant-side errors (set-up, invalid merchant, PayPal account settings)
  are soft: asking the customer for a new card would not help.
"""

from __future__ import annotations

from typing import Final

from dunning.contracts import DeclineClass

HARD: Final = "hard"
SOFT: Final = "soft"
ACTION: Final = "action_required"
UNKNOWN: Final = "unknown"

# Stripe decline codes (charge.outcome.reason / last_payment_error.decline_code),
# the error codes used when no decline code is given, and advice codes.
STRIPE_DECLINES: Final[dict[str, DeclineClass]] = {
    # --- action_required: the same card works after the customer acts -----------------
    "authentication_required": ACTION,  # SCA / 3-D Secure needed
    "payment_intent_authentication_failure": ACTION,  # customer failed/abandoned 3DS
    "card_not_activated": ACTION,  # customer must activate the card
    "offline_pin_required": ACTION,  # card-present: PIN needed
    "online_or_offline_pin_required": ACTION,  # card-present: PIN needed
    # --- hard: the customer must bring a new card or fix details -----------------------
    "card_not_supported": HARD,  # card does not support this kind of purchase
    "currency_not_supported": HARD,  # card does not support the currency
    "do_not_try_again": HARD,  # issuer: never retry (also an advice code)
    "confirm_card_data": HARD,  # advice code: customer must re-enter card data
    "previously_declined_do_not_retry": HARD,  # retrying is prohibited
    "expired_card": HARD,
    "fraudulent": HARD,  # suspected fraud
    "incorrect_number": HARD,
    "invalid_number": HARD,
    "incorrect_cvc": HARD,  # needs new details
    "invalid_cvc": HARD,  # needs new details
    "incorrect_zip": HARD,  # needs new details
    "incorrect_pin": HARD,
    "invalid_pin": HARD,
    "pin_try_exceeded": HARD,
    "invalid_expiry_month": HARD,
    "invalid_expiry_year": HARD,
    "invalid_account": HARD,  # card or account invalid
    "invalid_amount": HARD,  # amount exceeds what the card allows
    "lost_card": HARD,
    "stolen_card": HARD,
    "pickup_card": HARD,  # card reported lost/stolen: issuer wants it back
    "restricted_card": HARD,
    "merchant_blacklist": HARD,  # Stripe blocked the card for this merchant
    "new_account_information_available": HARD,  # card replaced: customer must update
    "not_permitted": HARD,
    "service_not_allowed": HARD,
    "revocation_of_authorization": HARD,  # customer revoked the recurring mandate
    "revocation_of_all_authorizations": HARD,
    "security_violation": HARD,
    "stop_payment_order": HARD,
    "transaction_not_allowed": HARD,
    "testmode_decline": HARD,  # a Stripe test card used in live mode
    "highest_risk_level": HARD,  # charge.outcome.reason: blocked by Radar
    "account_closed": HARD,  # bank debit: account closed
    "no_account": HARD,  # bank debit: no such account
    "debit_not_authorized": HARD,  # bank debit: customer disputed the mandate
    # --- soft: the same card may work later -------------------------------------------
    "approve_with_id": SOFT,  # authorization could not be completed; retry
    "call_issuer": SOFT,  # unknown reason; customer should call, a retry may pass
    "card_declined": SOFT,  # error code with no decline code: generic
    "card_velocity_exceeded": SOFT,  # balance or credit limit reached
    "do_not_honor": SOFT,  # generic issuer decline (Stripe treats it as generic)
    "duplicate_transaction": SOFT,  # identical charge just submitted
    "generic_decline": SOFT,
    "insufficient_funds": SOFT,
    "issuer_not_available": SOFT,
    "no_action_taken": SOFT,
    "processing_error": SOFT,
    "reenter_transaction": SOFT,
    "try_again_later": SOFT,  # also an advice code
    "withdrawal_count_limit_exceeded": SOFT,
    "card_decline_rate_limit_exceeded": SOFT,  # too many declines on this card, for now
}

# Braintree processor response codes (transaction.processor_response_code).
BRAINTREE_DECLINES: Final[dict[str, DeclineClass]] = {
    "2000": SOFT,  # Do Not Honor
    "2001": SOFT,  # Insufficient Funds
    "2002": SOFT,  # Limit Exceeded
    "2003": SOFT,  # Cardholder's Activity Limit Exceeded
    "2004": HARD,  # Expired Card
    "2005": HARD,  # Invalid Credit Card Number
    "2006": HARD,  # Invalid Expiration Date
    "2007": HARD,  # No Account
    "2008": HARD,  # Card Account Length Error
    "2009": HARD,  # No Such Issuer
    "2010": HARD,  # Card Issuer Declined CVV
    "2011": SOFT,  # Voice Authorization Required
    "2012": HARD,  # Processor Declined - Possible Lost Card
    "2013": HARD,  # Processor Declined - Possible Stolen Card
    "2014": HARD,  # Processor Declined - Fraud Suspected
    "2015": HARD,  # Transaction Not Allowed
    "2016": SOFT,  # Duplicate Transaction
    "2017": HARD,  # Cardholder Stopped Billing
    "2018": HARD,  # Cardholder Stopped All Billing
    "2019": HARD,  # Invalid Transaction
    "2020": HARD,  # Violation
    "2021": HARD,  # Security Violation
    "2022": HARD,  # Declined - Updated Cardholder Available
    "2023": SOFT,  # Processor Does Not Support This Feature (merchant side)
    "2024": HARD,  # Card Type Not Enabled: this card brand is not accepted
    "2025": SOFT,  # Set Up Error - Merchant
    "2026": SOFT,  # Invalid Merchant ID
    "2027": SOFT,  # Set Up Error - Amount
    "2028": SOFT,  # Set Up Error - Hierarchy
    "2029": SOFT,  # Set Up Error - Card
    "2030": SOFT,  # Set Up Error - Terminal
    "2031": SOFT,  # Encryption Error
    "2033": SOFT,  # Inconsistent Data
    "2034": SOFT,  # No Action Taken
    "2038": SOFT,  # Processor Declined
    "2041": SOFT,  # Declined - Call For Approval
    "2043": HARD,  # Error - Do Not Retry, Call Issuer
    "2044": SOFT,  # Declined - Call Issuer
    "2046": SOFT,  # Declined
    "2047": HARD,  # Call Issuer. Pick Up Card
    "2051": HARD,  # Credit Card Number does not match method of payment
    "2053": HARD,  # Card reported as lost or stolen
    "2057": HARD,  # Issuer or Cardholder has put a restriction on the card
    "2059": HARD,  # Address Verification Failed
    "2060": HARD,  # Address Verification and Card Security Code Failed
    "2070": HARD,  # PayPal Buyer Revoked Pre-Approved Payment Authorization
    "2074": HARD,  # PayPal funding instrument declined
    "2075": HARD,  # Payer Account Is Locked Or Closed
    "2076": HARD,  # Payer Cannot Pay For This Transaction With PayPal
    "2099": ACTION,  # Cardholder Authentication Required
    "3000": SOFT,  # Processor Network Unavailable - Try Again
}

# Braintree transaction.processor_response_type, used when the code is not in the table.
RESPONSE_TYPES: Final[dict[str, DeclineClass]] = {
    "hard_declined": HARD,
    "soft_declined": SOFT,
}

TABLES: Final[dict[str, dict[str, DeclineClass]]] = {
    "stripe": STRIPE_DECLINES,
    "fake": STRIPE_DECLINES,
    "braintree": BRAINTREE_DECLINES,
}


def _norm(value: str | None) -> str:
    return value.strip().lower() if isinstance(value, str) else ""


def classify(provider: str, code: str | None, response_type: str | None = None) -> DeclineClass:
    """Classify a provider decline code as hard, soft, action_required or unknown."""
    table = TABLES.get(_norm(provider))
    if table is None:
        return UNKNOWN
    found = table.get(_norm(code))
    if found is not None:
        return found
    return RESPONSE_TYPES.get(_norm(response_type), UNKNOWN)
