"""`dunning simulate` against the API served by uvicorn (serve_api) on loopback, and
`dunning doctor`'s checks and the Stripe double-email warning."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from datetime import timedelta

import httpx
from typer.testing import CliRunner

from dunning.config import Settings
from starter.api_server import serve_api
from starter.cli_simulate import simulate_app
from starter.doctor import STRIPE_EMAILS_SETTING, doctor
from tests.api_helpers import api_settings, eventually, subs  # noqa: F401

RUNNER = CliRunner()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def simulate(settings: Settings, *args: str):
    return await asyncio.to_thread(RUNNER.invoke, simulate_app, list(args), obj=settings)


async def test_simulate_commands_drive_a_campaign_through_the_served_api(tenv, settings, store, dunning, mailbox, subs):
    port = free_port()
    config = api_settings(settings, api_port=port)
    sub = subs("sub_cli")

    async def factory():
        return dunning

    # event times are bounded against the provider's clock here: the time-skipping server's
    serving = serve_api(config, store, factory, "127.0.0.1", port, log_level="warning", clock=tenv.get_current_time)
    server = asyncio.create_task(serving)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        for _ in range(100):
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/healthz")).status_code == 200:
                    break
            await asyncio.sleep(0.05)

        # the provider's time: the time-skipping clock (ahead of the wall clock once tests skip time)
        at = (await tenv.get_current_time()).replace(microsecond=0)
        failed = await simulate(config, "payment-failed", sub, "--customer", "cus_cli", "--email", "cli@example.com",
                                "--decline-code", "insufficient_funds", "--at", at.isoformat())  # fmt: skip
        assert failed.exit_code == 0, failed.output
        assert failed.output.startswith("200 ") and '"action": "start"' in failed.output
        (email,) = await eventually(mailbox.messages)
        assert (email["To"], email["X-Dunning-Subscription"]) == ("cli@example.com", sub)

        updated = await simulate(config, "payment-method-updated", sub, "--at", (at + timedelta(seconds=1)).isoformat())
        assert updated.exit_code == 0 and '"action": "update"' in updated.output
        succeeded = await simulate(config, "payment-succeeded", sub, "--at", (at + timedelta(seconds=2)).isoformat())
        assert succeeded.exit_code == 0 and '"action": "recover"' in succeeded.output
        state = await dunning.client.get_workflow_handle(f"dunning-{sub}").result()
        assert state["outcome"] == "recovered"

        metrics = (await http.get("/metrics.json")).json()["dunning.webhooks"]
        assert sum(m["count"] for m in metrics if m["outcome"] == "processed") == 3

    server.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await server
    async with httpx.AsyncClient() as http:  # shut down: nothing listens any more
        try:
            await http.get(f"http://127.0.0.1:{port}/healthz")
            raise AssertionError("the API still answers after cancellation")
        except httpx.ConnectError:
            pass


async def test_simulate_says_what_is_wrong(settings):
    closed = api_settings(settings, api_port=free_port())
    result = await simulate(closed, "payment-succeeded", "sub_1")
    assert result.exit_code == 1 and "cannot reach the API" in result.output

    no_secret = api_settings(settings, fake_webhook_secret=None)
    result = await simulate(no_secret, "payment-succeeded", "sub_1")
    assert result.exit_code == 2 and "DUNNING_FAKE_WEBHOOK_SECRET" in result.output

    result = await simulate(closed, "payment-failed", "sub_1", "--customer", "c", "--email", "nope")
    assert result.exit_code == 2 and "not an email address" in result.output
    result = await simulate(closed, "payment-succeeded", "sub_1", "--at", "yesterday")
    assert result.exit_code == 2 and "--at 'yesterday'" in result.output


def run_doctor(settings: Settings) -> tuple[int, str]:
    lines: list[str] = []
    code = doctor(settings, timeout=2, say=lines.append)
    return code, "\n".join(lines)


def test_doctor_all_good_against_a_reachable_temporal(tenv, settings):
    address = tenv.client.service_client.config.target_host
    code, out = run_doctor(api_settings(settings, temporal_address=address, stripe_webhook_secret=[]))
    assert code == 0, out
    assert "ok    config" in out and "webhooks enabled: braintree, fake" in out
    assert "ok    database" in out and "ok    temporal" in out
    assert "WARN  stripe" not in out


def test_doctor_fails_on_unreachable_temporal_and_warns_about_stripe_emails(settings):
    unreachable = api_settings(settings, temporal_address=f"127.0.0.1:{free_port()}")
    code, out = run_doctor(unreachable)
    assert code == 1
    assert "FAIL  temporal" in out and "cannot connect" in out and "ok    database" in out
    warning = next(line for line in out.splitlines() if line.startswith("WARN  stripe"))
    assert STRIPE_EMAILS_SETTING in warning and "Send emails when card payments fail" in warning
    assert "DUNNING_CAMPAIGN__ENABLED=false" in warning and "campaign = false" in warning
    assert "two sets of emails" in warning

    quiet = unreachable.model_copy(update={"campaign": unreachable.campaign.model_copy(update={"enabled": False})})
    assert "WARN  stripe" not in run_doctor(quiet)[1]


def test_doctor_fails_on_an_unreachable_database(settings):
    broken = settings.model_copy(update={
        "database_url": "postgresql+psycopg://doctor:secret@127.0.0.1:1/nothing?connect_timeout=1",
        "temporal_address": f"127.0.0.1:{free_port()}",
    })  # fmt: skip
    code, out = run_doctor(broken)
    assert code == 1 and "FAIL  database" in out
    assert "secret" not in out  # the password is never printed
    assert "WARN  webhooks" in out and "WARN  api" in out


def doctor_lines(settings: Settings, what: str) -> list[str]:
    """The doctor's lines for one check (`what`), e.g. "smtp"."""
    return [line for line in run_doctor(settings)[1].splitlines() if line.split()[1:2] == [what]]


