"""A host app's webhook endpoint on 127.0.0.1, as a host would write it: every request is
verified with `standardwebhooks.Webhook(secret).verify(body, headers)`, and a verified
event is recorded once per `webhook-id` (a redelivery is counted, not recorded again).

`answer(payload) -> status` scripts the reply (default 200); `stop()` closes the port
(the deliverer then gets connection refused) and `start()` opens the same port again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    webhook_id: str
    payload: dict[str, Any]
    headers: dict[str, str]


@dataclass
class Receiver:
    webhook: Webhook
    port: int = 0
    answer: Callable[[dict[str, Any]], int] = lambda payload: 200
    events: list[Received] = field(default_factory=list)  # accepted (2xx), first copy of each id
    redeliveries: dict[str, int] = field(default_factory=dict)  # id -> 2xx copies beyond the first
    refused: int = 0  # non-2xx answers given
    unverified: list[str] = field(default_factory=list)  # why a request failed verification
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/dunning"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    payload = receiver.webhook.verify(body, headers)
                except WebhookVerificationError as err:
                    with receiver._lock:
                        receiver.unverified.append(str(err))
                    self._reply(400, b"bad signature")
                    return
                status = receiver.answer(payload)
                with receiver._lock:
                    if 200 <= status < 300:
                        wid = headers["webhook-id"]
                        if any(e.webhook_id == wid for e in receiver.events):
                            receiver.redeliveries[wid] = receiver.redeliveries.get(wid, 0) + 1
                        else:
                            receiver.events.append(Received(wid, payload, headers))
                    else:
                        receiver.refused += 1
                # a body a host might send back: it must never reach the outbox's last_error
                self._reply(status, b'{"error": "unavailable", "contact": "ops-person@example.com"}')

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ids(self, subscription_id: str | None = None) -> list[str]:
        with self._lock:
            return [e.webhook_id for e in self.events if subscription_id in (None, e.payload["subscription_id"])]
