"""The consequence ladder: every default rung gets visible time, and a rung that can never
hold before exhaustion is refused at boot, naming it."""

import pytest

from dunning import consequences
from dunning.config import ConfigError, default_ladder, load_settings


@pytest.fixture(autouse=True)
def no_caller_config(tmp_path, monkeypatch):
    """No DUNNING_* variable and no ./dunning.toml of the caller's reaches these settings."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("DUNNING_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def rung(level, min_days=0, **conditions):
    return {"level": level, "min_days": min_days, **conditions}


def test_default_ladder_loads_and_changes_at_7_then_10():
    s = load_settings()
    assert s.campaign.grace_days == 14
    assert [(r.level, r.min_days) for r in s.campaign.consequences] == [("suspended", 10), ("limited", 7), ("full", 0)]
    assert consequences.changes(s.campaign.consequences, "soft", None, 14) == [(7, "limited"), (10, "suspended")]


@pytest.mark.parametrize("decline_class", ["hard", "soft", "action_required", "unknown"])
def test_every_default_rung_lasts_at_least_a_day_before_exhaustion(decline_class):
    grace = load_settings().campaign.grace_days
    ladder = default_ladder()
    points = [(0.0, consequences.START_LEVEL), *consequences.changes(ladder, decline_class, None, grace)]
    held = {level: (points[k + 1][0] if k + 1 < len(points) else grace) - day for k, (day, level) in enumerate(points)}
    assert set(held) == {r.level for r in ladder}
    assert all(days >= 1 for days in held.values()), held


def test_a_rung_starting_at_exhaustion_is_refused_naming_it():
    ladder = [rung("suspended", 14), rung("limited", 7), rung("full")]
    with pytest.raises(ConfigError) as err:
        load_settings(campaign={"grace_days": 14, "consequences": ladder})
    assert (
        "campaign.consequences[0] (level 'suspended', min_days 14): can never hold: "
        "the campaign is exhausted at grace_days = 14"
    ) in str(err.value)


def test_a_rung_starting_after_exhaustion_is_refused_naming_it():
    ladder = [rung("limited", 7), rung("suspended", 20), rung("full")]
    with pytest.raises(ConfigError, match=r"campaign\.consequences\[1\] \(level 'suspended', min_days 20\)"):
        load_settings(campaign={"consequences": ladder})


def test_an_always_shadowed_rung_is_refused_naming_it_and_the_winner():
    ladder = [rung("suspended", 5), rung("limited", 3), rung("blocked", 7), rung("full")]
    with pytest.raises(ConfigError) as err:
        load_settings(campaign={"consequences": ladder})
    assert (
        "campaign.consequences[2] (level 'blocked', min_days 7): can never hold: an earlier rung "
        "(campaign.consequences[0], level 'suspended', min_days 5) always wins"
    ) in str(err.value)


def test_a_rung_shadowed_by_class_specific_rungs_covering_every_class_is_refused():
    ladder = [rung("suspended", 2, decline_class=c) for c in ("hard", "soft", "action_required", "unknown")]
    ladder += [rung("limited", 4), rung("full")]
    with pytest.raises(ConfigError) as err:
        load_settings(campaign={"consequences": ladder})
    assert "campaign.consequences[4] (level 'limited', min_days 4): can never hold: earlier rungs (" in str(err.value)


def test_a_second_catch_all_is_shadowed_by_the_first():
    with pytest.raises(ConfigError, match=r"campaign\.consequences\[1\] \(level 'full', min_days 0\): can never hold"):
        load_settings(campaign={"consequences": [rung("full"), rung("full")]})


def test_an_amount_rung_behind_a_lower_threshold_is_shadowed_but_not_behind_a_higher_one():
    with pytest.raises(ConfigError, match=r"campaign\.consequences\[1\] \(level 'limited'"):
        load_settings(campaign={"consequences": [rung("suspended", 3, min_amount_due=100), rung("limited", 5, min_amount_due=500), rung("full")]})
    s = load_settings(campaign={"consequences": [rung("suspended", 3, min_amount_due=500), rung("limited", 5, min_amount_due=100), rung("full")]})
    assert consequences.level_at(s.campaign.consequences, 6, "soft", 200) == "limited"


def test_a_rung_that_holds_for_one_decline_class_only_is_accepted():
    only_hard = [rung("suspended", 3, decline_class="hard"), rung("limited", 7), rung("full")]
    s = load_settings(campaign={"consequences": only_hard})
    assert consequences.changes(s.campaign.consequences, "hard", None, 14) == [(3, "suspended")]
    assert consequences.changes(s.campaign.consequences, "soft", None, 14) == [(7, "limited")]


def test_a_rung_that_holds_for_one_class_only_behind_rungs_for_the_others_is_accepted():
    ladder = [rung("suspended", 2, decline_class=c) for c in ("soft", "action_required", "unknown")]
    ladder += [rung("limited", 4), rung("full")]
    s = load_settings(campaign={"consequences": ladder})
    assert consequences.changes(s.campaign.consequences, "hard", None, 14) == [(4, "limited")]


def test_lowering_grace_days_under_the_default_suspension_refuses_that_rung():
    steps = [{"after_days": 0, "key": "first_notice", "template": "first_notice"}]
    with pytest.raises(ConfigError) as err:
        load_settings(campaign={"steps": steps, "grace_days": 9})
    assert (
        "campaign.consequences[0] (level 'suspended', min_days 10): can never hold: "
        "the campaign is exhausted at grace_days = 9"
    ) in str(err.value)
    assert load_settings(campaign={"steps": steps, "grace_days": 11}).campaign.grace_days == 11


def test_grace_days_zero_is_not_refused_for_the_ladder():
    steps = [{"after_days": 0, "key": "first_notice", "template": "first_notice"}]
    no_retries = {c: {"days": []} for c in ("soft", "unknown")}
    s = load_settings(campaign={"steps": steps, "grace_days": 0, "retries": no_retries})
    assert s.campaign.grace_days == 0
