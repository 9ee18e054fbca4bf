"""The receive path's last write is a group commit: dispatches finishing together share one
transaction, yet each caller returns only once its own row is committed, with its own
answer; a failed commit reaches every caller of that batch. SQLite and PostgreSQL."""

import asyncio

from starter.inbox_marks import mark_dispatched
from tests.test_store_inbox import event, receive


async def test_concurrent_marks_share_commits_and_each_gets_its_own_answer(store, monkeypatch):
    for n in range(20):
        receive(store, event(f"evt_m{n}", subscription_id=f"sub_m{n}"))
    batches: list[int] = []
    original = store.inbox_mark_dispatched_many

    def counted(marks):
        batches.append(len(marks))
        return original(marks)

    monkeypatch.setattr(store, "inbox_mark_dispatched_many", counted)
    marks = [mark_dispatched(store, "stripe", f"evt_m{n}", "started") for n in range(20)]
    marks.append(mark_dispatched(store, "stripe", "evt_never_received", "started"))
    answers = await asyncio.gather(*marks)

    assert answers == [True] * 20 + [False]  # a row that is not 'received' is not marked
    assert sum(batches) == 21 and len(batches) < 21  # grouped, every mark written once
    assert all(store.inbox_get("stripe", f"evt_m{n}").status == "dispatched" for n in range(20))
    assert await mark_dispatched(store, "stripe", "evt_m0", "again") is False  # already dispatched


async def test_a_failed_commit_reaches_every_caller_of_its_batch(store, monkeypatch):
    receive(store, event("evt_f1", subscription_id="sub_f1"))

    def down(marks):
        raise RuntimeError("database went away")

    monkeypatch.setattr(store, "inbox_mark_dispatched_many", down)
    results = await asyncio.gather(*(mark_dispatched(store, "stripe", "evt_f1", "started") for _ in range(3)),
                                   return_exceptions=True)  # fmt: skip
    assert [type(r) for r in results] == [RuntimeError] * 3
    monkeypatch.undo()
    assert store.inbox_get("stripe", "evt_f1").status == "received"  # nothing half-written: the sweep redoes it
    assert await mark_dispatched(store, "stripe", "evt_f1", "started") is True  # the next batch commits
