"""A loopback HTTP receiver that can go down and come back on the same port: the
recording server of tests/provider_server.py (scripted routes, every request kept) with a
fixed port and start/stop, for outbound-event receivers and provider APIs in the
fault-injection suite.

    hooks = Receiver()                        # port reserved, nothing listens: "down"
    hooks.recorder.json("POST", "/hook", 200, {})
    hooks.start(); ...; hooks.stop()          # up, down again
    hooks.recorder.requests                   # method, path, body, headers (lower-cased)
"""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer

from tests.fault_smtp import reserve_port
from tests.provider_server import Recorder, _handler


class Receiver:
    def __init__(self, port: int = 0) -> None:
        self.port = port or reserve_port()
        self.recorder = Recorder(self.base)
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self) -> Receiver:
        if self._httpd is None:
            httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self.recorder))
            threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self._httpd = httpd
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
