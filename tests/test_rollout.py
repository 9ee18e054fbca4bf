"""The staged-rollout gate: a stable slice of subscriptions by hash (it only grows as the
percentage grows), an allowlist, and the dispatcher starting campaigns only inside it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from temporalio.service import RPCError

from dunning.config import ConfigError, load_settings
from dunning.rollout import RolloutSettings, bucket, in_slice, mode_for

ids = st.text(min_size=1, max_size=40)


@given(ids, st.floats(0, 100), st.floats(0, 100))
def test_a_subscription_in_the_slice_stays_in_as_the_percentage_grows(sub, a, b):
    low, high = sorted((a, b))
    if in_slice(RolloutSettings(percent=low), sub):
        assert in_slice(RolloutSettings(percent=high), sub)
    assert bucket(sub) == bucket(sub) and 0 <= bucket(sub) < 10_000


def test_the_slice_is_about_the_percentage_and_the_edges_are_exact():
    subs = [f"sub_{n}" for n in range(4000)]
    half = sum(in_slice(RolloutSettings(percent=50), s) for s in subs)
    assert 1850 <= half <= 2150
    assert not any(in_slice(RolloutSettings(percent=0), s) for s in subs)
    assert all(in_slice(RolloutSettings(percent=100), s) for s in subs)


def test_allowlisted_subscriptions_and_customers_are_in_whatever_the_percentage():
    gate = RolloutSettings(mode="live", percent=0, allow=["sub_vip", "cus_team"])
    assert mode_for(gate, "sub_vip") == "live"
    assert mode_for(gate, "sub_other", "cus_team") == "live"
    assert mode_for(gate, "sub_other", "cus_other") == "off"
    assert mode_for(RolloutSettings(mode="off"), "sub_vip") == "off"


def test_a_bad_gate_is_refused_at_boot_naming_the_key(monkeypatch, tmp_path):
    for var in [v for v in __import__("os").environ if v.startswith("DUNNING_")]:
        monkeypatch.delenv(var)
    config = tmp_path / "dunning.toml"
    config.write_text('[rollout]\nmode = "half"\n')
    monkeypatch.setenv("DUNNING_CONFIG", str(config))
    with pytest.raises(ConfigError, match="rollout.mode"):
        load_settings()
    config.write_text("[rollout]\npercent = 150\n")
    with pytest.raises(ConfigError, match="rollout.percent"):
        load_settings()
    config.write_text('[rollout]\nmode = "shadow"\npercent = 5\n')  # shadow campaigns exist now
    assert load_settings().rollout == RolloutSettings(mode="shadow", percent=5)


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"rollout": RolloutSettings(mode="live", percent=50)})


async def test_live_for_a_50_percent_slice_starts_campaigns_only_for_the_same_stable_half(tenv, dunning, store):
    gate = RolloutSettings(mode="live", percent=50)
    subs = [f"sub_roll_{n}" for n in range(20)]
    at = await tenv.get_current_time()
    results = {s: (await dunning.fail_payment(s, f"cus_{s}", "ada@example.com", at)).result for s in subs}
    inside = {s for s in subs if in_slice(gate, s)}
    assert 0 < len(inside) < len(subs)
    assert {s for s, r in results.items() if r == "started"} == inside
    assert {s for s, r in results.items() if r == "rollout_off"} == set(subs) - inside
    for s in subs:
        try:
            await dunning.client.get_workflow_handle(f"dunning-{s}").describe()
            running = True
        except RPCError:
            running = False
        assert running == (s in inside), s
    for s in inside:
        await dunning.payment_recovered(s)


def test_a_begun_campaign_runs_live_only_inside_a_live_slice():
    from dunning.rollout import campaign_mode

    assert campaign_mode(RolloutSettings(mode="live"), "sub_a") == "live"
    assert campaign_mode(RolloutSettings(mode="shadow"), "sub_a") == "shadow"
    # narrowed after the start: the campaign that began never acts live
    assert campaign_mode(RolloutSettings(mode="live", percent=0), "sub_a") == "shadow"
    assert campaign_mode(RolloutSettings(mode="off"), "sub_a") == "shadow"
