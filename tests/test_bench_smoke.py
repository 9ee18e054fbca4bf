"""`make bench` must keep working: the campaign benchmark, at a toy size, runs the engine
and the bare baseline on a real dev server, passes its correctness checks (every campaign
exhausted, 3 emails each at distinct Message-IDs, a ledger row per email, no skip) and
prints every figure with its ratio. The numbers themselves are not asserted: a benchmark's
figures are read, not timed in a test."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.devserver
def test_the_campaign_benchmark_runs_and_its_checks_pass(tmp_path):
    out = tmp_path / "figures.jsonl"
    args = ["--rounds", "1", "--n", "3", "--day-seconds", "0.5", "--saturate-n", "4", "--saturate-day", "0.5"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUNNING_")}
    done = subprocess.run([sys.executable, "-m", "bench.campaigns", *args, "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    figures = {r["figure"] for r in rows if "figure" in r}
    assert {"worker CPU per campaign", "server CPU per campaign", "campaigns per second", "events"} <= figures
    checks = {name: ok for r in rows if "checks" in r for name, ok in r["checks"].items()}
    assert any(name.startswith("every campaign ended exhausted") for name in checks) and all(checks.values()), checks
    assert all(len(r["engine"]) == len(r["baseline"]) == 1 for r in rows if "figure" in r)
