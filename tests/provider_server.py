"""A recording HTTP server on 127.0.0.1 for provider and outbound tests.

The stripe library (api_base), the braintree library (a custom Environment from
`braintree_api_base`) and outbound events (`outbound_urls`) talk to it instead of the
network. It records each request (method, path, query, body, headers) and answers what
the test scripted, in each provider's own wire format (Stripe JSON, Braintree XML).
Use the `server` fixture (import it into the test module).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from braintree.util.xml_util import XmlUtil


@dataclass
class Route:
    method: str
    pattern: str
    status: int
    body: str
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    path: str  # without the query
    query: dict[str, list[str]]
    body: str
    headers: dict[str, str]  # lower-cased names

    @property
    def xml(self) -> dict[str, Any]:
        return XmlUtil.dict_from_xml(self.body)


class Recorder:
    def __init__(self, base: str) -> None:
        self.base = base
        self.routes: list[Route] = []
        self.requests: list[Request] = []
        self._lock = threading.Lock()

    def json(self, method: str, pattern: str, status: int, body: Any, **headers: str) -> None:
        self.routes.insert(0, Route(method, pattern, status, json.dumps(body), "application/json", headers))

    def xml(self, method: str, pattern: str, status: int, body: str) -> None:
        self.routes.insert(0, Route(method, pattern, status, body, "application/xml; charset=utf-8"))

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests]

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)


def _handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            url = urlsplit(self.path)
            recorder.record(
                Request(self.command, url.path, parse_qs(url.query), body, {k.lower(): v for k, v in self.headers.items()})
            )
            route = next(
                (r for r in recorder.routes if r.method == self.command and re.fullmatch(r.pattern, url.path)), None
            )
            if route is None:
                route = Route(self.command, "", 599, "no route for this request", "text/plain")
            data = route.body.encode()
            self.send_response(route.status)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in route.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _handle

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[Recorder]:
    recorder = Recorder("")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(recorder))
    recorder.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- Braintree XML answers ----------------------------------------------------------


def transaction_xml(
    status: str, code: str, response_type: str, txn_id: str = "txn_1", subscription_id: str = "sub_bt"
) -> str:
    return (
        f"<transaction><id>{txn_id}</id><status>{status}</status><type>sale</type>"
        f"<amount>12.50</amount><currency-iso-code>USD</currency-iso-code>"
        f"<subscription-id>{subscription_id}</subscription-id>"
        f"<processor-response-code>{code}</processor-response-code>"
        f"<processor-response-text>text</processor-response-text>"
        f"<processor-response-type>{response_type}</processor-response-type></transaction>"
    )


def error_xml(message: str, *, inner: str = "", errors: str = "") -> str:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><api-error-response><errors><errors type="array"/>{errors}</errors>'
        f"<message>{message}</message>{inner}</api-error-response>"
    )


def validation_error(obj: str, code: str, message: str) -> str:
    return (
        f'<{obj}><errors type="array"><error><code>{code}</code><attribute type="symbol">status</attribute>'
        f"<message>{message}</message></error></errors></{obj}>"
    )
