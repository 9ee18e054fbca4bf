"""PURE: the staged-rollout gate. Which mode a subscription's campaign runs in.

    [rollout]
    mode = "live"            # "off" | "shadow" | "live" for subscriptions in the slice
    percent = 100            # the slice: a stable hash of the subscription id
    allow = ["sub_1", "cus_9"]   # subscription or customer ids always in the slice

A subscription is in the slice when its id or its customer's id is allowed, or when its
bucket (the first 8 bytes of SHA-256 of the subscription id, modulo 10 000) is below
`percent` × 100. The bucket depends on the id only, so a subscription stays in as the
percentage grows (individual → 5 → 10 → 25 → 50 → 100) and never flips back and forth.
In the slice the campaign runs in `mode`; outside it, `off` (no campaign: the system the
engine replaces keeps those subscriptions).

    live    the campaign emails, charges, restricts and cancels
    shadow  the campaign runs its whole timeline and records each action it would have
            taken (`dunning.shadow_action`) without doing any of it; `dunning rollout
            report` compares those decisions with what the provider later saw

The dispatcher reads the gate to decide whether to start a campaign at all; the campaign
reads it once, in its first activity, to fix live or shadow into its history.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, Field

Mode = Literal["off", "shadow", "live"]
BUCKETS = 10_000


class RolloutSettings(BaseModel):
    model_config = {"extra": "forbid"}

    mode: Mode = "live"
    percent: float = Field(default=100, ge=0, le=100)
    allow: list[str] = Field(default_factory=list, max_length=10_000)


def bucket(subscription_id: str) -> int:
    """The subscription's stable place in [0, 10 000)."""
    digest = hashlib.sha256(subscription_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def in_slice(gate: RolloutSettings, subscription_id: str, customer_id: str | None = None) -> bool:
    if subscription_id in gate.allow or (customer_id is not None and customer_id in gate.allow):
        return True
    return bucket(subscription_id) < gate.percent * BUCKETS / 100


def mode_for(gate: RolloutSettings, subscription_id: str, customer_id: str | None = None) -> Mode:
    """The mode this subscription's campaign runs in."""
    return gate.mode if in_slice(gate, subscription_id, customer_id) else "off"


def campaign_mode(gate: RolloutSettings, subscription_id: str, customer_id: str | None = None) -> Literal["live", "shadow"]:
    """The mode a campaign that has begun runs in. Out of the slice by now (the gate was
    narrowed after the campaign was started): shadow, never live."""
    return "live" if mode_for(gate, subscription_id, customer_id) == "live" else "shadow"
