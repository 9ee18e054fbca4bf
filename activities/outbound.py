"""Outbound events to host apps: signed (HMAC-SHA256) JSON POSTs, one activity call per
event, retried by the workflow's policy. Hosts dedupe by the X-Dunning-Event-Id header."""

from __future__ import annotations

import time

import httpx
from temporalio import activity

from dunning.config import Settings
from dunning.contracts import OutboundEvent
from dunning.signing import sign


def event_id(event: OutboundEvent) -> str:
    key = event.data.get("key") or ""
    return f"{event.subscription_id}:{int(event.campaign_started_at.timestamp() * 1e6)}:{event.type}:{key}"


class OutboundActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @activity.defn(name="emit_outbound_event")
    async def emit(self, event: OutboundEvent) -> int:
        """POST the event to every configured host; returns how many accepted it."""
        urls = self.settings.outbound_urls
        if not urls:
            return 0
        body = event.model_dump_json().encode()
        headers = {
            "Content-Type": "application/json",
            "X-Dunning-Event-Id": event_id(event),
            "X-Dunning-Event-Type": event.type,
            "X-Dunning-Signature": sign(body, self.settings.outbound_secret or "", int(time.time())),
        }
        async with httpx.AsyncClient(timeout=10) as http:
            for url in urls:
                response = await http.post(url, content=body, headers=headers)
                if response.status_code >= 300:
                    raise RuntimeError(f"outbound {event.type} to {url}: HTTP {response.status_code}")
        return len(urls)
