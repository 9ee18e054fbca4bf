"""A bad config is refused at boot with a message that names the key, value and rule."""

import subprocess
import sys
from pathlib import Path

import pytest

from dunning.config import ConfigError, load_settings

STEP = "{{ after_days = {d}, key = '{k}', template = '{t}' }}"


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "dunning.toml"
    path.write_text(body)
    return path


def steps(*rows):
    return "[campaign]\nsteps = [" + ", ".join(STEP.format(d=d, k=k, t=t) for d, k, t in rows) + "]\n"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (steps((0, "a", "first_notice"), (0, "b", "reminder")), "campaign.steps[1].after_days = 0: must be strictly increasing"),
        (steps((3, "a", "first_notice"), (1, "b", "reminder")), "campaign.steps[1].after_days = 1"),
        (steps((0, "a", "first_notice"), (2, "a", "reminder")), "campaign.steps[1].key = 'a': keys must be unique"),
        (steps((-1, "a", "first_notice")), "after_days"),
        (steps((0, "a", "no_such_template")), "campaign.steps[0].template = 'no_such_template': no such template"),
        (steps((0, "a", "../../etc/passwd")), "campaign.steps[0].template"),
        ("[campaign]\ngrace_days = 3\n", "campaign.grace_days = 3: must be >= the last step's after_days (12)"),
        ("day_seconds = 0\n", "day_seconds = 0"),
        ("smtp_port = 'x'\n", "smtp_port = 'x'"),
        ("no_such_key = 1\n", "no_such_key"),
    ],
)
def test_bad_config_is_refused_naming_the_key(tmp_path, monkeypatch, body, expected):
    monkeypatch.setenv("DUNNING_CONFIG", str(write(tmp_path, body)))
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert expected in str(err.value)


def test_env_overrides_toml_and_campaign_false_shorthand(tmp_path, monkeypatch):
    monkeypatch.setenv("DUNNING_CONFIG", str(write(tmp_path, "campaign = false\nday_seconds = 60\n")))
    monkeypatch.setenv("DUNNING_DAY_SECONDS", "2")
    s = load_settings()
    assert s.campaign.enabled is False and s.day_seconds == 2
    assert [st.after_days for st in s.campaign.steps] == [0, 5, 12] and s.campaign.grace_days == 14


def test_missing_config_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("DUNNING_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="nope.toml"):
        load_settings()


def test_cli_refuses_bad_config_with_exit_2_and_the_key(tmp_path):
    path = write(tmp_path, "[campaign]\ngrace_days = 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "starter.cli", "campaign", "status", "sub_1"],
        env={"DUNNING_CONFIG": str(path), "PATH": "/usr/bin:/bin", "DUNNING_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "campaign.grace_days = 3" in proc.stderr and "Traceback" not in proc.stderr