def test_doctor_reads_the_secrets_dunning_dev_generated(settings):
    bare = settings.model_copy(update={"api_token": None, "fake_webhook_secret": None, "stripe_webhook_secret": []})
    code, out = run_doctor(bare)
    assert "WARN  api" in out and "WARN  webhooks" in out and "ok    dev" not in out

    (bare.home / "dev-secrets").write_text("whsec_dev_0123456789abcdef\ndev_0123456789abcdef01234567\n")
    code, out = run_doctor(bare)
    assert "WARN  api" not in out and "WARN  webhooks" not in out, out
    assert "webhooks enabled: fake" in out
    assert f"ok    dev       using the secrets `dunning dev` generated ({bare.home / 'dev-secrets'})" in out
    assert "whsec_dev_0123456789abcdef" not in out and "dev_0123456789abcdef01234567" not in out  # never printed


def test_doctor_checks_smtp_with_ehlo_and_noop(settings):
    (ok,) = doctor_lines(settings, "smtp")  # the settings fixture's sink is running
    assert ok == f"ok    smtp      reachable, answers EHLO and NOOP: 127.0.0.1:{settings.smtp_port}"

    port = free_port()
    code, out = run_doctor(settings.model_copy(update={"smtp_port": port}))
    (line,) = [line for line in out.splitlines() if line.startswith("FAIL  smtp")]
    assert code == 1 and f"cannot reach 127.0.0.1:{port}: ConnectionRefusedError" in line, out


def test_doctor_smtp_check_gives_up_after_the_timeout(settings):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        (line,) = doctor_lines(settings.model_copy(update={"smtp_port": port}), "smtp")
        assert time.monotonic() - t0 < 15
    assert line.startswith("FAIL  smtp") and f"127.0.0.1:{port}" in line and "timed out" in line, line


def test_doctor_warns_when_stripe_webhooks_have_no_api_key(settings):
    stripe = api_settings(settings, stripe_api_key=None)
    (line,) = doctor_lines(stripe, "provider")
    assert line.startswith("WARN  provider  stripe: a webhook secret is set but DUNNING_STRIPE_API_KEY is not")
    assert "terminal action" in line
    assert doctor_lines(api_settings(settings, stripe_api_key="rk_test_doctor"), "provider") == []
    assert doctor_lines(api_settings(settings, stripe_webhook_secret=[], stripe_api_key=None), "provider") == []
    assert "rk_test_doctor" not in run_doctor(api_settings(settings, stripe_api_key="rk_test_doctor"))[1]
