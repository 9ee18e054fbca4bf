"""The API's OpenAPI schema and its offline documentation page: behind the token by
default, open or off by config; every route and its answer models are in it."""

from __future__ import annotations

import httpx
import pytest

from dunning.store.store import Store
from tests.api_helpers import api_client, api_settings
from tests.webhook_payloads import API_TOKEN

pytestmark = pytest.mark.asyncio
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


async def no_temporal():
    raise AssertionError("the docs never reach Temporal")


async def _get(settings, store: Store, path: str, **kw) -> httpx.Response:
    async with api_client(settings, store, no_temporal) as api:
        return await api.get(path, **kw)


async def test_behind_the_token_by_default(settings, store: Store) -> None:
    s = api_settings(settings)
    assert (await _get(s, store, "/openapi.json")).status_code == 401
    assert (await _get(s, store, "/docs")).status_code == 401
    spec = (await _get(s, store, "/openapi.json", headers=AUTH)).json()
    paths = spec["paths"]
    for path in ("/webhooks/stripe", "/v1/subscriptions/{subscription_id}/payment-recovered",
                 "/v1/subscriptions/{subscription_id}/pay-bad-debt", "/v1/subscriptions/{subscription_id}/recompute",
                 "/v1/subscriptions/{subscription_id}/campaign", "/v1/customers/{customer_id}/attention",
                 "/v1/subscriptions/{subscription_id}/entitlement", "/metrics", "/healthz"):  # fmt: skip
        assert path in paths, path
    recovered = paths["/v1/subscriptions/{subscription_id}/payment-recovered"]["post"]
    assert recovered["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/RecoverResult")
    assert recovered["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert "reason" in str(recovered["requestBody"]) and recovered["security"] == [{"HTTPBearer": []}]
    assert {"Report", "CampaignState", "ErrorBody", "PaidAnswer"} <= set(spec["components"]["schemas"])
    page = await _get(s, store, "/docs", headers=AUTH)
    assert page.status_code == 200 and "POST /v1/subscriptions/{subscription_id}/recompute" in page.text
    assert "<script" not in page.text and "http" not in page.text.split("<body>", 1)[1]  # offline


async def test_public_or_off_by_config(settings, store: Store) -> None:
    assert (await _get(api_settings(settings, api_docs="public"), store, "/openapi.json")).status_code == 200
    off = api_settings(settings, api_docs="off")
    assert (await _get(off, store, "/openapi.json", headers=AUTH)).status_code == 404
    assert (await _get(off, store, "/docs", headers=AUTH)).status_code == 404


async def test_a_bad_query_parameter_is_a_400_naming_it(settings, store: Store) -> None:
    async with api_client(api_settings(settings), store, no_temporal) as api:
        bad = await api.post("/v1/subscriptions/sub_1/recompute", params={"dry_run": "maybe"}, headers=AUTH)
    assert bad.status_code == 400 and bad.json()["error"] == "bad_request" and "dry_run" in bad.json()["message"]
