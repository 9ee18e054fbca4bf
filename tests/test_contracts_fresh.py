"""A worker process decodes a campaign's input before anything else touched the models:
the input must be fully defined on import (a forward reference once failed every
workflow task of a fresh worker while tests, which had touched the models, passed)."""

import subprocess
import sys
from datetime import UTC, datetime

from dunning.contracts import BillingEvent, CampaignInput, EventKind

CODE = """
import sys
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from dunning.contracts import CampaignInput
import dunning.contracts as contracts
from pydantic import BaseModel
models = [v for v in vars(contracts).values() if isinstance(v, type) and issubclass(v, BaseModel)
          and v.__module__ == contracts.__name__]
incomplete = [m.__name__ for m in models if not m.__pydantic_complete__]
assert not incomplete, f"not fully defined on import: {incomplete}"
payload = Payload(metadata={"encoding": b"json/plain"}, data=sys.stdin.buffer.read())
(inp,) = pydantic_data_converter.payload_converter.from_payloads([payload], [CampaignInput])
print(inp.event.event_id, inp.shape)
"""


def test_a_fresh_process_decodes_a_campaign_input_that_carries_its_event():
    at = datetime(2026, 1, 1, tzinfo=UTC)
    event = BillingEvent(provider="fake", event_id="e1", event_type="fake.payment_failed", kind=EventKind.payment_failed,
                         occurred_at=at, subscription_id="sub_1", customer_id="cus_1")  # fmt: skip
    inp = CampaignInput(subscription_id="sub_1", customer_id="cus_1", failed_at=at, shape=2, event=event)
    done = subprocess.run([sys.executable, "-c", CODE], input=inp.model_dump_json().encode(), capture_output=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().split() == ["e1", "2"]
