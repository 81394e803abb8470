"""Coverage-guided fuzzing (atheris, libFuzzer) of the parsers that take outside bytes, for a
bounded number of runs with a fixed seed (tests/atheris_targets.py; run one longer by hand
with `-max_total_time=600`). A crash prints the input and the traceback and fails here."""

from __future__ import annotations

import importlib.util
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# atheris ships wheels for x86_64 Linux only; elsewhere it needs clang and libFuzzer to build.
pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64" and importlib.util.find_spec("atheris") is None,
    reason="atheris has no wheel for this machine (the test extras install it on x86_64)")


@pytest.mark.parametrize("target, runs", [("config", 20_000), ("wav", 20_000),
                                          ("sync_batch", 50_000)])
def test_atheris_target_runs_without_a_crash(target: str, runs: int, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "atheris_targets.py"), target, f"-runs={runs}",
         "-seed=1", f"-artifact_prefix={tmp_path}/"], cwd=ROOT, capture_output=True,
        text=True, timeout=600, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert f"Done {runs} runs" in log
