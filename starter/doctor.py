"""`dunning doctor`: check the configuration and what it points at, in words.

    ok    config       valid; webhooks enabled: stripe, fake; campaign enabled
    ok    database     reachable (postgresql+psycopg://app@db/dunning)
    FAIL  temporal     cannot reach 127.0.0.1:7233: ...
    FAIL  smtp         cannot reach 127.0.0.1:1025: ConnectionRefusedError: ...
    WARN  stripe       ... two sets of emails ...
    WARN  provider     stripe: a webhook secret is set but DUNNING_STRIPE_API_KEY is not: ...
    WARN  stuck        1 payment started over 30m ago with no recorded result (...): sub_1 retry@3d ...

Returns the exit code: 0 when nothing failed (warnings allowed), 1 otherwise. The
Settings passed in were already validated (a bad config never gets this far; the caller
prints its ConfigError and exits 2). Beside a running `dunning dev`, the secrets it
generated (DUNNING_HOME/dev-secrets) count as set, as for `dunning simulate`.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import make_url
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.service import RPCError, RPCStatusCode

from dunning.config import Settings
from dunning.store.store import Store
from dunning.store.stuck import stuck
from worker.app import connect

STUCK_SHOWN = 10  # ids listed per kind of stuck work; the count is always exact
STRIPE_EMAILS_SETTING = (
    'Stripe Dashboard > Settings > Billing > Subscriptions and emails > "Send emails when card payments fail"'
)


def enabled_providers(settings: Settings) -> list[str]:
    providers = []
    if any(s.strip() for s in settings.stripe_webhook_secret):
        providers.append("stripe")
    if settings.braintree_merchant_id and settings.braintree_public_key and settings.braintree_private_key:
        providers.append("braintree")
    if settings.fake_webhook_secret:
        providers.append("fake")
    return providers


def stripe_double_email_warning(settings: Settings) -> str | None:
    """Stripe emails customers about failed payments itself unless told not to."""
    if "stripe" not in enabled_providers(settings) or not settings.campaign.enabled:
        return None
    return (
        "the Stripe provider is enabled and campaign.enabled is true: customers get two sets of emails "
        f"unless Stripe's own failed-payment emails are turned off ({STRIPE_EMAILS_SETTING}) "
        "or the campaign is disabled (DUNNING_CAMPAIGN__ENABLED=false, or `campaign = false` in dunning.toml)"
    )


def stripe_key_warning(settings: Settings) -> str | None:
    """Stripe webhooks come in, but the engine cannot call Stripe back."""
    if "stripe" not in enabled_providers(settings) or settings.stripe_api_key:
        return None
    return (
        "stripe: a webhook secret is set but DUNNING_STRIPE_API_KEY is not: the terminal action at the end of "
        "the grace period (cancel / mark_unpaid) and the drift sweep's reads cannot call Stripe "
        "(they fail and the campaign needs attention); set DUNNING_STRIPE_API_KEY (a restricted key is enough)"
    )


def smtp_problem(settings: Settings, timeout: float) -> str | None:
    """Connect to the SMTP server, EHLO and NOOP (no login, no message); None when it answers."""
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout) as smtp:
            code, reply = smtp.ehlo()
            if code != 250:
                return f"EHLO answered {code} {_reply(reply)}"
            if settings.smtp_starttls and not smtp.has_extn("starttls"):
                return "does not offer STARTTLS (DUNNING_SMTP_STARTTLS is true)"
            code, reply = smtp.noop()
            if code != 250:
                return f"NOOP answered {code} {_reply(reply)}"
    except (OSError, smtplib.SMTPException) as err:
        return f"{type(err).__name__}: {_first_line(err)}"
    return None


def _reply(reply: bytes) -> str:
    return reply.decode(errors="replace").splitlines()[0][:200] if reply else ""


def doctor(settings: Settings, *, timeout: float = 5.0, say: Callable[[str], None] = print) -> int:
    from starter.dev import with_dev_secrets

    failed = False

    def report(level: str, what: str, message: str) -> None:
        nonlocal failed
        failed = failed or level == "FAIL"
        say(f"{level:<5} {what:<9} {message}")

    dev = with_dev_secrets(settings)  # a running `dunning dev`'s secrets, as `dunning simulate` reads them
    if dev is not settings:
        settings = dev
        report("ok", "dev", f"using the secrets `dunning dev` generated ({settings.home / 'dev-secrets'})")
    providers = enabled_providers(settings)
    report(
        "ok", "config",
        f"valid; webhooks enabled: {', '.join(providers) or 'none'}; "
        f"campaign {'enabled' if settings.campaign.enabled else 'disabled'}",
    )  # fmt: skip
    if not providers:
        report("WARN", "webhooks", "no provider is configured: every webhook route answers 404 "
               "(set DUNNING_STRIPE_WEBHOOK_SECRET, DUNNING_BRAINTREE_* or DUNNING_FAKE_WEBHOOK_SECRET)")  # fmt: skip
    if not settings.api_token:
        report("WARN", "api", "DUNNING_API_TOKEN is not set: the /v1/subscriptions routes answer 404")

    shown_url = make_url(settings.db_url).render_as_string(hide_password=True)
    try:
        store = Store(settings.db_url)
        try:
            store.ping()
        finally:
            store.dispose()
    except Exception as err:
        report("FAIL", "database", f"cannot reach {shown_url}: {type(err).__name__}: {_first_line(err)}")
    else:
        report("ok", "database", f"reachable ({shown_url})")
        for level, message in stuck_report(settings):  # only a reachable database is asked
            report(level, "stuck", message)

    problem = asyncio.run(_temporal_problem(settings, timeout))
    where = f"{settings.temporal_address} (namespace {settings.temporal_namespace})"
    if problem:
        report("FAIL", "temporal", f"{where}: {problem}")
    else:
        report("ok", "temporal", f"reachable, namespace found: {where}")

    smtp = f"{settings.smtp_host}:{settings.smtp_port}"
    problem = smtp_problem(settings, timeout)
    if problem:
        report("FAIL", "smtp", f"cannot reach {smtp}: {problem} (no campaign email can be sent)")
    else:
        report("ok", "smtp", f"reachable, answers EHLO and NOOP: {smtp}")

    warning = stripe_double_email_warning(settings)
    if warning:
        report("WARN", "stripe", warning)
    warning = stripe_key_warning(settings)
    if warning:
        report("WARN", "provider", warning)
    return 1 if failed else 0


def stuck_report(settings: Settings, now: datetime | None = None) -> list[tuple[str, str]]:
    """(level, message) lines of the stuck check: WARN per kind of stuck work (ids only),
    one ok line when nothing is stuck. Never FAIL: a database error is a WARN here (its
    reachability is the database check's)."""
    window = settings.recompute.in_flight_window
    span = f"{window.total_seconds() / 60:g}m"
    try:
        store = Store(settings.db_url)
        try:
            found = stuck(store, window, now or datetime.now(UTC), limit=STUCK_SHOWN)
        finally:
            store.dispose()
    except Exception as err:
        return [("WARN", f"cannot check: {type(err).__name__}: {_first_line(err)} (is the schema migrated?)")]
    if not found.any:
        return [("ok", f"nothing stuck: no payment or step unconfirmed for over {span}, no parked event")]
    lines = []
    if found.payments_in_flight:
        shown = [f"{p.subscription_id} {_payment(p.source, p.key)} since {p.since.isoformat()}" for p in found.payments]
        lines.append(("WARN", f"{_n(found.payments_in_flight, 'payment')} started over {span} ago with no recorded "
                      f"result (charged or not: check the provider): {_listed(shown, found.payments_in_flight)}"))  # fmt: skip
    if found.unconfirmed_steps:
        shown = [f"{s.subscription_id} {s.step_key} since {s.since.isoformat()}" for s in found.steps]
        lines.append(("WARN", f"{_n(found.unconfirmed_steps, 'step')} claimed over {span} ago, never confirmed "
                      f"(`dunning campaign status SUB`): {_listed(shown, found.unconfirmed_steps)}"))  # fmt: skip
    if found.parked_events:
        shown = [f"{e.provider}/{e.event_id} ({e.subscription_id or 'no subscription'})" for e in found.parked]
        lines.append(("WARN", f"{_n(found.parked_events, 'parked event')} (`dunning inbox parked`, "
                      f"`dunning inbox retry PROVIDER EVENT_ID`): {_listed(shown, found.parked_events)}"))  # fmt: skip
    return lines


def _payment(source: str, key: str) -> str:
    if source == "provider":
        return "processing at the provider"
    return key if source == "retry" else f"pay-bad-debt {key}"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _listed(shown: Sequence[str], total: int) -> str:
    more = total - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


async def _temporal_problem(settings: Settings, timeout: float) -> str | None:
    try:
        client = await asyncio.wait_for(connect(settings), timeout)
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except Exception as err:
        return f"cannot connect: {_first_line(err)}"
    try:
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=settings.temporal_namespace), timeout=timedelta(seconds=timeout)
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return f"namespace {settings.temporal_namespace!r} does not exist"
        return f"describe namespace failed: {err.status.name if err.status else ''} {_first_line(err)}"
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
