"""The HTTP API: provider webhooks in, payment-service calls, health and counters.

    POST /webhooks/stripe        Stripe-Signature header          (DUNNING_STRIPE_WEBHOOK_SECRET)
    POST /webhooks/braintree     bt_signature, bt_payload form    (DUNNING_BRAINTREE_*)
    POST /webhooks/fake          X-Dunning-Signature header       (DUNNING_FAKE_WEBHOOK_SECRET)
    POST /v1/subscriptions/{id}/payment-recovered   Bearer DUNNING_API_TOKEN; {"reason": CODE}
                                                    (dunning.reasons); Idempotency-Key header
                                                    (a repeat answers the same)
    POST /v1/subscriptions/{id}/pay-bad-debt        Bearer DUNNING_API_TOKEN; Idempotency-Key header
                                                    (required); {"reason": CODE} (starter.bad_debt)
    POST /v1/subscriptions/{id}/recompute           Bearer DUNNING_API_TOKEN; ?dry_run=true changes
                                                    nothing; Idempotency-Key header (optional: a
                                                    repeat answers the first result); the report:
                                                    each store's word, desired state, actions
    GET  /v1/subscriptions/{id}/campaign            Bearer DUNNING_API_TOKEN
    GET  /healthz   the process is up
    GET  /readyz    database and Temporal reachable (503 naming which is not)
    GET  /metrics   Prometheus text (`dunning_*`, starter.api_metrics.StoreCollector);
                    JSON instead (the body of /metrics.json) with ?format=json or when the
                    Accept header prefers application/json
    GET  /metrics.json  webhook counts by provider, outcome and reason; inbox rows pending
                    and parked; unconfirmed deliveries, email resends, failed and skipped
                    actions; outbox pending and delivered; bad debt entered and exited and
                    its breakdown; stuck work; drift by field and source

Temporal is reached lazily through `client_factory` (see starter.temporal_gate), so the
API starts and answers while Temporal is down. A background sweep re-dispatches inbox
rows left undispatched (see starter.dispatch). Every error body is
`{"error": <machine reason>, "message": <what was wrong, in words>}`; the database
unreachable is 503 `database_unavailable` on every route (naming its kind, never its URL).
Ids in paths are refused (400) when they hold NUL, a lone surrogate, or over 255 characters.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

from dunning import text
from dunning.config import Settings
from dunning.store import availability, inbox_parking, outbox, recompute_writes
from dunning.store.entitlements import Entitlement, entitlement_of, requires_attention
from dunning.store.store import Store
from starter import recompute, telemetry
from starter.api_docs import add_docs
from starter.api_metrics import (
    PROMETHEUS_CONTENT_TYPE,
    WebhookCounter,
    prometheus_registry,
    prometheus_text,
    store_gauges,
    wants_json,
)
from starter.api_models import (
    REASON_BODY,
    AttentionAnswer,
    CampaignState,
    PaidAnswer,
    RecoverResult,
    RepeatedRecompute,
    Report,
    WebhookAnswer,
    answers,
)
from starter.api_requests import authorize, check_id, database_down, error, payment_service
from starter.bad_debt import pay_bad_debt
from starter.client import DunningClient, EventParked, UnknownSubscription
from starter.dispatch import DEFAULT_TIMEOUT, redispatch_pending
from starter.temporal_gate import TemporalGate, TemporalUnavailable, describe_unavailable, is_unavailable
from starter.webhooks import Reply, receive, wall_clock

log = logging.getLogger("dunning.api")
# documents the bearer token in the OpenAPI schema; the check itself is `authorize` (its
# refusal is the API's own error body)
AUTH = [Security(HTTPBearer(auto_error=False, description="DUNNING_API_TOKEN"))]

CHECK_TIMEOUT = 3.0

__all__ = ["create_app", "redispatch_pending"]


def create_app(
    settings: Settings,
    store: Store,
    client_factory: Callable[[], Awaitable[DunningClient]],
    *,
    sweep_interval: float = 30.0,
    sweep_min_age: float = 5.0,
    dispatch_timeout: float = DEFAULT_TIMEOUT,
    clock: Callable[[], Awaitable[datetime]] = wall_clock,
) -> FastAPI:
    """The API app. `sweep_interval` <= 0 turns the background re-dispatch off. `clock`
    is what a webhook's event time is bounded against (tests: the time-skipping server's)."""
    gate = TemporalGate(client_factory)
    counter = WebhookCounter()

    async def sweep_forever() -> None:
        while True:
            await asyncio.sleep(sweep_interval)
            try:
                client = await gate.get()
                done = await redispatch_pending(store, client, min_age=sweep_min_age, timeout=dispatch_timeout)
                if done:
                    log.info("sweep re-dispatched %d pending webhook event(s)", done)
            except TemporalUnavailable as err:
                log.warning("sweep skipped: %s", err)
            except Exception as err:
                if availability.is_unavailable(err):
                    log.warning("sweep skipped: %s", availability.describe(store, err))
                else:
                    log.exception("sweep failed; it runs again in %ss", sweep_interval)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(sweep_forever(), name="dunning-webhook-sweep") if sweep_interval > 0 else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(title="dunning", version="1", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    add_docs(app, settings)
    app.state.settings = settings
    app.state.store = store
    app.state.temporal = gate
    app.state.webhook_counter = counter
    app.state.metrics_registry = registry = prometheus_registry(store, settings, counter)
    telemetry.setup_tracing()
    telemetry.instrument_app(app)

    async def database_unavailable(_request: Request, err: Exception) -> JSONResponse:
        log.warning("%s", availability.describe(store, err))
        return database_down(store, err)

    for unavailable in availability.UNAVAILABLE:
        app.add_exception_handler(unavailable, database_unavailable)

    async def bad_parameter(_request: Request, err: Exception) -> JSONResponse:
        # FastAPI's own checks (e.g. ?dry_run=maybe) answer in the API's error shape, naming the field
        problems = err.errors() if isinstance(err, RequestValidationError) else []
        named = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}" for e in problems)
        return error(400, "bad_request", named or "bad request")

    app.add_exception_handler(RequestValidationError, bad_parameter)

    # --- webhooks --------------------------------------------------------------------
    async def webhook(provider: str, request: Request) -> JSONResponse:
        started = time.perf_counter()
        try:
            reply = await receive(provider, request, settings, store, gate, timeout=dispatch_timeout, clock=clock)
        except Exception as err:
            if availability.is_unavailable(err):  # down or locked: nothing lost, the provider redelivers
                log.warning("%s webhook not recorded: %s", provider, availability.describe(store, err))
                counter.add(provider, "unavailable", "database_unavailable", time.perf_counter() - started)
                return database_down(store, err)
            log.error("%s webhook failed (%s); the provider will redeliver", provider, type(err).__name__)
            counter.add(provider, "error", "internal", time.perf_counter() - started)
            return error(500, "internal", "the event could not be processed; it will be retried")
        counter.add(provider, reply.outcome, reply.reason, time.perf_counter() - started)
        return _json(reply)

    @app.post("/webhooks/stripe", responses=answers(WebhookAnswer, 400, 413, 503), summary="Stripe webhook (Stripe-Signature)")
    async def stripe_webhook(request: Request) -> JSONResponse:
        return await webhook("stripe", request)

    @app.post("/webhooks/braintree", responses=answers(WebhookAnswer, 400, 413, 503), summary="Braintree webhook (bt_signature, bt_payload)")
    async def braintree_webhook(request: Request) -> JSONResponse:
        return await webhook("braintree", request)

    @app.post("/webhooks/fake", responses=answers(WebhookAnswer, 400, 413, 503), summary="Fake provider webhook (X-Dunning-Signature)")
    async def fake_webhook(request: Request) -> JSONResponse:
        return await webhook("fake", request)

    # --- payment service -------------------------------------------------------------
    @app.post("/v1/subscriptions/{subscription_id}/payment-recovered", dependencies=AUTH, openapi_extra=REASON_BODY,
              responses=answers(RecoverResult, 400, 401, 404, 409, 503), summary="The payment service: a payment came in")
    async def payment_recovered(subscription_id: str, request: Request) -> JSONResponse:
        checked = await payment_service(request, settings, subscription_id, key_required=False)
        if isinstance(checked, JSONResponse):
            return checked
        reason, key = checked

        async def call(client: DunningClient) -> JSONResponse:
            try:
                answer = await client.payment_recovered(subscription_id, reason, key)
            except EventParked as err:
                return error(409, "event_parked", str(err))
            return JSONResponse(answer.model_dump(mode="json"))

        return await _with_temporal(gate, subscription_id, call, dispatch_timeout)

    @app.post("/v1/subscriptions/{subscription_id}/pay-bad-debt", dependencies=AUTH, openapi_extra=REASON_BODY,
              responses=answers(PaidAnswer, 400, 401, 402, 404, 409, 502, 503), summary="Pay a bad debt (Idempotency-Key required)")
    async def pay_bad_debt_route(subscription_id: str, request: Request) -> JSONResponse:
        checked = await payment_service(request, settings, subscription_id, key_required=True)
        if isinstance(checked, JSONResponse):
            return checked
        reason, key = checked
        assert key is not None  # required above
        answer = await asyncio.to_thread(pay_bad_debt, settings, store, subscription_id, key, reason)
        return JSONResponse(answer.body, status_code=answer.status)

    @app.post("/v1/subscriptions/{subscription_id}/recompute", dependencies=AUTH,
              responses=answers(Report | RepeatedRecompute, 400, 401, 404, 409, 503),
              summary="Recompute a subscription from every store (dry_run=true changes nothing)")
    async def recompute_route(subscription_id: str, request: Request, dry_run: bool = False) -> JSONResponse:
        refused = authorize(request, settings) or check_id(subscription_id)
        if refused is not None:
            return refused
        key = request.headers.get("idempotency-key")
        bad = text.key_problem(key) if key is not None else None
        if bad:
            return error(400, "bad_request", bad)

        async def call(client: DunningClient) -> JSONResponse:
            try:
                if dry_run:
                    report = await recompute.dry_run(store, client, subscription_id)
                    return JSONResponse(report.model_dump(mode="json"))
                status, found, first = await recompute.request(store, client, subscription_id, key or uuid.uuid4().hex)
            except recompute.UnknownSubscription as err:
                return error(404, "unknown_subscription", str(err))
            except recompute_writes.Changed as err:
                return error(409, "changed_concurrently", str(err))
            if found is None:  # a repeated key (or a parked row): the first result, nothing done again
                body = {"subscription_id": subscription_id, "status": status, "result": first, "duplicate": True}
                return JSONResponse(body)
            return JSONResponse(found.model_dump(mode="json"))

        return await _with_temporal(gate, subscription_id, call, dispatch_timeout)

    @app.get("/v1/subscriptions/{subscription_id}/campaign", dependencies=AUTH,
             responses=answers(CampaignState, 400, 401, 404, 409, 503), summary="The latest campaign, running or ended")
    async def campaign(subscription_id: str, request: Request) -> JSONResponse:
        refused = authorize(request, settings) or check_id(subscription_id)
        if refused is not None:
            return refused

        async def call(client: DunningClient) -> JSONResponse:
            try:
                state = await client.status(subscription_id)
            except RuntimeError as err:  # ended failed / terminated / timed out
                if is_unavailable(err):
                    raise
                return error(409, "campaign_failed", str(err))
            return JSONResponse(state.model_dump(mode="json"))

        return await _with_temporal(gate, subscription_id, call, dispatch_timeout)

    # --- host app: reads the store only (no Temporal call, no side effect) -------------
    @app.get("/v1/customers/{customer_id}/attention", dependencies=AUTH, responses=answers(AttentionAnswer, 400, 401, 404),
             summary="Does the customer need attention (store only)")
    async def attention(customer_id: str, request: Request) -> JSONResponse:
        refused = authorize(request, settings) or check_id(customer_id, "customer id")
        if refused is not None:
            return refused
        found = await asyncio.to_thread(requires_attention, store, customer_id, settings.attention_message)
        if found is None:
            return error(404, "unknown_customer", f"customer {customer_id!r} has no subscription known to the engine")
        return JSONResponse(
            {
                "customer_id": customer_id,
                "requires_attention": found.requires_attention,
                "entitlement": found.entitlement,
                "message": found.message,
                "subscriptions": list(found.subscriptions),
            }
        )

    @app.get("/v1/subscriptions/{subscription_id}/entitlement", dependencies=AUTH,
             responses=answers(Entitlement, 400, 401, 404), summary="What the subscription is entitled to (store only)")
    async def entitlement(subscription_id: str, request: Request) -> JSONResponse:
        refused = authorize(request, settings) or check_id(subscription_id)
        if refused is not None:
            return refused
        sub = await asyncio.to_thread(entitlement_of, store, subscription_id, settings.attention_message)
        if sub is None:
            return error(404, "unknown_subscription", f"subscription {subscription_id!r} is not known to the engine")
        return JSONResponse(dataclasses.asdict(sub))

    # --- operations ------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        checks = {"database": await _database_check(store), "temporal": await _temporal_check(gate)}
        down = [name for name, result in checks.items() if result != "ok"]
        if down:
            body = {
                "status": "not_ready",
                "error": "not_ready",
                "message": " and ".join(down) + (" is" if len(down) == 1 else " are") + " unreachable",
                **checks,
            }
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ready", **checks})

    @app.get("/metrics")
    async def metrics(request: Request, format: str | None = None) -> Response:
        if format == "json" or wants_json(request.headers.get("accept")):
            return JSONResponse(await metrics_json())
        body = await asyncio.to_thread(prometheus_text, registry)  # reads the store
        return Response(body, media_type=PROMETHEUS_CONTENT_TYPE)

    @app.get("/metrics.json")
    async def metrics_json() -> dict[str, Any]:
        deliveries = await asyncio.to_thread(store.delivery_counts)
        actions = await asyncio.to_thread(store.ledger_counts, "dunning.action_failed", "dunning.action_skipped")
        inbox = await asyncio.to_thread(inbox_parking.counts, store)
        outbound = await asyncio.to_thread(outbox.outbox_counts, store)
        bad_debt = await asyncio.to_thread(store.ledger_counts, "bad_debt.entered", "bad_debt.exited")
        gauges = await asyncio.to_thread(store_gauges, store, settings, datetime.now(UTC))
        return {
            "dunning.webhooks": counter.snapshot(),
            "dunning.inbox.pending": inbox["pending"],
            "dunning.inbox.parked": inbox["parked"],
            "dunning.deliveries.unconfirmed": deliveries["unconfirmed"],
            # extra SMTP copies of a step after an unknown result (always one Message-ID)
            "dunning.email.resends": deliveries["resends"],
            "dunning.actions.failed": actions["dunning.action_failed"],
            "dunning.actions.skipped": actions["dunning.action_skipped"],
            "dunning.outbox.pending": outbound["pending"],
            "dunning.outbox.delivered": outbound["delivered"],
            "dunning.bad_debt.entered": bad_debt["bad_debt.entered"],
            "dunning.bad_debt.exited": bad_debt["bad_debt.exited"],
            **gauges,  # stuck work, drift by field and source, the bad-debt breakdown
        }

    return app


def _json(reply: Reply) -> JSONResponse:
    return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers or None)


async def _with_temporal(
    gate: TemporalGate,
    subscription_id: str,
    call: Callable[[DunningClient], Awaitable[JSONResponse]],
    timeout: float,
) -> JSONResponse:
    try:
        client = await gate.get()
        return await asyncio.wait_for(call(client), timeout)
    except UnknownSubscription:
        return error(404, "unknown_subscription", f"subscription {subscription_id!r} is not known to the engine")
    except Exception as err:
        if not is_unavailable(err):
            raise
        return error(503, "temporal_unavailable", describe_unavailable(err), {"Retry-After": "30"})


async def _database_check(store: Store) -> str:
    try:
        await asyncio.wait_for(asyncio.to_thread(store.ping), CHECK_TIMEOUT)
    except Exception as err:
        return f"unreachable: {type(err).__name__}"
    return "ok"


async def _temporal_check(gate: TemporalGate) -> str:
    try:
        client = await gate.get()
        await client.client.workflow_service.get_system_info(
            GetSystemInfoRequest(), timeout=timedelta(seconds=CHECK_TIMEOUT)
        )
    except Exception as err:
        return f"unreachable: {describe_unavailable(err) if is_unavailable(err) else type(err).__name__}"
    return "ok"
