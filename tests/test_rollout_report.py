"""The rollout report's judgement (pure): shadow terminal actions against the provider."""

from __future__ import annotations

from datetime import UTC, datetime

from dunning.reconcile import ProviderView
from dunning.rollout_report import ShadowRun, build, render, verdict

T = datetime(2026, 11, 1, tzinfo=UTC)
OWES = ProviderView(status="past_due", invoice_state="open")
PAID = ProviderView(status="active", invoice_state="paid")


def run(actions, outcome, provider=OWES, sub="s"):
    return ShadowRun(sub, T, tuple(actions), outcome, provider)


def test_verdicts():
    assert verdict(run(["email"], None)) == "running"
    assert verdict(run(["email", "consequence"], "recovered")) == "recovered"
    assert verdict(run(["email", "cancel"], "exhausted")) == "true_positive"
    assert verdict(run(["email", "cancel"], "exhausted", PAID)) == "false_positive"
    assert verdict(run(["email", "mark_unpaid"], "exhausted", ProviderView(status="canceled"))) == "true_positive"
    assert verdict(run(["email", "cancel"], "exhausted", None)) == "unknown"
    assert verdict(run(["email"], "resolved")) == "resolved"


def test_rate_and_counts():
    report = build([
        run(["email", "charge", "cancel"], "exhausted", sub="a"),
        run(["email", "charge", "cancel"], "exhausted", PAID, sub="b"),
        run(["email", "charge", "cancel"], "exhausted", sub="c"),
        run(["email", "consequence"], "recovered", sub="d"),
        run(["email"], None, sub="e"),
    ])  # fmt: skip
    assert report.campaigns == 5 and report.false_positives == ["b"]
    assert report.false_positive_rate == 1 / 3 and report.restricted_payers == 1
    assert report.actions["cancel"] == 3 and report.actions["email"] == 5
    text = render(report)
    assert "33.3%" in text and "false positives      b" in text
    assert build([]).false_positive_rate is None and "-" in render(build([]))


def test_the_cli_prints_the_report(tmp_path, db_url, monkeypatch) -> None:
    from typer.testing import CliRunner

    from starter.cli import app

    for var in [v for v in __import__("os").environ if v.startswith("DUNNING_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("DUNNING_HOME", str(tmp_path))
    monkeypatch.setenv("DUNNING_DATABASE_URL", db_url)
    out = CliRunner().invoke(app, ["rollout", "report"])
    assert out.exit_code == 0, out.output
    assert "shadow campaigns" in out.output and "false-positive rate" in out.output
    out = CliRunner().invoke(app, ["rollout", "report", "--json"])
    assert out.exit_code == 0 and '"campaigns"' in out.output
    out = CliRunner().invoke(app, ["rollout", "report", "--since", "yesterday"])
    assert out.exit_code == 2 and "--since" in out.output
