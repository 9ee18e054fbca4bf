"""The HTTP API's request and response models, for its OpenAPI schema (`/openapi.json`,
`/docs`). The routes answer exactly these shapes; every error is `ErrorBody`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from dunning import reasons
from dunning.contracts import CampaignState, RecoverResult
from starter.recompute import Report


class ErrorBody(BaseModel):
    error: str = Field(description="machine reason, e.g. unknown_subscription")
    message: str = Field(description="what was wrong, in words")


class ReasonBody(BaseModel):
    """Optional body of the payment-service routes."""

    reason: str = Field(default=reasons.DEFAULT, description=f"one of: {', '.join(reasons.REASONS)}")


class PaidAnswer(BaseModel):
    status: str
    how: str | None = None
    reason: str | None = None
    seconds_in_bad_debt: int | None = None
    days_in_bad_debt: float | None = None
    amount: int | None = None
    reference: str | None = None
    entitlement: str | None = None
    exited_at: str | None = None
    duplicate: bool = False


class RepeatedRecompute(BaseModel):
    subscription_id: str
    status: str = "duplicate"
    result: str = Field(description="the first request's summary")
    duplicate: bool = True


class AttentionAnswer(BaseModel):
    customer_id: str
    requires_attention: bool
    entitlement: str
    message: str | None
    subscriptions: list[str]


class WebhookAnswer(BaseModel):
    status: str
    action: str | None = None
    result: str | None = None


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


def answers(model: Any, *codes: int) -> dict[int | str, dict[str, Any]]:
    """A route's answers for the schema: `model` (a pydantic model, dataclass or union) on 200, errors on `codes`."""
    return {200: {"model": model}, **errors(*codes)}


REASON_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": ReasonBody.model_json_schema()}},
    }
}

__all__ = ["CampaignState", "RecoverResult", "Report"]
