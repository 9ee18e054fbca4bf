"""Failures are states, not lost events: an SMTP outage delays a step; a send whose result
is unknown is resent with the same Message-ID (at least once, one Message-ID); a permanent
failure is recorded, visible (needs_attention) and never retried forever; no email address
reaches Temporal's history."""

import asyncio
import json
import shutil
import socket
from datetime import UTC, datetime, timedelta
from email import message_from_bytes

import pytest
from aiosmtpd.controller import Controller

from dunning.email.message import domain_of, message_id_for
from dunning.email.outbox import OutboxSink, read_outbox
from dunning.store import campaign_writes
from tests.api_helpers import api_client, api_settings
from tests.temporal_fixtures import ledger, running_worker, without_engine_retries

DAY = timedelta(days=1)


@pytest.fixture
def settings(settings):
    return without_engine_retries(settings)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_smtp_outage_delays_the_step_and_loses_nothing(tenv, store, settings, tmp_path):
    port = free_port()  # nothing listens yet: SMTP is down
    settings = settings.model_copy(update={"smtp_port": port})
    outbox = tmp_path / "late-outbox"
    async with running_worker(tenv, settings, store) as dunning:
        anchor = await tenv.get_current_time()
        handle = await dunning.start_campaign("sub_smtp", "cus_1", "ada@example.com", anchor)
        await tenv.sleep(timedelta(hours=2))  # retries back off while the server is down
        state = await dunning.status("sub_smtp")
        assert state.steps_sent == [] and state.outcome == "running"
        with OutboxSink(outbox, port=port):
            await tenv.sleep(timedelta(hours=1))
            assert [m["X-Dunning-Step"] for m in read_outbox(outbox)] == ["first_notice"]
            await dunning.payment_recovered("sub_smtp")
            assert (await handle.result()).steps_sent == ["first_notice"]
    assert len(read_outbox(outbox)) == 1


async def test_a_dead_attempts_unconfirmed_send_is_resent_once_with_the_same_message_id(tenv, dunning, store, mailbox):
    anchor = await tenv.get_current_time()
    # A previous attempt claimed the first step, began the SMTP send, and died before its reply.
    store.claim_step("sub_claim", anchor, "first_notice", "<x@example.com>", "dead-worker", datetime.now(UTC))
    assert campaign_writes.count_send(store, "sub_claim", anchor, "first_notice", "dead-worker") == 1
    handle = await dunning.start_campaign("sub_claim", "cus_2", "bo@example.com", anchor)
    await tenv.sleep(DAY)
    state = await dunning.status("sub_claim")
    assert state.steps_sent == ["first_notice"] and state.steps_unconfirmed == []
    msgs = mailbox.messages()
    assert [m["X-Dunning-Step"] for m in msgs] == ["first_notice"]
    expected = message_id_for("sub_claim", anchor, "first_notice", domain_of(dunning.settings.smtp_sender))
    assert msgs[0]["Message-ID"] == expected
    (sent,) = ledger(store, "sub_claim", "dunning.step_sent")
    assert sent.data["message_id"] == expected and sent.data["sends"] == 2  # the resend is counted
    assert store.unconfirmed_deliveries() == []
    await dunning.payment_recovered("sub_claim")
    await handle.result()


async def test_customer_without_email_is_a_visible_state_not_a_stuck_campaign(tenv, dunning, store, mailbox):
    anchor = await tenv.get_current_time()
    handle = await dunning.start_campaign("sub_noemail", "cus_none", None, anchor)
    await tenv.sleep(DAY)
    state = await dunning.status("sub_noemail")
    assert state.steps_failed == ["first_notice"] and state.outcome == "running"
    assert state.stage == "needs_attention"
    (failed,) = ledger(store, "sub_noemail", "dunning.action_failed")
    assert failed.step_key == "first_notice" and failed.data["error"] == "NoEmail"
    await dunning.payment_recovered("sub_noemail")
    assert (await handle.result()).outcome == "recovered"
    assert mailbox.steps() == []


class _Sink:
    """An SMTP server on loopback whose answers a test scripts (aiosmtpd)."""

    def __init__(self, handler) -> None:
        self.port = free_port()
        self.controller = Controller(handler, hostname="127.0.0.1", port=self.port)

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()


