"""Fault injection, email: nothing lost, nothing doubled under crashes mid-send (issue 8).

Real parts only: a `temporal server start-dev`, `dunning worker` subprocesses, and an
aiosmtpd sink on loopback (tests/fault_smtp.py) that withholds or delays its reply to DATA
or is not listening at all. Each case counts the copies stored at the sink by Message-ID,
the ledger rows and the `step_deliveries` row (`sends`), and asserts: 0 lost (every due
step stored at least once), one distinct Message-ID per step, extra copies only where a
send was interrupted inside the DATA window (and then counted in `sends`).

The semantics under test: at-least-once email with a stable Message-ID per (campaign
identity, step); a claim is never released on an ambiguous result; the email activity
heartbeats (~5 s timeout), so a killed worker's attempt is retried within seconds and
resent with the same Message-ID; workers stop gracefully on SIGTERM/SIGINT within
DUNNING_SHUTDOWN_GRACE_SECONDS and exit 0.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.fault_procs import assert_each_step_delivered, exited, rigs, spawn, temporal_server, until
from tests.fault_smtp import step

__all__ = ["rigs", "spawn", "temporal_server"]  # fixtures

pytestmark = pytest.mark.devserver

STEPS = ["first_notice", "reminder"]


def config(day_seconds: float, grace_days: float = 6) -> str:
    """Two emails (days 0 and 1), a long grace period (each case ends its campaign with a
    payment once its emails are checked, so no catch-up rule skips a late reminder), no
    retries, no consequences."""
    return f"""
