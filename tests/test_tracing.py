"""One trace from a webhook to the activities it caused (starter.telemetry): the HTTP
server span, the client's start, the workflow's run and its activities share
a trace id, and no span attribute holds an address. Spans go to an in-memory exporter;
the client comes from `worker.app.connect` (so it carries the tracing interceptor) on the
time-skipping server. A history recorded with tracing headers replays with and without
the interceptor."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from starter import telemetry
from starter.client import DunningClient
from tests.api_helpers import api_client, api_settings, eventually, post, uid
from tests.webhook_payloads import fake_request
from worker.app import build_worker, connect
from workflows.campaign import DunningCampaign, workflow_id


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    telemetry.setup_tracing(SimpleSpanProcessor(memory))  # the process's provider, installed once
    yield memory
    memory.shutdown()  # records nothing more (the provider stays for the session)


def attribute_values(span: ReadableSpan) -> list[str]:
    return [str(v) for v in (span.attributes or {}).values()]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the trace, not the database
async def test_a_webhook_its_workflow_and_activities_share_one_trace(tenv, settings, store, mailbox, spans):
    client = await connect(
        settings.model_copy(update={"temporal_address": tenv.client.service_client.config.target_host})
    )
    engine = DunningClient(client, store, settings, clock=tenv.get_current_time)

    async def factory() -> DunningClient:
        return engine

    sub = uid("sub_trace")
    failed_at = (await tenv.get_current_time()).replace(microsecond=0)
    request = fake_request("payment_failed", sub, failed_at, customer_id="cus_trace", customer_email="tr@example.com")
    handle = client.get_workflow_handle(workflow_id(sub))
    async with build_worker(client, settings, store):
        try:
            async with api_client(api_settings(settings), store, factory, clock=tenv.get_current_time) as api:
                response = await post(api, request)
                await api.get("/v1/customers/ann@example.com/attention?who=ann@example.com")  # 401; scrubbed span
            assert response.json() == {"status": "processed", "action": "start", "result": "started"}
            await eventually(mailbox.messages)  # the first notice went out: its activity ended

            (server,) = [s for s in spans.get_finished_spans()
                         if s.kind == SpanKind.SERVER and "/webhooks/fake" in s.name]  # fmt: skip
            trace_id = server.context.trace_id

            def in_trace() -> list[str]:
                return [s.name for s in spans.get_finished_spans() if s.context.trace_id == trace_id]

            names = await eventually(lambda: (n := in_trace()) and "RunActivity:send_step_email" in n and n)
            assert "StartWorkflow:DunningCampaign" in names  # the campaign starts with its failure
            assert "RunWorkflow:DunningCampaign" in names
            assert "RunActivity:begin_campaign" in names
            history = await handle.fetch_history()
        finally:
            await handle.terminate("test ended")

    finished = spans.get_finished_spans()
    assert [s for s in finished if "/attention" in s.name]  # the address-bearing request was traced
    assert [(s.name, v) for s in finished for v in attribute_values(s) if "@" in v] == []
    assert any(v == workflow_id(sub) for s in spans.get_finished_spans() for v in attribute_values(s))
    for interceptors in ([], [TracingInterceptor()]):  # tracing headers in history: replay unchanged
        replayer = Replayer(
            workflows=[DunningCampaign], data_converter=pydantic_data_converter, interceptors=interceptors
        )
        result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
        assert result.replay_failure is None


async def test_tracing_is_off_without_configuration(monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    assert telemetry._exporters() == set()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert telemetry._exporters() == {"otlp"}
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert telemetry._exporters() == {"console"}
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert telemetry._exporters() == set()
