"""SIGTERM and SIGINT stop the real commands gracefully and they exit 0 within the bound.

`dunning api` (no Temporal needed): a request in flight when the signal arrives still
gets its answer, new connections are refused, and a request that never completes is cut
off after `shutdown_grace_seconds`. `dunning worker` and `dunning dev` run against a real
Temporal dev server (marked `devserver`): the worker delivers the outbox to a host's
endpoint, then stops polling, stops the deliverer and exits 0; `dunning dev` stops its
parts in order (API, worker, SMTP sink, Temporal) and leaves no Temporal server behind.
Worker stops with an activity in flight (an SMTP send) are in tests/test_faults_email.py.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from dunning.contracts import OutboundEvent
from dunning.providers.fake import sign_fake
from dunning.store import outbox
from dunning.store.store import Store
from tests.test_devserver import (
    Spawner,
    alive,
    children,
    clean_env,
    cmdline,
    devserver,  # noqa: F401 - fixture
    dunning_command,
    free_port,
    listening,
    spawn,  # noqa: F401 - fixture
    tail,
    wait_until,
)
from tests.webhook_receiver import Receiver

SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]
FAKE_SECRET = "fake-secret-for-graceful-stop"
OUTBOUND_SECRET = "whsec_" + base64.b64encode(b"graceful-stop outbound secret").decode()
SLACK = 5.0  # interpreter and process teardown beyond the grace period


def exit_code(proc: subprocess.Popen, timeout: float, log: Path) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {timeout:g}s after the signal\n{tail(log)}", pytrace=False)


def logged(log: Path, text: str) -> bool:
    return text in log.read_text(errors="replace")


# --- dunning api --------------------------------------------------------------------------
def start_api(tmp_path: Path, spawn: Spawner, grace: float) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = clean_env(
        home=tmp_path / "home",
        api_port=port,
        fake_webhook_secret=FAKE_SECRET,
        temporal_address=f"127.0.0.1:{free_port()}",  # nobody there: this route needs no Temporal
        shutdown_grace_seconds=grace,
    )
    api = spawn("dunning-api", [*dunning_command(), "api"], env)

    def up() -> bool:
        if api.poll() is not None:
            pytest.fail(f"`dunning api` exited with {api.returncode}\n{tail(spawn.log(api))}", pytrace=False)
        return listening(port)

    wait_until(up, 30, lambda: f"`dunning api` listening on {port}\n{tail(spawn.log(api))}")
    return api, port


def unhandled_event() -> tuple[bytes, str]:
    """A signed fake-provider event the API records as ignored (200) without Temporal."""
    body = json.dumps({
        "id": uuid.uuid4().hex, "type": "customer.note_added", "created": datetime.now(UTC).isoformat(),
        "data": {"subscription_id": "sub_stop"},
    }).encode()  # fmt: skip
    return body, sign_fake(body, FAKE_SECRET, int(time.time()))


def begin_request(port: int, body: bytes, signature: str, sent: int) -> socket.socket:
    """Headers and the first `sent` bytes of the body: the request is in flight."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        "POST /webhooks/fake HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Dunning-Signature: {signature}\r\n\r\n"
    )
    sock.sendall(head.encode() + body[:sent])
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize("sig", SIGNALS)
def test_api_answers_the_request_in_flight_then_exits_0(tmp_path: Path, spawn: Spawner, sig) -> None:
    grace = 10.0
    api, port = start_api(tmp_path, spawn, grace)
    log = spawn.log(api)
    body, signature = unhandled_event()
    sock = begin_request(port, body, signature, sent=10)
    time.sleep(0.5)  # the server has the request's headers

    api.send_signal(sig)
    wait_until(lambda: logged(log, "API stopping"), 10, lambda: f"'API stopping' in the log\n{tail(log)}")
    wait_until(lambda: not listening(port), 5, lambda: "the API to stop accepting connections")
    time.sleep(0.5)
    assert api.poll() is None, f"`dunning api` exited with a request in flight\n{tail(log)}"

    sock.sendall(body[10:])
    status, answer = read_response(sock)
    sock.close()
    assert (status, answer["status"], answer["reason"]) == (200, "ignored", "unhandled_type"), answer

    assert exit_code(api, grace + SLACK, log) == 0, tail(log)
    assert logged(log, f"{sig.name} received: API stopping gracefully (up to {grace:g} s)"), tail(log)
    assert logged(log, "API stopped"), tail(log)


