"""The suite's secret scanner (tests/leak_scan.py) catches a leak wherever it happens: run a
small pytest session with the plugin, whose tests leak the test secrets in each way."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.leak_scan import known_secrets

ROOT = Path(__file__).resolve().parents[1]

LEAKY = '''
import logging, subprocess, sys
from tests.test_provision import WIFI_PASSWORD
from tests.test_run_service import SIM_KEY

def test_prints():
    print("connecting with", WIFI_PASSWORD)

def test_logs():
    logging.getLogger("talkie").warning("using key %s", SIM_KEY)

def test_subprocess_output():
    subprocess.run([sys.executable, "-c", "import sys; print(sys.argv[1])", SIM_KEY],
                   capture_output=True)

def test_status_file(tmp_path):
    (tmp_path / "status.json").write_text('{"error": "%s"}' % SIM_KEY)

def test_a_0600_credential_is_where_a_key_belongs(tmp_path):
    cred = tmp_path / "gemini-api-key"
    cred.write_text(SIM_KEY)
    cred.chmod(0o600)

def test_clean():
    print("nothing secret here")
'''


def test_the_scanner_knows_the_suites_secrets() -> None:
    secrets = known_secrets()
    assert any(s.startswith("AIza") and len(s) == 39 for s in secrets)
    assert "correct horse battery" in secrets  # the provisioning tests' Wi-Fi password


def test_every_kind_of_leak_fails_the_test_that_made_it() -> None:
    work = Path(tempfile.mkdtemp(prefix="leak-scan-"))
    try:
        (work / "test_leaky.py").write_text(LEAKY)
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "tests.leak_scan", "-p", "no:cacheprovider",
             "-q", "-rf", "--show-capture=no", "-c", "/dev/null", "--rootdir", str(work),
             "--basetemp", str(work / "tmp"), "-o", "addopts=", str(work / "test_leaky.py")],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        text = out.stdout + out.stderr
        assert out.returncode == 1, text
        for name in ("test_prints", "test_logs", "test_subprocess_output"):
            assert any(line.startswith("FAILED ") and f"test_leaky.py::{name}" in line
                       for line in text.splitlines()), text
        assert "stdout call: holds the test secret corr...(21 chars)" in text
        assert "log call: holds the test secret AIza...(39 chars)" in text
        assert "subprocess " in text and "holds the test secret AIza" in text
        # The file is found when the module ends; a 0600 credential is not a leak.
        assert "status.json: holds the test secret" in text
        assert "gemini-api-key" not in text
        assert "test_clean" not in text.split("short test summary")[-1]
        assert "3 failed, 3 passed, 1 error" in text, "the file leak errs the module's end once"
    finally:
        shutil.rmtree(work, ignore_errors=True)
