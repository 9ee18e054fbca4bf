"""What customer emails say about the sender and how the customer acts on them.

    [email]
    company_name = "Acme"                     # in subjects, greetings and the signature
    support_email = "support@acme.example"    # where to write (optional)
    update_payment_url = "https://acme.example/billing/update?token={token}"
    link_secret = "..."                       # signs {token} (dunning.links); required with the URL
    link_ttl_days = 30                        # how long a link stays valid
    plans = { price_123 = "Pro (monthly)" }   # plan ids the provider sends -> names customers know

Without `update_payment_url` the emails ask the customer to sign in to their account. A
plan without a name here is not shown: customers never see internal ids.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, model_validator

Name = Annotated[str, Field(min_length=1, max_length=100)]


class EmailSettings(BaseModel):
    model_config = {"extra": "forbid"}

    company_name: Name = "Example"
    support_email: str | None = Field(default=None, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    update_payment_url: str | None = Field(default=None, max_length=500)
    link_secret: str | None = Field(default=None, min_length=16)
    link_ttl_days: float = Field(default=30, gt=0, le=365)
    plans: dict[str, Name] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _link(self) -> EmailSettings:
        url = self.update_payment_url
        if url is None:
            return self
        if not url.startswith(("https://", "http://")) or "{token}" not in url:
            raise ValueError("email.update_payment_url: must be an http(s) URL containing {token}")
        if not self.link_secret:
            raise ValueError("email.link_secret (DUNNING_EMAIL__LINK_SECRET): required with update_payment_url")
        return self
