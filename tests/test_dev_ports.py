"""`dunning dev` and its ports and child: a taken port is refused before anything starts
(the message names it); a SIGKILLed `dunning dev` leaves no Temporal server behind.

The real `dunning` command in its own session, with every port picked free (helpers from
tests/test_devserver.py), so these run beside a developer's own `dunning dev`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dunning.config import load_settings
from starter.dev import PortTaken, check_ports, dev_ports, port_problems
from tests.test_devserver import (
    Spawner,
    alive,
    children,
    clean_env,
    cmdline,
    dunning_command,
    free_port,
    listening,
    spawn,  # noqa: F401  (a fixture)
    tail,
    wait_until,
)

ROLES = {  # the env var of each port, and the words the message names it with
    "temporal_address": "Temporal gRPC",
    "ui_port": "Temporal UI",
    "api_port": "API",
    "smtp_port": "SMTP sink",
}


def ports_env(home: Path) -> tuple[dict[str, int], dict[str, str]]:
    ports = {name: free_port() for name in ROLES}
    values: dict[str, object] = {name: port for name, port in ports.items()}
    values["temporal_address"] = f"127.0.0.1:{ports['temporal_address']}"
    return ports, clean_env(home=home, day_seconds=1, **values)


@contextlib.contextmanager
def occupied(port: int) -> Iterator[socket.socket]:
    """Something else listening on 127.0.0.1:`port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        yield s


# --- pure: the check itself ------------------------------------------------------------------
def test_port_problems_name_a_taken_port_and_one_set_twice(tmp_path: Path) -> None:
    port = free_port()
    with occupied(port):
        problems = port_problems([("Temporal UI (DUNNING_UI_PORT)", "127.0.0.1", port)])
    assert problems == [f"port {port} on 127.0.0.1 for Temporal UI (DUNNING_UI_PORT) is already in use"]
    assert port_problems([("Temporal UI (DUNNING_UI_PORT)", "127.0.0.1", port)]) == []  # closed again: free

    same = free_port()
    settings = load_settings(home=tmp_path, temporal_address=f"127.0.0.1:{free_port()}", ui_port=same, api_port=same)
    assert [what.split(" (")[0] for what, _, _ in dev_ports(settings)] == list(ROLES.values())
    with pytest.raises(PortTaken, match=f"port {same} is set for both Temporal UI .* and API"):
        check_ports(settings)


# --- the real command: refused before anything starts ---------------------------------------
@pytest.mark.parametrize("taken", list(ROLES))
def test_dunning_dev_refuses_a_taken_port_and_starts_nothing(taken: str, tmp_path: Path, spawn: Spawner) -> None:  # noqa: F811
    home = tmp_path / "home"
    ports, env = ports_env(home)
    with occupied(ports[taken]):
        dev = spawn("dunning-dev", [*dunning_command(), "dev"], env)
        try:
            code = dev.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`dunning dev` still running with port {ports[taken]} taken\n{tail(spawn.log(dev))}")
    out = spawn.log(dev).read_text(errors="replace")
    assert code != 0, out
    assert f"port {ports[taken]} " in out and ROLES[taken] in out and "already in use" in out, out
    assert "Nothing was started" in out, out
    assert not home.exists(), "nothing is created before the ports are checked"  # no database, no temporal.db
    assert not any(listening(p) for name, p in ports.items() if name != taken), "something was started"


# --- the real command: SIGKILLed, its Temporal server goes too ---------------------------------
@pytest.mark.devserver
def test_sigkilled_dunning_dev_leaves_no_temporal_server(tmp_path: Path, spawn: Spawner) -> None:  # noqa: F811
    home = tmp_path / "home"
    ports, env = ports_env(home)
    dev = spawn("dunning-dev", [*dunning_command(), "dev"], env)
    log = spawn.log(dev)

    def diagnostics() -> str:
        return f"{tail(log)}\n{tail(home / 'temporal.log')}"

    def ready() -> bool:
        if dev.poll() is not None:
            pytest.fail(
                f"`dunning dev` exited with {dev.returncode} before it was ready\n{diagnostics()}", pytrace=False
            )
        return "Ctrl-C stops everything" in log.read_text(errors="replace")

    wait_until(ready, 90, lambda: f"`dunning dev` never got ready\n{diagnostics()}")
    temporal = {pid: cmd for pid, cmd in children(dev.pid).items() if "temporal" in cmd}
    spawn.adopted.update(temporal)  # its own session: killed at teardown should this test fail
    assert temporal, f"`dunning dev` has no Temporal server child: {children(dev.pid)}"
    assert listening(ports["temporal_address"])

    os.kill(dev.pid, signal.SIGKILL)  # this process only: no handler, no cleanup runs
    dev.wait(timeout=10)
    killed_at = time.monotonic()

    def gone() -> bool:
        return not any(alive(pid) and cmdline(pid) == cmd for pid, cmd in temporal.items())

    wait_until(gone, 10, lambda: f"Temporal server still running after `dunning dev` was SIGKILLed: {temporal}")
    assert time.monotonic() - killed_at < 10
    wait_until(lambda: not listening(ports["temporal_address"]), 5, lambda: "something still listens on the gRPC port")
