"""Process telemetry: one trace from a webhook to the activities it caused, and the
Temporal SDK's own metrics.

Traces, set with the standard OpenTelemetry variables:

    OTEL_EXPORTER_OTLP_ENDPOINT   export spans over OTLP/HTTP (also ..._TRACES_ENDPOINT,
                                  ..._HEADERS and the rest, read by the exporter itself)
    OTEL_TRACES_EXPORTER          `console`: print spans on stdout; `none`: no spans even
                                  with an endpoint; `otlp`: OTLP at the default endpoint
    OTEL_SERVICE_NAME             the service name on every span (default `dunning`)

With none of them set no tracer provider is installed and spans cost nothing.
`setup_tracing` installs the provider once per process (`worker.app.connect` and
`starter.api.create_app` call it). `tracing_interceptors` go on every Temporal client
`connect` builds, and so on its workers: client calls (start, update, signal) are spans
whose context rides in the Temporal headers to the workflow's and activities' spans;
`instrument_app` adds a server span per HTTP request (not /healthz, /readyz, /metrics).
Span attributes are ids (workflow, run, activity, update) and bounded values; an HTTP
attribute that holds an address is scrubbed.

Worker metrics:

    DUNNING_WORKER_METRICS_BIND   host:port (e.g. 127.0.0.1:9464): the Temporal SDK's
                                  Prometheus endpoint (task latencies, slots, polls,
                                  sticky cache; `temporal_` names), for the process's
                                  clients and workers. Set it in the worker's environment:
                                  another process on the host finds the port taken, logs a
                                  warning and runs without it.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from dunning.scrub import scrub

log = logging.getLogger("dunning.telemetry")

METRICS_BIND = "DUNNING_WORKER_METRICS_BIND"
EXCLUDED_URLS = "/healthz,/readyz,/metrics"
_lock = threading.Lock()
_runtime: dict[str, Runtime | None] = {}


def _exporters() -> set[str]:
    """Which exporters the environment asks for: {"otlp", "console"}, or none."""
    named = {x.strip().lower() for x in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if x.strip()}
    if "none" in named:
        return set()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if endpoint and not named:
        named = {"otlp"}
    return named & {"otlp", "console"}


def setup_tracing(processor: SpanProcessor | None = None) -> TracerProvider | None:
    """The process's tracer provider, installed on the first call that needs one (the
    environment names an exporter, or `processor` is given, e.g. a test's in-memory one);
    later calls add `processor` to it. A provider someone else installed (say the
    `opentelemetry-instrument` launcher) is kept. None: no provider, spans are no-ops."""
    with _lock:
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            if processor is not None:
                current.add_span_processor(processor)
            return current
        exporters = _exporters()
        if not exporters and processor is None:
            return None
        service = os.environ.get("OTEL_SERVICE_NAME") or "dunning"
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        if "otlp" in exporters:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        if "console" in exporters:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        if processor is not None:
            provider.add_span_processor(processor)
        trace.set_tracer_provider(provider)
        log.info("tracing on: %s", ", ".join(sorted(exporters)) or "in-process only")
        return provider


def tracing_interceptors() -> list[TracingInterceptor]:
    """Temporal's OpenTelemetry interceptor (client calls, workflows, activities) when this
    process traces (`setup_tracing` installed a provider); none otherwise, so an untraced
    worker pays nothing per workflow task or activity. It only adds spans and a header:
    commands and history are unchanged, so replay is too."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        return []
    return [TracingInterceptor()]


def _scrub_attributes(span: Any, _scope: dict[str, Any]) -> None:
    """Server request hook: no HTTP span attribute carries an address."""
    if not span.is_recording():
        return
    for key, value in list((getattr(span, "attributes", None) or {}).items()):
        if isinstance(value, str) and "@" in value:
            cleaned = scrub(value)
            span.set_attribute(key, cleaned if "@" not in cleaned else "<redacted>")


def instrument_app(app: Any) -> None:
    """A server span per HTTP request of `app` (a FastAPI app), in the caller's trace when
    the request carries a `traceparent` header."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, excluded_urls=EXCLUDED_URLS, server_request_hook=_scrub_attributes, exclude_spans=["receive", "send"]
    )


def _checked_bind(bind: str) -> str:
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{METRICS_BIND}={bind!r}: expected host:port, e.g. 127.0.0.1:9464")
    return bind


def temporal_runtime() -> Runtime | None:
    """The Runtime serving the SDK's metrics at DUNNING_WORKER_METRICS_BIND, made once
    per process; None (the SDK's default runtime) when unset or the port is taken."""
    bind = os.environ.get(METRICS_BIND, "").strip()
    if not bind:
        return None
    address = _checked_bind(bind)  # malformed: a configuration error, raised
    with _lock:
        if bind not in _runtime:
            try:
                _runtime[bind] = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address)))
                log.info("Temporal SDK metrics (Prometheus) at http://%s/metrics", address)
            except ValueError as err:  # the port is taken (another process on this host)
                log.warning("Temporal SDK metrics not served at %s: %s", address, err)
                _runtime[bind] = None
        return _runtime[bind]
