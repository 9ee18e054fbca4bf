"""GET /metrics as Prometheus text (starter.api_metrics.StoreCollector over
dunning.store.metrics_queries), its JSON twin, and the Temporal SDK's own endpoint
(starter.telemetry.temporal_runtime). The store is seeded directly: SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import socket
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

from dunning.store.schema import inbox, subscriptions
from dunning.store.store import Store
from starter import telemetry
from starter.api_metrics import wants_json
from tests.api_helpers import api_client, api_settings
from worker.app import connect

T0 = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
PROMETHEUS_ACCEPT = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"


async def no_temporal():
    raise AssertionError("/metrics must not need Temporal")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition text."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def seed(store: Store) -> None:
    """Two live campaigns (stripe exhausted, fake recovered), a shadow one, and one row of
    every counted kind; a few values outside the closed label sets (one an address)."""
    started = {"sub_a": ("stripe", None), "sub_b": ("fake", None), "sub_c": ("fake", "shadow"),
               "sub_d": ("paypal", None)}  # fmt: skip
    for sub, (provider, mode) in started.items():
        data = {"provider": provider, **({"mode": mode} if mode else {})}
        store.record_event("dunning.campaign_started", sub, f"cus_{sub}", T0, T0, data=data)
    rows = [
        ("dunning.step_sent", "sub_a", "first_notice", {"message_id": "<m1@dunning>"}),
        ("dunning.step_sent", "sub_b", "first_notice", {"message_id": "<m2@dunning>"}),
        ("dunning.action_skipped", "sub_a", "reminder", {"reason": "paused"}),
        ("dunning.action_failed", "sub_a", "final_notice", {"error": "no_address"}),
        ("dunning.retry_attempted", "sub_a", "retry@1", {"status": "declined", "decline_class": "soft"}),
        ("dunning.retry_attempted", "sub_b", "retry@1", {"status": "succeeded"}),
        ("dunning.retry_attempted", "sub_d", "retry@1", {"status": "declined", "decline_class": "ann@example.com"}),
        ("dunning.consequence_changed", "sub_a", "consequence@7", {"level": "limited"}),
        ("dunning.consequence_changed", "sub_d", "consequence@7", {"level": "ann@example.com"}),
        ("dunning.exhausted", "sub_a", "", {"reason": "grace over"}),
        ("dunning.recovered", "sub_b", "", {"reason": "paid"}),
        ("bad_debt.entered", "sub_a", "", {"decline_class": "hard", "plan_id": "gold"}),
        ("bad_debt.exited", "sub_a", "", {"how": "paid", "reason": "card_updated", "days_in_bad_debt": 2.0}),
        ("dunning.drift_detected", "sub_b", "sweep:1", {"drift": ["projection.entitlement"], "source": "sweep"}),
    ]
    for type_, sub, key, data in rows:
        store.record_event(type_, sub, f"cus_{sub}", T0, T0 + timedelta(days=1), step_key=key, data=data)
    with store.write() as conn:
        for sub, level in (("sub_a", "canceled"), ("sub_b", "full"), ("sub_d", "limited")):
            row = {"id": sub, "customer_id": f"cus_{sub}", "provider": "stripe", "status": "active"}
            conn.execute(store.insert(subscriptions).values(**row, entitlement=level, updated_at=T0))
        for n, (status, attempts) in enumerate((("received", 2), ("parked", 5), ("dispatched", 9))):
            conn.execute(store.insert(inbox).values(
                provider="stripe", event_id=f"evt_{n}", event_type="invoice.payment_failed", occurred_at=T0,
                received_at=T0, status=status, payload={}, attempts=attempts))  # fmt: skip


async def test_metrics_are_prometheus_text_from_the_store(settings, store):
    seed(store)
    async with api_client(api_settings(settings), store, no_temporal) as api:
        rejected = await api.post("/webhooks/fake", content=b"{}", headers={"X-Dunning-Signature": "t=1,v1=00"})
        assert rejected.status_code in (400, 401)
        response = await api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    got = samples(response.text)

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert value("dunning_store_up") == 1
    assert value("dunning_campaigns_started_total", provider="stripe", mode="live") == 1
    assert value("dunning_campaigns_started_total", provider="fake", mode="live") == 1
    assert value("dunning_campaigns_started_total", provider="fake", mode="shadow") == 1
    assert value("dunning_campaigns_started_total", provider="other", mode="live") == 1  # not a known provider
    assert value("dunning_campaigns_ended_total", outcome="exhausted", provider="stripe") == 1
    assert value("dunning_campaigns_ended_total", outcome="recovered", provider="fake") == 1
    assert [value("dunning_steps_total", result=r) for r in ("sent", "skipped", "failed")] == [2, 1, 1]
    assert value("dunning_retries_total", result="declined", decline_class="soft") == 1
    assert value("dunning_retries_total", result="succeeded", decline_class="none") == 1
    assert value("dunning_retries_total", result="declined", decline_class="other") == 1
    assert value("dunning_consequence_changes_total", level="limited") == 1
    assert value("dunning_consequence_changes_total", level="other") == 1
    assert [value("dunning_subscriptions", entitlement=lv) for lv in ("full", "limited", "canceled", "suspended")] == [
        1, 1, 1, 0]  # fmt: skip
    assert value("dunning_dispatch_failures", provider="stripe", status="received") == 2
    assert value("dunning_dispatch_failures", provider="stripe", status="parked") == 5
    assert (value("dunning_inbox_events", status="pending"), value("dunning_inbox_events", status="parked")) == (1, 1)
    assert value("dunning_stuck", kind="parked_events") == 1
    assert value("dunning_bad_debt_entries_total", decline_class="hard") == 1
    assert value("dunning_bad_debt_exits_total", how="paid") == 1
    assert value("dunning_in_bad_debt") == 0
    assert value("dunning_drift_detected_total", field="projection.entitlement") == 1
    assert value("dunning_drift_detected_by_source_total", source="sweep") == 1
    assert value("dunning_deliveries_unconfirmed") == 0 and value("dunning_email_resends_total") == 0
    (webhook,) = [k for k in got if k[0] == "dunning_webhooks_total"]
    assert dict(webhook[1])["provider"] == "fake" and dict(webhook[1])["outcome"] == "rejected"
    assert got[("dunning_webhook_duration_seconds_count", (("outcome", "rejected"), ("provider", "fake")))] == 1
    assert "@" not in response.text  # label values come from closed sets only


async def test_json_stays_at_metrics_json_and_by_asking(settings, store):
    async with api_client(api_settings(settings), store, no_temporal) as api:
        body = (await api.get("/metrics.json")).json()
        assert "dunning.webhooks" in body and "dunning.stuck.parked_events" in body
        for asked in ({"params": {"format": "json"}}, {"headers": {"Accept": "application/json"}}):
            response = await api.get("/metrics", **asked)
            assert response.headers["content-type"] == "application/json" and response.json() == body
        scraped = await api.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
        assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")


BROWSER = "text/html,application/xml;q=0.9,*/*;q=0.8"


def test_the_accept_rule():
    text = (None, "", "*/*", "text/plain, application/json", PROMETHEUS_ACCEPT, "application/json;q=0", BROWSER)
    assert not any(wants_json(a) for a in text)
    assert all(wants_json(a) for a in ("application/json", "application/json, text/plain, */*",
                                       "text/plain;q=0.5, application/json"))  # fmt: skip


async def test_each_app_has_its_own_registry(settings, store):
    async with api_client(api_settings(settings), store, no_temporal) as one:
        await one.post("/webhooks/fake", content=b"{}", headers={"X-Dunning-Signature": "t=1,v1=00"})
        async with api_client(api_settings(settings), store, no_temporal) as other:
            assert "dunning_webhooks_total{" not in (await other.get("/metrics")).text
        assert "dunning_webhooks_total{" in (await one.get("/metrics")).text
    assert b"dunning_" not in generate_latest(REGISTRY)  # prometheus_client's global registry untouched


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_scrape_without_the_database_still_answers(settings, tmp_path, caplog):
    folder = tmp_path / "gone"
    store = Store(f"sqlite:///{folder / 'dunning.db'}")  # not migrated; its folder removed below
    folder.rmdir()
    async with api_client(api_settings(settings), store, no_temporal) as api:
        await api.post("/webhooks/fake", content=b"{}", headers={"X-Dunning-Signature": "t=1,v1=00"})
        with caplog.at_level(logging.WARNING, "dunning.api"):
            response = await api.get("/metrics")
    assert response.status_code == 200
    got = samples(response.text)
    assert got[("dunning_store_up", ())] == 0
    assert any(name == "dunning_webhooks_total" for name, _ in got)
    assert "metrics scrape without the store" in caplog.text and "Traceback" not in caplog.text
    store.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_worker_metrics_bind_serves_the_sdk_metrics(tenv, settings, monkeypatch, caplog):
    bind = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv(telemetry.METRICS_BIND, bind)
    target = tenv.client.service_client.config.target_host
    client = await connect(settings.model_copy(update={"temporal_address": target}))
    assert client.service_client.config.runtime is telemetry.temporal_runtime()  # one runtime per process
    await client.workflow_service.get_system_info(GetSystemInfoRequest())  # an RPC, counted
    with urllib.request.urlopen(f"http://{bind}/metrics", timeout=10) as answer:  # noqa: S310 - loopback
        assert b"temporal_" in answer.read()

    with socket.socket() as taken:  # another process holds the port: a warning, the default runtime
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv(telemetry.METRICS_BIND, f"127.0.0.1:{taken.getsockname()[1]}")
        with caplog.at_level(logging.WARNING, "dunning.telemetry"):
            assert telemetry.temporal_runtime() is None
        assert "not served" in caplog.text
    monkeypatch.setenv(telemetry.METRICS_BIND, "9464")
    with pytest.raises(ValueError, match="host:port"):
        telemetry.temporal_runtime()
