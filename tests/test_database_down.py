"""The database goes away under a running API, then comes back. SQLite: its directory is
moved away (no connection can open the file) and back. PostgreSQL: the API reaches the
server through a TCP proxy on a spare port that is closed (connections refused and cut)
and reopened. Meanwhile: read routes answer 503 JSON naming the database's kind (never
its URL), a webhook gets a 5xx (never a 2xx that would lose the event), and the
provider's redelivery once the database is back starts the campaign and its first notice
is sent."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from dunning.store.store import Store
from starter.client import DunningClient
from tests.api_helpers import api_client, api_settings, eventually, post, subs  # noqa: F401
from tests.temporal_fixtures import SkippingDunningClient
from tests.webhook_payloads import API_TOKEN, fake_request

BEARER = {"Authorization": f"Bearer {API_TOKEN}"}


class TcpProxy:
    """127.0.0.1:<spare port> -> target, in threads (the store's calls block)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


class Outage:
    """`store` for the API, and `down()` / `up()` for its database."""

    def __init__(self, db_url: str, store: Store) -> None:
        self.url = make_url(db_url)
        self.proxy: TcpProxy | None = None
        if self.url.get_backend_name() == "sqlite":
            self.store = store  # one file for the API and the worker: moving it away stops both
            self.directory = Path(self.url.database or "").parent
        else:
            self.proxy = TcpProxy((self.url.host or "127.0.0.1", self.url.port or 5432))
            self.proxy.up()
            self.store = Store(self.url.set(host="127.0.0.1", port=self.proxy.port).render_as_string(hide_password=False))

    def down(self) -> None:
        self.store.dispose()
        if self.proxy is not None:
            self.proxy.down()
        else:
            self.directory.rename(self.directory.with_name("moved-away"))

    def up(self) -> None:
        if self.proxy is not None:
            self.proxy.up()
        else:
            self.directory.with_name("moved-away").rename(self.directory)

    def close(self) -> None:
        if self.proxy is not None:
            self.store.dispose()
            self.proxy.down()


@pytest.fixture
def outage(db_url: str, store: Store) -> Iterator[Outage]:
    o = Outage(db_url, store)
    yield o
    o.close()


def unavailable(response, kind: str, secrets: list[str]) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == "database_unavailable"
    assert f"the {kind} database is unreachable" in body["message"]
    assert not [s for s in secrets if s in body["message"]], body["message"]  # no URL, host, path or db name


async def test_database_down_read_routes_are_503_json_webhooks_5xx_and_the_redelivery_is_processed(
    tenv, settings, store, dunning, mailbox, outage, subs
):
    now = (await tenv.get_current_time()).replace(microsecond=0)
    sub = subs("sub_dbdown")
    url = outage.url
    kind = "sqlite" if url.get_backend_name() == "sqlite" else "postgresql"
    secrets = [s for s in (url.database, url.host, url.username, str(url.port or "")) if s and s != "postgres"]

    api_engine = SkippingDunningClient(tenv, outage.store, settings)  # the API's client shares the API's store

    async def up() -> DunningClient:
        return api_engine

    request = fake_request("payment_failed", sub, now, customer_id="cus_dbdown", customer_email="db@example.com")
    async with api_client(api_settings(settings), outage.store, up, clock=tenv.get_current_time) as api:
        assert (await api.get("/metrics")).status_code == 200

        outage.down()
        unavailable(await api.get("/metrics.json"), kind, secrets)
        unavailable(await api.get("/v1/customers/cus_dbdown/attention", headers=BEARER), kind, secrets)
        unavailable(await api.get(f"/v1/subscriptions/{sub}/entitlement", headers=BEARER), kind, secrets)
        unavailable(await api.post(f"/v1/subscriptions/{sub}/payment-recovered", headers=BEARER), kind, secrets)
        delivered = await post(api, request)
        unavailable(delivered, kind, secrets)  # 5xx: the provider redelivers
        assert delivered.headers["Retry-After"]
        assert (await api.get("/readyz")).status_code == 503

        outage.up()
        redelivered = await post(api, request)
        assert redelivered.json() == {"status": "processed", "action": "start", "result": "started"}
        (notice,) = await eventually(mailbox.messages)
        assert (notice["To"], notice["X-Dunning-Step"]) == ("db@example.com", "first_notice")
        metrics = (await api.get("/metrics.json")).json()
        assert (metrics["dunning.inbox.pending"], metrics["dunning.inbox.parked"]) == (0, 0)
        counted = {(c["outcome"], c["reason"]): c["count"] for c in metrics["dunning.webhooks"]}
        assert counted[("unavailable", "database_unavailable")] == 1
        entitlement = await api.get(f"/v1/subscriptions/{sub}/entitlement", headers=BEARER)
        assert entitlement.status_code == 200 and entitlement.json()["in_dunning"] is True