def test_api_cuts_off_a_request_that_never_completes_after_the_grace_period(tmp_path: Path, spawn: Spawner) -> None:
    grace = 1.0
    api, port = start_api(tmp_path, spawn, grace)
    log = spawn.log(api)
    body, signature = unhandled_event()
    sock = begin_request(port, body, signature, sent=10)  # the rest never comes
    time.sleep(0.5)

    began = time.monotonic()
    api.send_signal(signal.SIGTERM)
    assert exit_code(api, grace + SLACK, log) == 0, tail(log)
    assert time.monotonic() - began < grace + SLACK
    assert logged(log, "API stopped"), tail(log)
    sock.close()


# --- dunning worker (real Temporal) ----------------------------------------------------------
def emit(store: Store, sub: str, type_: str) -> str:
    event = OutboundEvent(
        type=type_,  # type: ignore[arg-type]
        subscription_id=sub, customer_id=f"cus_{sub}", campaign_started_at=datetime.now(UTC),
        occurred_at=datetime.now(UTC),
    )  # fmt: skip
    with store.write() as conn:
        outbox.enqueue(store, conn, event)
    return outbox.event_id(event)


@pytest.mark.devserver
@pytest.mark.parametrize("sig", SIGNALS)
def test_worker_delivers_the_outbox_then_stops_gracefully(devserver, tmp_path: Path, spawn: Spawner, sig) -> None:  # noqa: F811
    grace = 5.0
    receiver = Receiver(Webhook(OUTBOUND_SECRET)).start()
    db_url = f"sqlite:///{tmp_path / 'dunning.db'}"
    try:
        with Store.open(db_url) as store:
            ids = [emit(store, "sub_w", "campaign_started"), emit(store, "sub_w", "recovered")]
            env = clean_env(
                home=tmp_path / "home",
                database_url=db_url,
                temporal_address=devserver.settings.temporal_address,
                temporal_task_queue=f"tq-stop-{uuid.uuid4().hex}",
                outbound_urls=receiver.url,
                outbound_secret=OUTBOUND_SECRET,
                outbound_poll_seconds=0.2,
                shutdown_grace_seconds=grace,
            )
            worker = spawn("dunning-worker", [*dunning_command(), "worker"], env)
            log = spawn.log(worker)
            wait_until(lambda: receiver.ids() == ids, 30, lambda: f"outbox at the host: {receiver.ids()}\n{tail(log)}")
            assert receiver.unverified == [] and receiver.redeliveries == {}
            wait_until(lambda: logged(log, "worker running"), 10, lambda: tail(log))
            ids.append(emit(store, "sub_w", "exhausted"))  # while it runs: delivered too
            wait_until(lambda: receiver.ids() == ids, 10, lambda: f"the third event\n{tail(log)}")

            worker.send_signal(sig)
            assert exit_code(worker, grace + SLACK, log) == 0, tail(log)
            assert outbox.outbox_counts(store)["pending"] == 0
    finally:
        receiver.stop()
    for line in (f"{sig.name} received: worker stopping gracefully (up to {grace:g} s)", "worker stopping",
                 "outbox deliverer stopped", "worker stopped"):  # fmt: skip
        assert logged(log, line), f"{line!r} not in the worker log\n{tail(log)}"
    assert "Traceback" not in log.read_text(), tail(log, 60)


# --- dunning dev ---------------------------------------------------------------------------
@pytest.mark.devserver
def test_dunning_dev_stops_its_parts_in_order_on_sigterm(tmp_path: Path, spawn: Spawner) -> None:  # noqa: F811
    grace = 5.0
    home = tmp_path / "home"
    grpc = free_port()
    env = clean_env(
        home=home, temporal_address=f"127.0.0.1:{grpc}", smtp_port=free_port(), api_port=free_port(),
        ui_port=free_port(), shutdown_grace_seconds=grace,
    )  # fmt: skip
    dev = spawn("dunning-dev", [*dunning_command(), "dev"], env)
    log = spawn.log(dev)
    wait_until(
        lambda: dev.poll() is None and logged(log, "Ctrl-C stops everything"),
        90,
        lambda: f"`dunning dev` ready (exit {dev.poll()})\n{tail(log)}\n{tail(home / 'temporal.log')}",
    )
    temporal = {pid: cmd for pid, cmd in children(dev.pid).items() if "temporal" in cmd}
    spawn.adopted.update(temporal)
    assert temporal, children(dev.pid)

    dev.send_signal(signal.SIGTERM)
    assert exit_code(dev, 3 * grace + 10 + SLACK, log) == 0, tail(log)
    lines = [line.strip() for line in log.read_text().splitlines()]
    order = ["stopping API", "stopping worker", "stopping SMTP sink", "stopping Temporal dev server", "stopped"]
    assert [line for line in lines if line in order] == order, tail(log)
    assert not {pid for pid, cmd in temporal.items() if alive(pid) and cmdline(pid) == cmd}, "Temporal left running"
    assert not listening(grpc)
