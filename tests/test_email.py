"""Email: templates, message building, SMTP sending, and the dev outbox sink."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from dunning.config import BUILTIN_TEMPLATES, known_templates
from dunning.email.message import build_message, domain_of, message_id_for
from dunning.email.outbox import OutboxSink, read_outbox, write_eml
from dunning.email.render import RenderedEmail, TemplateNotFound, longdate, render
from dunning.email.sender import SmtpError, send_message

STARTED = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
ALL_TEMPLATES = ["first_notice", "reminder", "final_notice", "update_payment_method", "authentication_required"]


def context(**overrides: Any) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "customer_name": "Ada Lovelace",
        "company_name": "Acme Cloud",
        "support_email": "help@acme.example",
        "plan_name": "Pro (monthly)",
        "step_key": "first_notice",
        "campaign_started_at": STARTED,
        "update_payment_url": "https://billing.example.com/update?t=tok1&u=2",
        "grace_ends_at": STARTED + timedelta(days=14),
        "amount_due": "$49.00",
        "first_notice_at": STARTED,
    }
    ctx.update(overrides)
    return ctx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_parts(msg: EmailMessage) -> tuple[str, str]:
    text = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def a_message(step: str = "first_notice", to: str = "ada@example.org") -> EmailMessage:
    rendered = render(BUILTIN_TEMPLATES, step, context(step_key=step))
    return build_message(
        sender="Billing <billing@example.com>",
        to=to,
        rendered=rendered,
        message_id=message_id_for("sub_ABC123", STARTED, step, "example.com"),
        headers={"X-Dunning-Subscription": "sub_ABC123", "X-Dunning-Step": step},
    )


# --- render -----------------------------------------------------------------------


def test_default_steps_templates_are_known() -> None:
    assert set(ALL_TEMPLATES) <= set(known_templates(BUILTIN_TEMPLATES))


@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_render_default_templates(name: str) -> None:
    out = render(BUILTIN_TEMPLATES, name, context(step_key=name))
    assert isinstance(out, RenderedEmail)
    for part in (out.subject, out.text, out.html):
        assert part.strip()
        assert "Acme Cloud" in part and "sub_ABC123" not in part  # the company, never an internal id
    assert "\n" not in out.subject
    assert "Ada Lovelace" in out.text and "Ada Lovelace" in out.html
    assert "$49.00" in out.text and "$49.00" in out.html
    assert "https://billing.example.com/update?t=tok1&u=2" in out.text
    assert 'href="https://billing.example.com/update?t=tok1&amp;u=2"' in out.html
    assert "<html" in out.html and "<html" not in out.text


def test_final_notice_says_cancelled_at_end_of_grace() -> None:
    out = render(BUILTIN_TEMPLATES, "final_notice", context())
    assert "15 March 2025" in out.subject
    assert "cancelled at the" in out.text and "end of the grace period" in out.text
    assert "15 March 2025" in out.text and "15 March 2025" in out.html


@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_render_optional_values_missing(name: str) -> None:
    out = render(
        BUILTIN_TEMPLATES, name, context(customer_name=None, update_payment_url=None, amount_due=None, support_email=None,
                plan_name=None)
    )
    assert out.text.startswith("Hi there,")
    assert "Hi there," in out.html
    assert "None" not in out.text + out.html + out.subject
    assert "href=" not in out.html and "http" not in out.text
    assert "Amount due" not in out.text + out.html


@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_html_escapes_customer_name(name: str) -> None:
    out = render(BUILTIN_TEMPLATES, name, context(customer_name='<script>alert("x")</script>'))
    assert "<script>" not in out.html
    assert "&lt;script&gt;" in out.html
    assert '<script>alert("x")</script>' in out.text  # plain text is not HTML


def test_subject_is_one_line(tmp_path: Path) -> None:
    for part, body in {"txt": "t {{ subscription_id }}", "html": "<p>{{ subscription_id }}</p>"}.items():
        (tmp_path / f"x.{part}.j2").write_text(body)
    (tmp_path / "x.subject.j2").write_text("  Hello\n{{ subscription_id }}\r\n  again \n")
    out = render(tmp_path, "x", {"subscription_id": "s\nBcc: evil@example.com"})
    assert out.subject == "Hello s Bcc: evil@example.com again"


@pytest.mark.parametrize(
    "name",
    ["nope", "../first_notice", "first_notice/../reminder", "/etc/passwd", "First_Notice", "", "_layout",
     "first_notice.txt", "a" * 65, "first notice"],
)
def test_unknown_or_unsafe_template_refused(name: str) -> None:
    with pytest.raises(TemplateNotFound) as err:
        render(BUILTIN_TEMPLATES, name, context())
    assert isinstance(err.value, ValueError)
    assert repr(name) in str(err.value)


def test_template_needs_all_three_parts(tmp_path: Path) -> None:
    (tmp_path / "half.txt.j2").write_text("hello {{ subscription_id }}")
    (tmp_path / "half.subject.j2").write_text("hi")
    with pytest.raises(TemplateNotFound, match=r"'half'.*half\.html\.j2"):
        render(tmp_path, "half", context())


def test_missing_variable_is_an_error() -> None:
    from jinja2 import UndefinedError

    ctx = context()
    del ctx["grace_ends_at"]
    with pytest.raises(UndefinedError):
        render(BUILTIN_TEMPLATES, "final_notice", ctx)


def test_non_http_payment_url_refused() -> None:
    with pytest.raises(ValueError, match="update_payment_url"):
        render(BUILTIN_TEMPLATES, "first_notice", context(update_payment_url="javascript:alert(1)"))


# --- message ----------------------------------------------------------------------


def test_message_id_deterministic_and_distinct_per_step() -> None:
    a = message_id_for("sub_1", STARTED, "first_notice", "example.com")
    assert a == message_id_for("sub_1", STARTED, "first_notice", "example.com")
    assert a == f"<dunning.sub_1.{int(STARTED.timestamp()) * 1_000_000}.first_notice@example.com>"
    ids = {
        a,
        message_id_for("sub_1", STARTED, "reminder", "example.com"),
        message_id_for("sub_2", STARTED, "first_notice", "example.com"),
        message_id_for("sub_1", STARTED + timedelta(microseconds=1), "first_notice", "example.com"),
    }
    assert len(ids) == 4
    # naive datetimes are UTC, not local time; other zones normalise to the same instant
    assert message_id_for("sub_1", STARTED.replace(tzinfo=None), "first_notice", "example.com") == a
    cet = STARTED.astimezone(timezone(timedelta(hours=1)))
    assert message_id_for("sub_1", cet, "first_notice", "example.com") == a


def test_message_id_sanitised_to_atext() -> None:
    mid = message_id_for("sub 1<>@\"x\".y\r\nBcc: z", STARTED, "step", "exa mple..com.")
    left, domain = mid[1:-1].split("@")
    assert domain == "exa-mple.com"
    assert all(c.isalnum() or c in "!#$%&'*+-/=?^_`{|}~." for c in left)
    assert ".." not in left
    # injective: ids that differ only in unsafe characters stay distinct
    assert message_id_for("a b", STARTED, "s", "d.com") != message_id_for("a_b", STARTED, "s", "d.com")
    assert message_id_for("a.b", STARTED, "s", "d.com") != message_id_for("a", STARTED, "b.s", "d.com")
    assert domain_of("Billing <billing@example.com>") == "example.com"


def test_build_message_structure() -> None:
    when = datetime(2025, 3, 2, 10, 0, tzinfo=UTC)
    rendered = RenderedEmail(subject="Subj", text="plain body\n", html="<p>html body</p>\n")
    msg = build_message(
        sender="billing@example.com",
        to="ada@example.org",
        rendered=rendered,
        message_id="<dunning.x.1.s@example.com>",
        headers={"X-Dunning-Subscription": "sub_1", "X-Dunning-Step": "reminder"},
        date=when,
    )
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["Message-ID"] == "<dunning.x.1.s@example.com>"
    assert msg["From"] == "billing@example.com" and msg["To"] == "ada@example.org"
    assert msg["Subject"] == "Subj"
    assert msg["Date"].datetime == when
    assert msg["X-Dunning-Subscription"] == "sub_1" and msg["X-Dunning-Step"] == "reminder"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert parse_parts(msg) == ("plain body\n", "<p>html body</p>\n")
    # round-trips through bytes
    again = BytesParser(policy=policy.default).parsebytes(msg.as_bytes())
    assert again["Message-ID"] == msg["Message-ID"]
    assert build_message(sender="a@b.c", to="d@e.f", rendered=rendered, message_id="<x@y>")["Date"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"message_id": "no-brackets"},
        {"headers": {"Bcc": "evil@example.com"}},
        {"headers": {"Content-Type": "text/plain"}},
        {"headers": {"Bad Name": "x"}},
        {"headers": {"X-Dunning-Step": "a\r\nBcc: evil@example.com"}},
        {"to": "ada@example.org\nBcc: evil@example.com"},
    ],
)
def test_build_message_rejects_bad_input(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "sender": "billing@example.com",
        "to": "ada@example.org",
        "rendered": RenderedEmail("s", "t", "<p>h</p>"),
        "message_id": "<x@y>",
    }
    with pytest.raises(ValueError):
        build_message(**(args | kwargs))


# --- sending ----------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


class RejectRecipients:
    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        return "550 5.1.1 No such user"


@pytest.fixture
def smtp_server() -> Any:
    recorder = Recorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller, recorder
    finally:
        controller.stop()


async def test_send_message_delivers(smtp_server: Any) -> None:
    controller, recorder = smtp_server
    msg = a_message("reminder")
    await send_message(msg, host="127.0.0.1", port=controller.port, timeout=5)
    assert len(recorder.envelopes) == 1
    envelope = recorder.envelopes[0]
    assert envelope.mail_from == "billing@example.com"
    assert envelope.rcpt_tos == ["ada@example.org"]
    got = BytesParser(policy=policy.default).parsebytes(envelope.content)
    assert got["Message-ID"] == message_id_for("sub_ABC123", STARTED, "reminder", "example.com")
    assert got["To"] == "ada@example.org"
    assert got["Subject"] == msg["Subject"] and "Acme Cloud" in got["Subject"]
    assert got["X-Dunning-Step"] == "reminder"
    text, html = parse_parts(got)
    assert "Ada Lovelace" in text and "Pro (monthly)" in text and "sub_ABC123" not in text
    assert "<html" in html and "Pro (monthly)" in html and "sub_ABC123" not in html


async def test_send_to_closed_port_raises_quickly() -> None:
    port = free_port()  # bound then released: nothing listens there
    started = time.monotonic()
    with pytest.raises(SmtpError, match=f"127.0.0.1:{port}") as err:
        await send_message(a_message(), host="127.0.0.1", port=port, timeout=5)
    assert time.monotonic() - started < 2
    assert not err.value.permanent


async def test_refused_recipient_raises_permanent() -> None:
    controller = Controller(RejectRecipients(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        with pytest.raises(SmtpError, match="550") as err:
            await send_message(a_message(), host="127.0.0.1", port=controller.port, timeout=5)
        assert err.value.code == 550 and err.value.permanent
    finally:
        controller.stop()


async def test_username_without_password_refused() -> None:
    with pytest.raises(SmtpError, match="together"):
        await send_message(a_message(), host="127.0.0.1", port=1, username="u")


# --- outbox sink ------------------------------------------------------------------


async def test_outbox_sink_stores_eml(tmp_path: Path) -> None:
    outbox = tmp_path / "does" / "not" / "exist"
    with OutboxSink(outbox, port=0) as sink:
        assert sink.port > 0
        for step in ("first_notice", "reminder"):
            await send_message(a_message(step), host="127.0.0.1", port=sink.port, timeout=5)
    files = sorted(p.name for p in outbox.iterdir())
    assert len(files) == 2 and all(name.endswith(".eml") for name in files)
    assert "dunning.sub_ABC123" in files[0] and files[0][:8].isdigit()
    messages = read_outbox(outbox)
    assert [m["X-Dunning-Step"] for m in messages] == ["first_notice", "reminder"]
    first = messages[0]
    assert first["Message-ID"] == message_id_for("sub_ABC123", STARTED, "first_notice", "example.com")
    assert first["To"] == "ada@example.org"
    text, html = parse_parts(first)
    assert "Acme Cloud" in text and "Acme Cloud" in html


def test_outbox_sink_start_stop_explicit_port(tmp_path: Path) -> None:
    port = free_port()
    sink = OutboxSink(tmp_path, port=port)
    assert sink.port == port
    sink.start()
    try:
        assert sink.running
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            assert conn.recv(100).startswith(b"220")
    finally:
        sink.stop()
    assert not sink.running
    with pytest.raises(RuntimeError):
        _ = OutboxSink(tmp_path, port=0).port


def test_write_eml_never_overwrites(tmp_path: Path) -> None:
    now = datetime(2025, 3, 1, tzinfo=UTC)
    raw = b"Message-ID: <a/b@../c>\r\nSubject: x\r\n\r\nbody\r\n"
    first = write_eml(tmp_path, raw, now)
    second = write_eml(tmp_path, raw, now)
    assert first != second and first.parent == second.parent == tmp_path
    assert first.name == "20250301T000000.000000Z-a_b@.._c.eml"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, second.name])  # no temp left
    nameless = write_eml(tmp_path, b"Subject: x\r\n\r\nbody\r\n", now)
    assert nameless.name.endswith("-no-message-id.eml")
    assert [m["Subject"] for m in read_outbox(tmp_path)] == ["x", "x", "x"]
    assert read_outbox(tmp_path / "missing") == []


@pytest.mark.parametrize("name", ["reminder", "final_notice"])
def test_a_late_email_claims_no_earlier_notice_the_customer_never_received(name: str) -> None:
    first_sent = STARTED + timedelta(days=1, hours=3)
    told = render(BUILTIN_TEMPLATES, name, context(first_notice_at=first_sent))
    never_told = render(BUILTIN_TEMPLATES, name, context(first_notice_at=None))
    for out in (told.text, told.html):
        assert ("first let you know" in out) or ("earlier reminders" in out)
    if name == "reminder":
        assert longdate(first_sent) in told.text
    for out in (never_told.text, never_told.html):
        assert "first let you know" not in out and "earlier reminders" not in out
        assert longdate(STARTED) in out  # still says since when the payment is overdue
