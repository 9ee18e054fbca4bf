"""One structured log line per campaign event, ids and bounded words only (never an email
address or a name), so the terminal running `dunning dev` or `dunning worker` shows what
each campaign does:

    campaign event=started subscription=sub_1 campaign=2026-11-23T00:48:39Z provider=fake mode=live
    campaign event=step_sent subscription=sub_1 campaign=... step=first_notice sends=1
    campaign event=retry subscription=sub_1 campaign=... step=retry@... result=declined decline_class=soft
    campaign event=consequence subscription=sub_1 campaign=... level=limited
    campaign event=terminal subscription=sub_1 campaign=... action=cancel result=canceled
    campaign event=ended subscription=sub_1 campaign=... outcome=recovered

Logger `dunning.campaign`, level INFO. Values are quoted when they hold spaces.
"""

from __future__ import annotations

import logging
from datetime import datetime

from dunning.scrub import scrub

log = logging.getLogger("dunning.campaign")


def _value(value: object) -> str:
    text = value.isoformat(timespec="seconds") if isinstance(value, datetime) else str(value)
    text = scrub(text, 120).replace("\n", " ")
    return f'"{text}"' if " " in text or not text else text


def campaign_event(event: str, subscription_id: str, campaign_started_at: datetime, **fields: object) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    parts = [f"event={event}", f"subscription={_value(subscription_id)}", f"campaign={_value(campaign_started_at)}"]
    parts += [f"{k}={_value(v)}" for k, v in fields.items() if v is not None]
    log.info("campaign %s", " ".join(parts))
