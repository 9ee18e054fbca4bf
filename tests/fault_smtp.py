"""An SMTP sink for fault-injection tests: a real aiosmtpd server on loopback that records
every message it stores (by Message-ID) and can misbehave on purpose, one scripted fault
at a time:

    sink = FaultSink()                       # a port is reserved; nothing listens yet
    sink.start()                             # listening; sink.stop() / sink.start() again: down, up
    hold = sink.hold(store=True, match=step("first_notice"))
    hold.started.wait(30)                    # a DATA is in flight and its reply withheld
    ...kill the worker...                    # the client drops: hold.dropped is set
    sink.delay_reply(4.0, times=2)           # store, then answer 250 only after 4 s
    sink.copies(sub, "first_notice")         # the Message-IDs stored for that step, in order

Faults act inside `handle_DATA`, i.e. after the whole message arrived and before the final
reply: the window where the client cannot know whether the message was delivered.
`store=True` stores the message before withholding the reply (a server that committed it);
`store=False` stores it only if the reply is ever sent (a server that had not committed it
when the client vanished). aiosmtpd cancels the handler when the client's connection is
lost, which is how `dropped` is seen.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from aiosmtpd.controller import Controller

Match = Callable[[EmailMessage], bool]


def step(key: str, subscription: str | None = None) -> Match:
    """Match the messages of one campaign step (and subscription, when given)."""
    return lambda m: (
        m["X-Dunning-Step"] == key and (subscription is None or m["X-Dunning-Subscription"] == subscription)
    )


def any_message(_m: EmailMessage) -> bool:
    return True


@dataclass(frozen=True)
class Stored:
    message_id: str
    subscription: str | None
    step: str | None
    at: float  # time.monotonic() when stored


@dataclass
class Fault:
    """One scripted misbehaviour for the next `times` matching messages."""

    kind: str  # "hold" | "delay"
    match: Match
    times: int
    store: bool = True  # hold: store before withholding the reply (else only if released)
    seconds: float = 0.0  # delay: how long the 250 is withheld after storing
    started: threading.Event = field(default_factory=threading.Event)  # a message is being held/delayed
    dropped: threading.Event = field(default_factory=threading.Event)  # the client left before the reply
    drops: int = 0
    hits: int = 0
    _release: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        """A held message gets its reply now (and is stored, if it was not yet)."""
        self._release.set()


class _Handler:
    def __init__(self, sink: FaultSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode()
        msg = BytesParser(policy=policy.default).parsebytes(raw)
        fault = self.sink._take(msg)
        if fault is None or fault.store:
            self.sink._store(msg)
        if fault is None:
            return "250 Message accepted for delivery"
        fault.started.set()
        try:
            if fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
            else:
                while not fault._release.is_set():
                    await asyncio.sleep(0.02)
        except asyncio.CancelledError:  # the connection was lost: the client never gets a reply
            fault.drops += 1
            fault.dropped.set()
            raise
        if not fault.store:
            self.sink._store(msg)
        return "250 Message accepted for delivery"


def reserve_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class FaultSink:
    """A loopback SMTP server with a fixed port (so it can go down and come back on it)."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or reserve_port(host)
        self.stored: list[Stored] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    # --- up and down --------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> FaultSink:
        if self._controller is None:
            controller = Controller(_Handler(self), hostname=self.host, port=self.port, ready_timeout=5.0)
            controller.start()
            self._controller = controller
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            for fault in self.faults:  # let held handlers finish so the loop can stop
                fault.release()
            controller.stop()

    def __enter__(self) -> FaultSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- faults -------------------------------------------------------------------------
    def hold(self, *, store: bool, match: Match = any_message, times: int = 1) -> Fault:
        """Withhold the reply to the next `times` matching DATA until `release()` or the
        client drops the connection."""
        return self._add(Fault("hold", match, times, store=store))

    def delay_reply(self, seconds: float, *, match: Match = any_message, times: int = 1) -> Fault:
        """Store the next `times` matching messages, then reply 250 only after `seconds`."""
        return self._add(Fault("delay", match, times, seconds=seconds))

    def _add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def _take(self, msg: EmailMessage) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.hits < fault.times and fault.match(msg):
                    fault.hits += 1
                    return fault
        return None

    def _store(self, msg: EmailMessage) -> None:
        mid = (msg["Message-ID"] or "").strip()  # a long id is folded onto its own line
        with self._lock:
            self.stored.append(Stored(mid, msg["X-Dunning-Subscription"], msg["X-Dunning-Step"], time.monotonic()))

    # --- what arrived -------------------------------------------------------------------
    def messages(self, subscription: str | None = None) -> list[Stored]:
        with self._lock:
            return [m for m in self.stored if subscription is None or m.subscription == subscription]

    def copies(self, subscription: str, step_key: str) -> list[str]:
        """Message-IDs stored for one step, in arrival order (one per copy)."""
        return [m.message_id for m in self.messages(subscription) if m.step == step_key]

    def steps(self, subscription: str) -> list[str]:
        """Steps in arrival order, a step once however many copies arrived."""
        return list(dict.fromkeys(m.step or "" for m in self.messages(subscription)))

    def summary(self, subscription: str | None = None) -> str:
        counts = Counter((m.step, m.message_id) for m in self.messages(subscription))
        return ", ".join(f"{s} x{n} {mid}" for (s, mid), n in counts.items()) or "(nothing stored)"
