"""`dunning worker` refuses to run campaigns in a namespace that lacks one of the engine's
search attributes (a campaign would get stuck at its first upsert of it), naming them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from temporalio.service import RPCError, RPCStatusCode

from worker import app, search_attributes


class Operator:
    def __init__(self, custom: dict[str, int] | None = None, error: RPCStatusCode | None = None) -> None:
        self.custom, self.error = custom or {}, error

    async def list_search_attributes(self, request):
        if self.error is not None:
            raise RPCError("no", self.error, b"")
        return SimpleNamespace(custom_attributes=self.custom, system_attributes={"WorkflowType": 2})


def client(operator: Operator) -> SimpleNamespace:
    return SimpleNamespace(operator_service=operator)


async def test_missing_names_what_the_namespace_lacks() -> None:
    everything = dict.fromkeys(search_attributes.SEARCH_ATTRIBUTES, 2)
    assert await search_attributes.missing(client(Operator(everything)), "default") == []
    without = {k: v for k, v in everything.items() if k != "DunningOutcome"}
    assert await search_attributes.missing(client(Operator(without)), "default") == ["DunningOutcome"]
    assert await search_attributes.missing(client(Operator(error=RPCStatusCode.UNIMPLEMENTED)), "default") == []
    with pytest.raises(RPCError):
        await search_attributes.missing(client(Operator(error=RPCStatusCode.UNAVAILABLE)), "default")


async def test_the_worker_refuses_to_start_without_them(settings, monkeypatch) -> None:
    async def connect(_settings):
        return client(Operator({"DunningStage": 2}))

    started = []
    monkeypatch.setattr(app, "connect", connect)
    monkeypatch.setattr(app, "serve_worker", lambda *a, **k: started.append(a))
    with pytest.raises(RuntimeError, match="lacks the search attribute.*DunningOutcome.*register them first"):
        await app.run_worker(settings)
    assert started == []
