"""`make bench`: every benchmark in one run, then one table of every ratio against its target.

    python -m bench.run [--full]

Quick (the default, about ten minutes on 2 cores) or `--full` (the sizes the issue names:
1,000 webhooks, 5,000 sleeping campaigns, more rounds). Each script runs in its own process,
one after another (never two at once: they share the machine's cores), and appends its
figures to one JSON-lines file; the summary reads that file. Exit 1 when a correctness
check failed (a missed target is reported, not an error)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

QUICK = {
    "campaigns": ["--rounds", "2", "--n", "50", "--saturate-n", "150", "--scale-out"],
    "ingest": ["--rounds", "2", "--n", "300"],
    "memory": ["--rounds", "1", "--sizes", "100,1000"],
    "timeskip": ["--rounds", "2", "--n", "10"],
}
FULL = {
    "campaigns": ["--rounds", "3", "--n", "100", "--saturate-n", "300", "--scale-out"],
    "ingest": ["--rounds", "3", "--n", "1000"],
    "memory": ["--rounds", "2", "--sizes", "100,1000,5000"],
    "timeskip": ["--rounds", "3", "--n", "20"],
}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // (1024 * 1024)
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB, Python {platform.python_version()}, {platform.system()}"


def summary(out: Path) -> tuple[list[dict], list[str]]:
    figures, failed = [], []
    for line in out.read_text().splitlines():
        row = json.loads(line)
        if "checks" in row:
            failed += [f"{row['bench']}: {name}" for name, ok in row["checks"].items() if not ok]
        elif row.get("target"):
            figures.append(row)
    return figures, failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--only", help="comma-separated: campaigns,ingest,memory,timeskip")
    args = ap.parse_args()
    plan = FULL if args.full else QUICK
    names = args.only.split(",") if args.only else list(plan)
    out = Path(tempfile.mkdtemp(prefix="bench-run-")) / "figures.jsonl"
    started = time.monotonic()
    print(f"# {datetime.now(UTC):%Y-%m-%d} on {machine()}", flush=True)
    for name in names:
        print(f"\n# python -m bench.{name} {' '.join(plan[name])}", flush=True)
        subprocess.run([sys.executable, "-m", f"bench.{name}", *plan[name], "--out", str(out)], check=False)
    figures, failed = summary(out)
    print(f"\n== every ratio against its target ({(time.monotonic() - started) / 60:.1f} min)")
    print(f"{'benchmark':58} {'figure':36} {'engine':>9} {'bare':>9} {'ratio':>6}  target")
    for f in figures:
        med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
        mark = "ok" if f["holds"] else "MISSED"
        print(f"{f['bench'][:58]:58} {f['figure'][:36]:36} {med(f['engine']):9.3g} {med(f['baseline']):9.3g} "
              f"{f['ratio']:6.2f}  {f['target']} {mark}")  # fmt: skip
    for line in failed:
        print(f"check FAILED: {line}")
    print(f"figures: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
