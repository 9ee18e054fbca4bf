"""Fuzz every webhook route with bodies and headers: never a 5xx, never a write and never a
call to Temporal without a valid signature. In process (ASGI transport); the Temporal
client is a recorder that fails the test on any call."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dunning.providers.fake import sign_fake
from starter.api import create_app
from tests.api_helpers import RecordingClient, api_settings, nothing_written
from tests.webhook_payloads import FAKE_SECRET, braintree_request, fake_request, stripe_header, stripe_request

NOW = datetime.now(UTC).replace(microsecond=0)
PRINTABLE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=200)
HEX = st.text("0123456789abcdef", min_size=0, max_size=70)

VALID = {
    "/webhooks/stripe": stripe_request("evt_fuzz", "invoice.payment_failed", "sub_fuzz", NOW),
    "/webhooks/fake": fake_request("payment_failed", "sub_fuzz", NOW, customer_id="cus_fuzz"),
    "/webhooks/braintree": braintree_request("subscription_charged_unsuccessfully", "sub_fuzz", NOW),
}
SIGNATURE_HEADER = {"/webhooks/stripe": "Stripe-Signature", "/webhooks/fake": "X-Dunning-Signature"}


def mutate(body: bytes, index: int, byte: int) -> bytes:
    if not body:
        return bytes([byte])
    i = index % len(body)
    new = byte if body[i] != byte else (byte + 1) % 256
    return body[:i] + bytes([new]) + body[i + 1 :]


@st.composite
def signature(draw: st.DrawFn, body: bytes) -> str:
    t = draw(st.one_of(st.just(int(time.time())), st.integers(-(2**40), 2**40)))
    return draw(
        st.one_of(
            PRINTABLE,
            st.builds(lambda h: f"t={t},v1={h}", HEX),
            st.builds(lambda h, h2: f"t={t},v1={h},v1={h2},v0=abc", HEX, HEX),
            st.just(stripe_header(body, "whsec_not_ours", t)),
            st.just(sign_fake(body, "not-the-secret", t)),
        )
    )


@st.composite
def json_bodies(draw: st.DrawFn, path: str) -> tuple[bytes, dict[str, str]]:
    _, valid_body, valid_headers = VALID[path]
    kind = draw(st.sampled_from(["random", "mutated", "json", "replayed_signature"]))
    if kind == "random":
        body = draw(st.binary(max_size=2000))
    elif kind == "mutated":  # a genuine signed event with one byte changed
        body = mutate(valid_body, draw(st.integers(0, 10**6)), draw(st.integers(0, 255)))
    elif kind == "json":
        value = draw(st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=30),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
                ["id", "type", "created", "data", "object", "subscription_id", "customer"]), inner, max_size=5),
            max_leaves=12,
        ))  # fmt: skip
        body = json.dumps(value).encode()
    else:  # the real header, on another body
        body = draw(st.binary(max_size=200))
        return body, dict(valid_headers)
    headers = {SIGNATURE_HEADER[path]: draw(signature(body))} if draw(st.booleans()) else {}
    if draw(st.booleans()):
        headers["Content-Type"] = draw(st.sampled_from(["application/json", "text/plain", "", "multipart/form-data"]))
    return body, headers


@st.composite
def form_bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    _, valid_body, valid_headers = VALID["/webhooks/braintree"]
    kind = draw(st.sampled_from(["random", "mutated", "fields"]))
    headers = dict(valid_headers) if draw(st.booleans()) else {"Content-Type": draw(PRINTABLE)}
    if kind == "random":
        return draw(st.binary(max_size=2000)), headers
    if kind == "mutated":
        return mutate(valid_body, draw(st.integers(0, 10**6)), draw(st.integers(0, 255))), headers
    fields = draw(st.dictionaries(
        st.sampled_from(["bt_signature", "bt_payload", "other"]),
        st.one_of(PRINTABLE, st.builds(lambda h: f"public_api|{h}", HEX), st.just("PG5vdGlmaWNhdGlvbj4=")),
    ))  # fmt: skip
    return urlencode(fields).encode(), headers


REQUESTS = st.one_of(
    st.tuples(st.just("/webhooks/stripe"), json_bodies("/webhooks/stripe")),
    st.tuples(st.just("/webhooks/fake"), json_bodies("/webhooks/fake")),
    st.tuples(st.just("/webhooks/braintree"), form_bodies()),
)


@pytest.fixture
def fuzz_app(settings, store):
    recorder = RecordingClient(settings)

    async def factory():
        return recorder

    app = create_app(api_settings(settings), store, factory, sweep_interval=0)
    with asyncio.Runner() as runner:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dunning.test")
        yield runner, client, recorder
        runner.run(client.aclose())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=REQUESTS)
def test_no_5xx_and_nothing_happens_without_a_valid_signature(fuzz_app, store, request) -> None:
    runner, client, recorder = fuzz_app
    path, (body, headers) = request
    response = runner.run(client.post(path, content=body, headers=headers))

    assert response.status_code in (400, 413), (response.status_code, response.text)
    assert response.json()["error"] in {"missing_signature", "bad_signature", "stale_timestamp", "malformed_body"}
    assert recorder.calls == []
    assert nothing_written(store)


def test_the_fuzz_templates_are_genuine(fuzz_app, store) -> None:
    """The unmutated requests do pass verification (so mutations test the signature)."""
    runner, client, recorder = fuzz_app
    for path, body, headers in VALID.values():
        if path == "/webhooks/fake":  # re-sign: the template's timestamp may have aged
            headers = {"X-Dunning-Signature": sign_fake(body, FAKE_SECRET, int(time.time()))}
        response = runner.run(client.post(path, content=body, headers=headers))
        assert response.status_code == 500 and recorder.calls  # verified, then the recorder refused Temporal
        recorder.calls.clear()
