"""Recorded histories replay against today's workflow code: a change that alters history
must go behind `workflow.patched` (DESIGN.md; one patch per change, named for it, retired
as the README says). Record a new version with `python -m tests.record_history vN`."""

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import PayloadConverter
from temporalio.worker import Replayer

from workflows.campaign import DunningCampaign

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_there_are_histories_to_replay():
    names = {p.stem for p in HISTORIES}
    # signals, Updates, the ladder, a superseded effect, the terminal action, a late payment
    assert {
        "v3_full_campaign", "v3_recovered_update_day_8", "v3_superseded_effect", "v3_signals_then_voided",
        "v3_recovered_after_cancel",
        # the outbox and ledger-skip patches; an outage caught up; a permanent failure
        "v4_full_campaign", "v4_outage_catch_up", "v4_needs_attention", "v4_recovered_after_cancel",
        # the end upserted as DunningOutcome (patch outcome-search-attribute)
        "v5_full_campaign", "v5_needs_attention", "v5_signals_then_voided", "v5_recovered_after_cancel",
        # shape 2: store-only steps as local activities, one upsert at the end, no patch markers
        "v6_full_campaign", "v6_outage_catch_up", "v6_needs_attention", "v6_recovered_after_cancel",
        "v6_superseded_effect",
    } <= names  # fmt: skip


def upserted(path: Path, name: str) -> list[str]:
    """Every value of search attribute `name` a recorded run upserted, in order."""
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    values = []
    for event in history.events:
        if event.HasField("upsert_workflow_search_attributes_event_attributes"):
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
            if name in fields:
                values.append(PayloadConverter.default.from_payloads([fields[name]])[0])
    return values


@pytest.mark.parametrize(
    ("stem", "outcome", "last_stage"),
    [
        ("v5_full_campaign", "exhausted", "exhausted"),
        ("v5_needs_attention", "recovered", "needs_attention"),  # the stage stays; the outcome says how it ended
        ("v5_signals_then_voided", "resolved", "resolved"),
        ("v5_recovered_after_cancel", "recovered_after_cancel", "recovered_after_cancel"),
    ],
)
def test_v5_histories_record_the_outcome_once_at_the_end(stem, outcome, last_stage):
    path = Path(__file__).parent / "histories" / f"{stem}.json"
    assert upserted(path, "DunningOutcome") == [outcome]
    assert upserted(path, "DunningStage")[-1] == last_stage  # stage values are the keys, as before v5
    assert upserted(path.with_name(stem.replace("v5_", "v4_") + ".json"), "DunningOutcome") == []


def _activities(path: Path) -> tuple[list[str], list[str]]:
    """(activity types scheduled, marker names) of a recorded run, in order."""
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    scheduled = [e.activity_task_scheduled_event_attributes.activity_type.name for e in history.events
                 if e.HasField("activity_task_scheduled_event_attributes")]  # fmt: skip
    markers = [e.marker_recorded_event_attributes.marker_name for e in history.events
               if e.HasField("marker_recorded_event_attributes")]  # fmt: skip
    return scheduled, markers


@pytest.mark.parametrize("name", ["full_campaign", "outage_catch_up", "superseded_effect", "recovered_after_cancel"])
def test_v6_runs_keep_store_steps_off_the_task_queue(name):
    """The lean shape: begin, consequences, skips and the end are local activities (a
    marker each, no task round trip), no patch marker, and stage and outcome are one upsert
    at the end; a v5 run of the same story scheduled them as activities."""
    store_only = {"begin_campaign", "change_entitlement", "record_skipped", "finish_campaign"}
    v6, markers = _activities(Path(__file__).parent / "histories" / f"v6_{name}.json")
    v5, _ = _activities(Path(__file__).parent / "histories" / f"v5_{name}.json")
    assert not store_only & set(v6) and store_only & set(v5)
    assert set(v6) <= {"send_step_email", "retry_payment", "terminal_action"}
    assert set(markers) == {"core_local_activity"}  # no core_patch
    path = Path(__file__).parent / "histories" / f"v6_{name}.json"
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    last = [e for e in history.events if e.HasField("upsert_workflow_search_attributes_event_attributes")][-1]
    assert set(last.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields) == {
        "DunningStage", "DunningOutcome"
    }


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_recorded_history_replays_without_nondeterminism(path):
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=[DunningCampaign], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None
