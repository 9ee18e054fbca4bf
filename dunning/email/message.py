"""Build the MIME message for one rendered dunning email, with a deterministic Message-ID."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from types import MappingProxyType

from dunning.email.render import RenderedEmail

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SAFE = re.compile(r"[A-Za-z0-9_-]")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,75}$")
_MESSAGE_ID = re.compile(r"^<[^<>\s@]+@[^<>\s@]+>$")
# Headers build_message sets itself; extra headers may not replace them.
_RESERVED = frozenset(
    {"from", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version", "sender"}
)
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


def _atom(value: str) -> str:
    """Encode a string as RFC 5322 atext without '.', injectively: characters other than
    [A-Za-z0-9_-] become '=XX' per UTF-8 byte ('=' itself included)."""
    out = []
    for ch in value:
        if _SAFE.match(ch):
            out.append(ch)
        else:
            out.extend(f"={b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def _domain(domain: str) -> str:
    labels = [re.sub(r"[^A-Za-z0-9-]", "-", label) for label in domain.strip().strip(".").split(".")]
    labels = [label for label in labels if label]
    return ".".join(labels) or "dunning.invalid"


def _micros(moment: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC (never local time)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def message_id_for(subscription_id: str, campaign_started_at: datetime, step_key: str, domain: str) -> str:
    """`<dunning.{sub}.{unix-micros}.{step}@{domain}>`: the same for the same campaign step,
    so a resend after a crash carries the same id and recipients' servers can deduplicate."""
    if not subscription_id or not step_key:
        raise ValueError("message_id_for: subscription_id and step_key must be non-empty")
    left = f"dunning.{_atom(subscription_id)}.{_micros(campaign_started_at)}.{_atom(step_key)}"
    return f"<{left}@{_domain(domain)}>"


def domain_of(address: str) -> str:
    """The domain part of an address like 'Billing <billing@example.com>' (for Message-IDs)."""
    match = re.search(r"@([^>\s]+)", address)
    return _domain(match.group(1)) if match else "dunning.invalid"


def build_message(
    *,
    sender: str,
    to: str,
    rendered: RenderedEmail,
    message_id: str,
    headers: Mapping[str, str] = _NO_HEADERS,
    date: datetime | None = None,
) -> EmailMessage:
    """multipart/alternative (text/plain, then text/html) with From, To, Subject, Date,
    Message-ID, Auto-Submitted and the given extra headers (e.g. X-Dunning-Subscription)."""
    if not _MESSAGE_ID.match(message_id):
        raise ValueError(f"message_id = {message_id!r}: must look like <left@right>")
    for value in (sender, to, rendered.subject, message_id, *headers.values()):
        if "\r" in value or "\n" in value:
            raise ValueError(f"header value {value!r}: must not contain line breaks")
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = rendered.subject
    msg["Date"] = format_datetime((date or datetime.now(UTC)).astimezone(UTC), usegmt=True)
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation auto-replies
    for name, value in headers.items():
        if not _HEADER_NAME.match(name) or name.lower() in _RESERVED or name.lower().startswith("content-"):
            raise ValueError(f"extra header {name!r}: not allowed")
        if name.lower() == "auto-submitted":
            msg.replace_header(name, value)
        else:
            msg[name] = value
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    return msg
