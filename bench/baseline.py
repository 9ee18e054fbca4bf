"""The baseline every benchmark compares the engine against: the minimal Temporal program
that performs the same customer-visible effects as a default campaign. One no-op activity
per email, charge, consequence change and terminal action, on the same timers (one per
distinct moment, as the engine sleeps only when the next action is in the future), and
nothing else: no store, no search attributes, no plan activity, no end activity."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from temporalio import activity, workflow

if TYPE_CHECKING:  # the workflow sandbox re-imports this module per run: nothing heavy at import
    from dunning.config import Settings

BARE_WORKFLOW = "BareCampaign"
TIMEOUT = timedelta(seconds=60)


@dataclass
class BareInput:
    day_seconds: float
    actions: list[tuple[float, str]]  # (day, kind), in order


@activity.defn(name="bare_effect")
async def bare_effect(kind: str) -> str:
    return kind


@workflow.defn(name=BARE_WORKFLOW)
class BareCampaign:
    def __init__(self) -> None:
        self._paid = False
        self._done = 0

    @workflow.signal
    def payment_failed(self, _event: str) -> None:
        """What signal-with-start delivers in the ingest baseline."""

    @workflow.query
    def done(self) -> int:
        """How many effects it has performed (bench.memory: day 0 is done at 1)."""
        return self._done

    @workflow.run
    async def run(self, inp: BareInput) -> int:
        start = workflow.now()
        for day, kind in inp.actions:
            delay = start + timedelta(seconds=day * inp.day_seconds) - workflow.now()
            if delay > timedelta(0):
                await workflow.sleep(delay)
            await workflow.execute_activity(bare_effect, kind, start_to_close_timeout=TIMEOUT)
            self._done += 1
        return self._done


def actions_for(settings: Settings, decline_class: str = "soft") -> list[tuple[float, str]]:
    """The default campaign's customer-visible effects for a decline class that never pays,
    in the order the engine does them: emails, engine retries, consequence changes, then
    the terminal action at grace_days (from the same settings the engine runs on)."""
    c = settings.campaign
    out: list[tuple[float, int, str]] = [(s.after_days, 0, "email") for s in c.steps]
    if c.providers["fake"].retries == "engine":
        out += [(d, 1, "charge") for d in c.retries[decline_class].days]
    levels = sorted({r.min_days for r in c.consequences if r.min_days > 0})
    out += [(d, 2, "consequence") for d in levels]
    out.append((c.grace_days, 3, "terminal"))
    return [(day, kind) for day, _, kind in sorted(out)]