day_seconds = {day_seconds}
[campaign]
grace_days = {grace_days}
steps = [
  {{ after_days = 0, key = "first_notice", template = "first_notice" }},
  {{ after_days = 1, key = "reminder", template = "reminder" }},
]
consequences = [{{ level = "full", min_days = 0 }}]
retries = {{ soft = {{ days = [] }}, unknown = {{ days = [] }} }}
[campaign.providers]
fake = {{ retries = "off", on_exhaustion = "cancel" }}
"""


DAY = 5.0
# A killed worker's attempt is retried after the heartbeat timeout (~5 s); its workflow
# task waits out the dead worker's sticky queue (10 s). 45 s covers both with room.
AFTER_CRASH = 45


# --- 1. SIGKILL inside the DATA window ---------------------------------------------------------
@pytest.mark.parametrize("stored", [True, False], ids=["server-stored-it", "server-had-not"])
async def test_worker_sigkill_during_data_then_fresh_worker_delivers(rigs, stored: bool) -> None:
    rig = rigs(f"kill{int(stored)}", config(DAY))
    rig.sink.start()
    hold = rig.sink.hold(store=stored, match=step("first_notice"))
    worker = await rig.worker()
    sub, handle = await rig.start_campaign()
    await until(hold.started.is_set, 30, lambda: f"the first notice's DATA at the sink\n{rig.diagnostics(sub)}")

    rig.sigkill(worker)
    await until(hold.dropped.is_set, 10, lambda: "the sink to see the killed worker's connection drop")
    assert len(rig.sink.copies(sub, "first_notice")) == int(stored)
    await rig.worker()

    state = await rig.sent_then_recover(sub, handle, STEPS, AFTER_CRASH)
    assert state.steps_unconfirmed == [], f"a step left unconfirmed, not resent: {state}\n{rig.diagnostics(sub)}"
    copies = assert_each_step_delivered(rig, sub, STEPS, max_copies=2)
    rows = rig.deliveries(sub)
    # the killed attempt's send and the resend: two sends; a copy from each only if stored
    assert rows["first_notice"].sends == 2, rig.diagnostics(sub)
    assert len(copies["first_notice"]) == 1 + int(stored), rig.diagnostics(sub)
    assert len(copies["reminder"]) == 1 and rows["reminder"].sends == 1, rig.diagnostics(sub)


# --- 2. SIGTERM / SIGINT mid-send ----------------------------------------------------------------
GRACE = 3.0
EXIT_SLACK = 5.0  # process teardown beyond the grace period


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_worker_stops_gracefully_mid_send_then_fresh_worker_delivers(rigs, sig: signal.Signals) -> None:
    """The sink stored the message and withholds its 250 for longer than the grace period:
    the worker must hand the attempt back (the claim kept) and exit 0 in time."""
    rig = rigs(f"stop{sig.name}", config(DAY), shutdown_grace_seconds=GRACE)
    rig.sink.start()
    hold = rig.sink.hold(store=True, match=step("first_notice"))
    worker = await rig.worker()
    sub, handle = await rig.start_campaign()
    await until(hold.started.is_set, 30, lambda: f"the first notice's DATA at the sink\n{rig.diagnostics(sub)}")

    began = time.monotonic()
    worker.send_signal(sig)
    code = await exited(worker, GRACE + EXIT_SLACK)
    took = time.monotonic() - began
    if code is None:
        rig.sigkill(worker)
    assert code is not None, (
        f"worker still running {took:.1f}s after {sig.name} (grace {GRACE:g}s)\n{rig.diagnostics(sub)}"
    )
    assert code == 0, f"worker exited {code} after {sig.name}, not 0 ({took:.1f}s)\n{rig.diagnostics(sub)}"
    row = rig.deliveries(sub).get("first_notice")
    assert row is not None and row.state == "claimed", (
        f"the interrupted send's claim must stay (it may have been delivered)\n{rig.diagnostics(sub)}"
    )

    await rig.worker()
    await rig.sent_then_recover(sub, handle, STEPS, AFTER_CRASH)
    copies = assert_each_step_delivered(rig, sub, STEPS, max_copies=2)
    assert len(copies["reminder"]) == 1, rig.diagnostics(sub)


# --- 3. the 250 comes after the client's timeout -------------------------------------------------
SMTP_TIMEOUT = 1.0
LATE_REPLY = 5.0
SLOW_REPLIES = 2


async def test_smtp_reply_after_client_timeout_bounded_copies_one_message_id(rigs) -> None:
    """The server stores every message but its first two 250s come after the client gave
    up: ambiguous, so the step is resent (same Message-ID) until one 250 arrives in time."""
    rig = rigs("late250", config(DAY), smtp_timeout=SMTP_TIMEOUT)
    rig.sink.start()
    slow = rig.sink.delay_reply(LATE_REPLY, match=step("first_notice"), times=SLOW_REPLIES)
    await rig.worker()
    sub, handle = await rig.start_campaign()

    await rig.sent_then_recover(sub, handle, STEPS, 60)
    assert slow.drops >= 1, (
        f"the client never gave up on a {LATE_REPLY:g}s-late 250 (DUNNING_SMTP_TIMEOUT={SMTP_TIMEOUT:g}): "
        f"the scenario did not happen\n{rig.diagnostics(sub)}"
    )
    copies = assert_each_step_delivered(rig, sub, STEPS, max_copies=SLOW_REPLIES + 1)
    rows = rig.deliveries(sub)
    assert rows["first_notice"].sends == len(copies["first_notice"]), (
        f"every copy that arrived is a counted send\n{rig.diagnostics(sub)}"
    )
    assert len(copies["first_notice"]) == slow.drops + 1, rig.diagnostics(sub)
    assert len(copies["reminder"]) == 1, rig.diagnostics(sub)


# --- 4. SMTP down 30 s ---------------------------------------------------------------------------
OUTAGE = 30.0
LONG_DAY = 10.0  # the reminder (day 1) comes due during the outage, with days of notice left after it


async def test_smtp_down_30s_then_up_every_due_notice_once_late(rigs) -> None:
    rig = rigs("smtpdown", config(LONG_DAY))  # the sink's port is reserved, nothing listens
    await rig.worker()
    sub, handle = await rig.start_campaign()
    down_since = time.monotonic()
    await asyncio.sleep(OUTAGE)  # the outage itself (no assertion depends on its timing)
    sent = [e for e in rig.ledger(sub) if e.type == "dunning.step_sent"]
    assert sent == [], f"recorded as sent while no SMTP server listened: {sent}"
    rig.sink.start()
    down_for = time.monotonic() - down_since

    state = await rig.sent_then_recover(sub, handle, STEPS, 60)  # the backoff may add one more interval
    assert state.steps_skipped == [], state
    copies = assert_each_step_delivered(rig, sub, STEPS, max_copies=1)
    assert all(len(ids) == 1 for ids in copies.values()), rig.diagnostics(sub)
    reminder = next(e for e in rig.ledger(sub) if e.type == "dunning.step_sent" and e.step_key == "reminder")
    late_by = reminder.data.get("late_by")
    assert late_by is not None, f"the reminder went out late but its ledger row has no late_by: {reminder.data}"
    assert late_by >= down_for - LONG_DAY - 2, (late_by, down_for)
