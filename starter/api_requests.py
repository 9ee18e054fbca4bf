"""What a request to the API's /v1 routes must carry, and the one error body.

    bearer token      DUNNING_API_TOKEN (unset: the routes answer 404 naming it)
    ids in paths      1 to 255 characters, no NUL, no lone surrogate (dunning.text)
    reason            {"reason": CODE} from dunning.reasons, or an empty body (the default)

Every refusal is `{"error": <machine reason>, "message": <what was wrong, in words>}` and
never repeats a refused value (it may be a person's address).
"""

from __future__ import annotations

import hmac
import json

from fastapi import Request
from fastapi.responses import JSONResponse

from dunning import reasons, text
from dunning.config import Settings
from dunning.store import availability
from dunning.store.store import Store

TOKEN_ENV = "DUNNING_API_TOKEN"
MAX_JSON_BODY = 64 * 1024
MAX_ID = text.MAX_ID
RETRY_AFTER = "30"


def error(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason, "message": message}, status_code=status, headers=headers)


def authorize(request: Request, settings: Settings) -> JSONResponse | None:
    if not settings.api_token:
        return error(404, "api_disabled", f"the subscriptions API is disabled: set {TOKEN_ENV} to enable it")
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return error(
            401, "unauthorized", "missing bearer token: send Authorization: Bearer <token>",
            {"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    if not hmac.compare_digest(token.strip().encode("utf-8"), settings.api_token.encode("utf-8")):
        return error(403, "forbidden", "the bearer token is not valid")
    return None


def database_down(store: Store, err: Exception) -> JSONResponse:
    message = f"{availability.describe(store, err)}; retry later"
    return error(503, "database_unavailable", message, {"Retry-After": RETRY_AFTER})


def check_id(value: str, name: str = "subscription id") -> JSONResponse | None:
    if not value:
        return error(400, "bad_request", f"{name} must be 1 to {MAX_ID} characters")
    bad = text.problem(value, MAX_ID)
    if bad:
        return error(400, "bad_request", f"{name} {bad}")
    return None


async def reason_code(request: Request) -> str | JSONResponse:
    """The optional JSON body {"reason": CODE} of payment-recovered (dunning.reasons)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            return error(413, "body_too_large", f"request body is over {MAX_JSON_BODY} bytes")
    if not body.strip():
        return reasons.DEFAULT
    try:
        data = json.loads(body)
    except ValueError as err:
        return error(400, "malformed_body", f"body is not JSON: {err}")
    if not isinstance(data, dict) or set(data) - {"reason"}:
        return error(400, "malformed_body", 'body must be a JSON object {"reason": "<code>"} (or empty)')
    reason = data.get("reason")
    if reason is not None and not isinstance(reason, str):
        return error(400, "malformed_body", f"reason must be a string, one of {', '.join(reasons.REASONS)}")
    try:
        return reasons.check(reason)
    except ValueError as err:  # the message lists the codes and never repeats the text
        return error(400, "unknown_reason", str(err))


async def payment_service(
    request: Request, settings: Settings, subscription_id: str, *, key_required: bool
) -> JSONResponse | tuple[str, str | None]:
    """The checks every payment-service route makes, in order: bearer token, the path's
    subscription id, the body's reason code, the Idempotency-Key header. Returns the
    refusal, or (reason, key)."""
    refused = authorize(request, settings) or check_id(subscription_id)
    if refused is not None:
        return refused
    reason = await reason_code(request)
    if isinstance(reason, JSONResponse):
        return reason
    key = request.headers.get("idempotency-key")
    if key is None:
        if key_required:
            return error(400, "missing_idempotency_key", f"{request.url.path} needs an Idempotency-Key header")
        return reason, None
    bad = text.key_problem(key)
    return error(400, "bad_request", bad) if bad else (reason, key)
