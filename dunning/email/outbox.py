"""Dev SMTP sink: an aiosmtpd server that writes every message it receives to a directory
as `<UTC timestamp>-<message id>.eml` (atomically: temp file + rename)."""

from __future__ import annotations

import os
import re
import socket
import tempfile
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller

_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=-]+")
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _file_stem(content: bytes, now: datetime) -> str:
    stamp = now.strftime("%Y%m%dT%H%M%S.%fZ")
    head = content.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    match = _MESSAGE_ID.search(head)
    raw = match.group(1).decode("ascii", "replace") if match else ""
    name = _UNSAFE.sub("_", raw.strip().strip("<>")).strip("._")[:120] or "no-message-id"
    return f"{stamp}-{name}"


def write_eml(directory: Path, content: bytes, now: datetime | None = None) -> Path:
    """Write one message atomically; never overwrites (a suffix is added on a clash)."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = _file_stem(content, now or datetime.now(UTC))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".incoming-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        for n in range(1000):
            target = directory / (f"{stem}.eml" if n == 0 else f"{stem}-{n}.eml")
            try:
                os.link(tmp, target)  # atomic and fails if the target exists
            except FileExistsError:
                continue
            except OSError:  # filesystem without hard links
                if target.exists():
                    continue
                os.replace(tmp, target)
            return target
        raise FileExistsError(f"{directory / stem}.eml: too many messages with this name")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _Handler:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        try:
            write_eml(self.directory, content)
        except OSError as err:
            return f"451 Requested action aborted: cannot store message ({type(err).__name__})"
        return "250 Message accepted for delivery"


class OutboxSink:
    """SMTP server on (host, port) storing each message as an .eml file in `directory`.

    port=0 picks a free port when started; read it back from `.port`.
    """

    def __init__(self, directory: Path | str, host: str = "127.0.0.1", port: int = 1025) -> None:
        self.directory = Path(directory)
        self.host = host
        self._requested_port = port
        self._port: int | None = port or None
        self._controller: Controller | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("OutboxSink: port is chosen when the sink starts")
        return self._port

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> OutboxSink:
        if self._controller is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        port = self._requested_port or _free_port(self.host)
        controller = Controller(
            _Handler(self.directory),
            hostname=self.host,
            port=port,
            ready_timeout=5.0,
            enable_SMTPUTF8=True,
        )
        controller.start()
        self._controller, self._port = controller, port
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> OutboxSink:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def read_outbox(directory: Path | str) -> list[EmailMessage]:
    """Every stored message, parsed, sorted by file name (i.e. by arrival time)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    parser = BytesParser(policy=policy.default)
    messages = []
    for path in sorted(directory.glob("*.eml")):
        with path.open("rb") as f:
            messages.append(parser.parse(f))  # type: ignore[arg-type]
    return messages