class _RefuseRecipient:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        return f"550 5.1.1 <{address}>: mailbox unavailable"


class _SlowReply:
    """Stores every message, then answers 250 only after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received: list = []

    async def handle_DATA(self, server, session, envelope):
        self.received.append(message_from_bytes(envelope.original_content or envelope.content))
        await asyncio.sleep(self.delay)
        return "250 OK"


async def test_permanent_smtp_refusal_is_recorded_without_the_address_and_the_campaign_goes_on(
    tenv, store, settings
):
    with _Sink(_RefuseRecipient()) as sink:
        settings = settings.model_copy(update={"smtp_port": sink.port})
        async with running_worker(tenv, settings, store) as dunning:
            anchor = await tenv.get_current_time()
            handle = await dunning.start_campaign("sub_550", "cus_550", "secret.person@example.org", anchor)
            await tenv.sleep(DAY)
            state = await dunning.status("sub_550")
            assert state.steps_failed == ["first_notice"] and state.stage == "needs_attention"
            assert state.outcome == "running" and state.next_step is not None  # goes on to the reminder
            await dunning.payment_recovered("sub_550")
            await handle.result()
            history = json.dumps((await handle.fetch_history()).to_json_dict())
    (failed,) = ledger(store, "sub_550", "dunning.action_failed")
    assert failed.data["error"] == "SmtpPermanent" and "550" in failed.data["message"]
    assert "secret.person" not in failed.data["message"] and "<address>" in failed.data["message"]
    assert "secret.person" not in history and "550" in history
    assert store.unconfirmed_deliveries() == []
    metrics = await _metrics(settings, store)
    assert metrics["dunning.actions.failed"] == 1 and metrics["dunning.deliveries.unconfirmed"] == 0


async def test_a_250_after_the_client_timeout_is_resent_with_the_same_message_id_and_counted(tenv, store, settings):
    handler = _SlowReply(delay=0.8)
    with _Sink(handler) as sink:
        settings = settings.model_copy(update={"smtp_port": sink.port, "smtp_timeout": 0.5})
        async with running_worker(tenv, settings, store) as dunning:
            anchor = await tenv.get_current_time()
            handle = await dunning.start_campaign("sub_slow", "cus_slow", "ada@example.com", anchor)
            for _ in range(100):
                if ledger(store, "sub_slow", "dunning.step_sent"):
                    break
                await asyncio.sleep(0.1)
            await dunning.payment_recovered("sub_slow")
            await handle.result()
    ids = [m["Message-ID"] for m in handler.received]
    assert len(ids) == 2 and len(set(ids)) == 1  # delivered twice (the server kept the first), one Message-ID
    (sent,) = ledger(store, "sub_slow", "dunning.step_sent")
    assert sent.data["sends"] == 2 and sent.data["message_id"] == ids[0]
    assert (await _metrics(settings, store))["dunning.email.resends"] == 1  # the extra copy is counted


async def _metrics(settings, store) -> dict:
    async def no_temporal():  # /metrics reads the store only
        raise AssertionError("/metrics must not need Temporal")

    async with api_client(api_settings(settings), store, no_temporal) as api:
        response = await api.get("/metrics.json")
    assert response.status_code == 200
    return response.json()


async def test_a_template_error_is_a_state_not_an_endless_retry(tenv, store, settings, tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(settings.templates_dir, templates)
    (templates / "first_notice.txt.j2").write_text("Hi {{ no_such_variable }}\n")
    settings = settings.model_copy(update={"templates_dir": templates})
    async with running_worker(tenv, settings, store) as dunning:
        anchor = await tenv.get_current_time()
        handle = await dunning.start_campaign("sub_tpl", "cus_tpl", "ada@example.com", anchor)
        await tenv.sleep(DAY)
        state = await dunning.status("sub_tpl")
        assert state.steps_failed == ["first_notice"] and state.stage == "needs_attention"
        await dunning.payment_recovered("sub_tpl")
        assert (await handle.result()).outcome == "recovered"
    (failed,) = ledger(store, "sub_tpl", "dunning.action_failed")
    assert failed.data["error"] == "TemplateError" and "no_such_variable" in failed.data["message"]
