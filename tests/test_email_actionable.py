"""Emails a customer can act on, checked the way a customer's mail client sees them: the
.eml files the SMTP sink stored for whole campaigns on the time-skipping server (both
databases). The link verifies and names the subscription, the amount is written for its
currency, the plan has its name, nothing is left unrendered, no internal id shows, text and
HTML agree, the deadline is the real one, and a long non-ASCII subject is encoded."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from email.message import EmailMessage
from urllib.parse import parse_qs, urlsplit

import pytest

from dunning import links
from dunning.email.render import longdate
from dunning.email_settings import EmailSettings
from dunning.journey import boundary
from dunning.money import format_amount
from dunning.store.store import Store
from tests.temporal_fixtures import running_worker, without_engine_retries

pytestmark = pytest.mark.asyncio
SECRET = "s3cret-link-key-0123456789"
COMPANY = "Société Générale de Logiciels Très Longs et Vraiment Très Détaillés"


def _settings(settings):
    email = EmailSettings(company_name=COMPANY, support_email="help@acme.example",
                          update_payment_url="https://acme.example/billing/update?token={token}", link_secret=SECRET,
                          plans={"price_pro": "Pro (monthly)"})  # fmt: skip
    return without_engine_retries(settings).model_copy(update={"email": email})


def _parts(msg: EmailMessage) -> tuple[str, str]:
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


async def test_a_whole_campaign_of_emails_the_customer_can_act_on(tenv, settings, store: Store, new_sub,
                                                                  mailbox) -> None:  # fmt: skip
    configured = _settings(settings)
    async with running_worker(tenv, configured, store) as client:
        sub, cus = new_sub("mail_usd"), "cus_mail_usd"
        at = await client.now()
        await client.fail_payment(sub, cus, "ada@example.com", at, name="Ada", amount_due=4900, currency="USD",
                                  plan_id="price_pro")  # fmt: skip
        state = await client._handle(sub).result()
    messages = mailbox.messages()
    assert [m["X-Dunning-Step"] for m in messages] == state.steps_sent and len(messages) == 3
    deadline = longdate(boundary(at, configured.campaign.grace_days, configured.day_seconds))
    for msg in messages:
        text, html = _parts(msg)
        everything = f"{msg['Subject']}\n{text}\n{html}"
        assert "{{" not in everything and "{%" not in everything and "None" not in everything
        assert sub not in everything and cus not in everything  # never an internal id
        assert COMPANY in msg["Subject"] and "Ada" in text
        for body in (text, html):
            assert "$49.00" in body and "Pro (monthly)" in body and "help@acme.example" in body
        url = re.search(r"https://acme\.example/billing/update\?token=[^\s\"<]+", text)
        assert url is not None and url.group(0).replace("&", "&amp;") in html
        token = parse_qs(urlsplit(url.group(0)).query)["token"][0]
        assert links.verify(token, SECRET) == sub  # the host app can trust it (valid now: signed at send time)
        with pytest.raises(links.BadLink, match="signature"):
            links.verify(token, "another-secret-0123456789")
        raw = msg.as_bytes()
        assert all(len(line) <= 998 for line in raw.splitlines()) and b"=?utf-8?" in raw.lower()
    final = next(m for m in messages if m["X-Dunning-Step"] == "final_notice")
    assert deadline in final["Subject"] and deadline in _parts(final)[0]


async def test_amounts_follow_their_currency(tenv, settings, store: Store, new_sub, mailbox) -> None:
    async with running_worker(tenv, _settings(settings), store) as client:
        sub = new_sub("mail_jpy")
        await client.fail_payment(sub, "cus_jpy", "ken@example.com", await client.now(), amount_due=150000,
                                  currency="jpy", plan_id="price_unknown")  # fmt: skip
        for _ in range(500):  # the first notice goes out at once
            if mailbox.messages():
                break
            await asyncio.sleep(0.01)
        await client.payment_recovered(sub, "card_updated", f"k-{sub}")
        await client._handle(sub).result()
    text, html = _parts(mailbox.messages()[0])
    assert "¥150,000" in text and "¥150,000" in html
    assert "price_unknown" not in text + html  # a plan without a name is not shown


def test_money_and_links() -> None:
    assert format_amount(1234, "usd") == "$12.34" and format_amount(5, "eur") == "€0.05"
    assert format_amount(1234, "bhd") == "1.234 BHD" and format_amount(1234, "chf") == "12.34 CHF"
    assert format_amount(None, "usd") is None and format_amount(100, None) is None and format_amount(1, "us") is None
    from datetime import UTC, datetime

    now = datetime(2026, 11, 1, tzinfo=UTC)
    token = links.sign("sub_1", now + timedelta(days=1), SECRET)
    assert links.verify(token, SECRET, now) == "sub_1"
    with pytest.raises(links.BadLink, match="expired"):
        links.verify(token, SECRET, now + timedelta(days=2))
    with pytest.raises(links.BadLink, match="malformed"):
        links.verify("v1.x", SECRET, now)
    forged = token.replace(token.split(".")[1], links._b64(b"sub_2"))
    with pytest.raises(links.BadLink, match="signature"):
        links.verify(forged, SECRET, now)


def test_a_link_without_its_secret_is_refused_at_boot() -> None:
    with pytest.raises(ValueError, match="link_secret"):
        EmailSettings(update_payment_url="https://acme.example/u?token={token}")
    with pytest.raises(ValueError, match="token"):
        EmailSettings(update_payment_url="https://acme.example/u", link_secret=SECRET)
