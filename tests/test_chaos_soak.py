"""A short chaos soak in `make test`: the real daemon in its own process for two minutes of
talk under random faults from every side (tests/soak_box.py; `make soak` runs the long one).

It checks what a family would notice: the box never died, every turn it completed reached
the parents' server exactly once, no question went unanswered without the box saying so,
memory did not run away, and the box came back to idle by itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_short_chaos_soak_of_the_real_daemon(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SOAK_KINDS"}
    env.update(SOAK_MINUTES="2", SOAK_SEED="20261206", SOAK_FAULT_EVERY_S="6",
               SOAK_DIR=str(tmp_path / "soak"))
    out = subprocess.run([sys.executable, "-m", "tests.soak_box"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    lines = out.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{out.stderr[-3000:]}"
    summary = json.loads(lines[-1])
    log = (tmp_path / "soak" / "daemon.log").read_text(errors="replace")[-4000:]
    assert summary["restarts"] == 0, log
    assert summary["turns_lost"] == 0, (summary, log)
    assert summary["errors"] == [], (summary["errors"], log)
    assert summary["ok"] and out.returncode == 0
    assert summary["turns_completed"] >= 5
    assert summary["turns_on_server"] == summary["turns_completed"]
    assert summary["exit_code"] == 0
    assert summary["faults_total"] >= 8 and len(summary["faults"]) >= 5, summary["faults"]
    assert summary["rss_end_mb"] - summary["rss_start_mb"] < 25
    for key in ("faults", "turns_completed", "turns_lost", "restarts", "rss_start_mb",
                "rss_end_mb"):
        assert key in summary
