"""The outbox deliverer: POSTs the `outbound_events` rows to every configured host URL.

Runs as a background task of the worker process (`worker.app.run_worker`) when
`outbound_urls` is set. A pass claims the due events, at most one per subscription (its
earliest pending one: `dunning.store.outbox.claim_due`), POSTs them concurrently across
subscriptions, and repeats while something was delivered; then it sleeps
`outbound_poll_seconds`. An event is `delivered` once every URL answered 2xx; otherwise it
is due again after a capped exponential backoff (1 s doubling to 5 min) and its
subscription's later events wait behind it, so a receiver that is down for a day gets
every event when it returns, in order per subscription. A URL that already accepted an
event is not sent it again by this process; a crash between a 2xx and the `delivered`
write redelivers it, so hosts dedupe by `webhook-id` (at-least-once).

Format: Standard Webhooks (https://www.standardwebhooks.com), signed with the
`standardwebhooks` package: headers `webhook-id` (the event id, stable across retries),
`webhook-timestamp` (unix seconds of this attempt), `webhook-signature` (`v1,<base64
HMAC-SHA256>` over `"<id>.<timestamp>.<body>"`); the body is the event's JSON. Hosts
verify with `standardwebhooks.Webhook(secret).verify(body, headers)`; see `signing_key`
for how `outbound_secret` maps to that secret.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
from opentelemetry import metrics
from standardwebhooks import Webhook

from dunning.config import Settings
from dunning.store import outbox
from dunning.store.outbox import OutboxRow
from dunning.store.store import Store

log = logging.getLogger("dunning.outbound")
SECRET_PREFIX = "whsec_"


def signing_key(secret: str) -> bytes:
    """The HMAC key for `outbound_secret`. `whsec_<base64>` (the Standard Webhooks secret
    format) is the key's base64: a host passes the same string to `Webhook(secret)`. Any
    other value is used as its raw UTF-8 bytes: a host verifies with
    `Webhook(secret.encode())`, or `Webhook("whsec_" + base64(secret))`."""
    if secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX) :]
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"outbound_secret: starts with {SECRET_PREFIX!r} but the rest is not base64") from None
    else:
        key = secret.encode()
    if not key:
        raise ValueError("outbound_secret: empty")
    return key


def backoff(attempts: int, first: float, cap: float) -> float:
    """Seconds before the next attempt after `attempts` failed ones: first, 2x, 4x, ... capped."""
    return min(cap, first * 2 ** min(max(attempts - 1, 0), 32))


def where(index: int, url: str) -> str:
    """A URL named in errors and logs without its path or query (which may hold a token)."""
    parsed = httpx.URL(url)
    return f"url[{index}] {parsed.host}{f':{parsed.port}' if parsed.port else ''}"


class _Meters:
    def __init__(self) -> None:
        meter = metrics.get_meter("dunning.outbound")
        self.delivered = meter.create_counter(
            "dunning.outbound.delivered", unit="{event}", description="Outbound events delivered to every URL"
        )
        self.failed = meter.create_counter(
            "dunning.outbound.failed_attempts", unit="{attempt}", description="Outbound delivery attempts that failed"
        )
        self.lag = meter.create_histogram(
            "dunning.outbound.delivery_lag", unit="s", description="From an event's creation to its delivery"
        )


class OutboxDeliverer:
    def __init__(
        self,
        store: Store,
        urls: list[str],
        secret: str,
        *,
        poll_seconds: float = 2.0,
        timeout: float = 10.0,
        batch: int = 50,
        concurrency: int = 8,
        backoff_first: float = 1.0,
        backoff_cap: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not urls:
            raise ValueError("outbound_urls: the deliverer needs at least one URL")
        self.store = store
        self.urls = list(urls)
        self.webhook = Webhook(signing_key(secret))
        self.poll_seconds = poll_seconds
        self.timeout = timeout
        self.batch = batch
        self.backoff_first, self.backoff_cap = backoff_first, backoff_cap
        self.lease = timedelta(seconds=max(60.0, 2 * timeout * len(self.urls)))  # longer than one attempt
        self._transport = transport
        self._clock = clock or (lambda: datetime.now(UTC))
        self._limit = asyncio.Semaphore(concurrency)
        self._accepted: dict[int, set[int]] = {}  # row id -> indexes of URLs that answered 2xx
        self._meters = _Meters()

    @classmethod
    def from_settings(cls, settings: Settings, store: Store, **options) -> OutboxDeliverer:
        return cls(
            store,
            settings.outbound_urls,
            settings.outbound_secret or "",
            poll_seconds=settings.outbound_poll_seconds,
            **options,
        )

    # --- the loop ------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; an attempt in flight then finishes (bounded by the
        HTTP timeout) before this returns. Cancelled mid-POST, the event is due again at once."""
        log.info("outbox deliverer started: %d URL(s), polling every %g s", len(self.urls), self.poll_seconds)
        async with self._client() as http:
            while not stop.is_set():
                try:
                    await self.deliver_due(http, stop)
                except Exception as err:  # the database is down, say: try again next poll
                    log.warning("outbox pass failed: reason=%s retry_in=%gs", type(err).__name__, self.poll_seconds)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_seconds)
        log.info("outbox deliverer stopped")

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self.timeout, transport=self._transport, follow_redirects=False)

    async def deliver_due(self, http: httpx.AsyncClient | None = None, stop: asyncio.Event | None = None) -> int:
        """Deliver what is due now, round after round while a round delivered something (the
        next event of that subscription may be due at once). Returns how many were delivered."""
        if http is None:
            async with self._client() as own:
                return await self.deliver_due(own, stop)
        total = 0
        while stop is None or not stop.is_set():
            rows = await asyncio.to_thread(outbox.claim_due, self.store, self._clock(), self.batch, self.lease)
            if not rows:
                break
            results = await asyncio.gather(*(self._deliver(http, row) for row in rows))
            delivered = sum(results)
            total += delivered
            if not delivered:
                break
        return total

    # --- one event -----------------------------------------------------------------------
    def headers(self, row: OutboxRow, body: bytes) -> dict[str, str]:
        now = datetime.now(UTC)  # the wall clock: hosts refuse timestamps more than 5 min off
        return {
            "content-type": "application/json",
            "user-agent": "dunning-outbox",
            "webhook-id": row.event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.webhook.sign(row.event_id, now, body.decode()),
        }

    async def _deliver(self, http: httpx.AsyncClient, row: OutboxRow) -> bool:
        async with self._limit:
            try:
                error = await self._post_all(http, row)
            except asyncio.CancelledError:
                outbox.release(self.store, row.id, self._clock())  # shutting down: due again at once
                raise
            now = self._clock()
            if error is None:
                self._accepted.pop(row.id, None)
                await asyncio.to_thread(outbox.mark_delivered, self.store, row.id, now)
                self._meters.delivered.add(1, {"type": row.type})
                self._meters.lag.record(max(0.0, (now - row.created_at).total_seconds()), {"type": row.type})
                log.info("outbound delivered: event=%s type=%s attempt=%d", row.event_id, row.type, row.attempts)
                return True
            delay = backoff(row.attempts, self.backoff_first, self.backoff_cap)
            await asyncio.to_thread(outbox.mark_failed, self.store, row.id, now + timedelta(seconds=delay), error)
            # one line per failed attempt (so once per backoff step): ids, the count, the reason; no traceback
            log.warning(
                'outbound delivery failed: event=%s type=%s subscription=%s attempt=%d retry_in=%gs reason="%s"',
                row.event_id, row.type, row.subscription_id, row.attempts, delay, error,
            )  # fmt: skip
            return False

    async def _post_all(self, http: httpx.AsyncClient, row: OutboxRow) -> str | None:
        """POST to every URL that has not accepted it yet; None when all have, else the first error."""
        body = json.dumps(row.payload, separators=(",", ":"), ensure_ascii=False).encode()
        accepted = self._accepted.setdefault(row.id, set())
        errors = []
        for index, url in enumerate(self.urls):
            if index in accepted:
                continue
            try:
                response = await http.post(url, content=body, headers=self.headers(row, body))
            except httpx.HTTPError as err:
                errors.append(f"{where(index, url)}: {type(err).__name__}")
                self._meters.failed.add(1, {"reason": type(err).__name__})
                continue
            if 200 <= response.status_code < 300:
                accepted.add(index)
            else:
                errors.append(f"{where(index, url)}: HTTP {response.status_code}")
                self._meters.failed.add(1, {"reason": f"http_{response.status_code}"})
        return "; ".join(errors) if errors else None
