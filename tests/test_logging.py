"""The outbox deliverer's log while a host's receiver is down (starter/outbound.py): one
short key=value line per failed attempt, with the attempt count and the reason, never a
traceback; the URL's path and query (which may hold a token) stay out of it."""

from __future__ import annotations

import logging

import httpx
import pytest

from starter.outbound import OutboxDeliverer
from tests.test_outbox_delivery import SECRET, Clock, emit

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the log, not the database
URL = "http://hooks.example.test/dunning?token=s3cret"


def lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "dunning.outbound"]


async def test_a_receiver_that_stays_down_logs_one_short_line_per_attempt(store, caplog):
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    event_id = emit(store, "sub_down", "campaign_started")
    clock = Clock()
    deliverer = OutboxDeliverer(store, [URL], SECRET, transport=httpx.MockTransport(refuse), clock=clock)
    attempts = 4
    with caplog.at_level(logging.INFO, "dunning.outbound"):
        for _ in range(attempts):
            assert await deliverer.deliver_due() == 0
            assert await deliverer.deliver_due() == 0  # not due again before its backoff: no line
            clock.advance(seconds=600)
    records = lines(caplog)
    assert len(records) == attempts
    for n, record in enumerate(records, start=1):
        message = record.getMessage()
        assert record.levelno == logging.WARNING and record.exc_info is None
        assert message.startswith("outbound delivery failed: ")
        assert f"event={event_id}" in message and "subscription=sub_down" in message
        assert f"attempt={n}" in message and 'reason="url[0] hooks.example.test: ConnectError"' in message
        assert f"retry_in={2 ** (n - 1)}s" in message
        assert "\n" not in message and len(message) < 300
    assert "Traceback" not in caplog.text and "s3cret" not in caplog.text and "/dunning" not in caplog.text


async def test_an_http_error_names_its_status_and_the_recovery_is_one_line(store, caplog):
    answers = iter([503, 503, 200])

    def receiver(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(answers))

    emit(store, "sub_flaky", "campaign_started")
    clock = Clock()
    deliverer = OutboxDeliverer(store, [URL], SECRET, transport=httpx.MockTransport(receiver), clock=clock)
    with caplog.at_level(logging.INFO, "dunning.outbound"):
        delivered = []
        for _ in range(3):
            delivered.append(await deliverer.deliver_due())
            clock.advance(seconds=600)
    assert delivered == [0, 0, 1]
    messages = [r.getMessage() for r in lines(caplog)]
    assert ['reason="url[0] hooks.example.test: HTTP 503"' in m for m in messages] == [True, True, False]
    assert messages[2].startswith("outbound delivered: ") and "attempt=3" in messages[2]
    assert "Traceback" not in caplog.text
