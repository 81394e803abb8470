"""A pytest plugin (loaded by tests/conftest.py): no test secret in any output of the suite.

The secrets are the made-up API keys and the Wi-Fi password the tests use, read from the test
sources themselves (`"AIza" "..."` literals and `WIFI_PASSWORD = "..."`), so a new one is
covered without a list to keep. Scanned:

- every test's captured stdout, stderr and log records (setup, call and teardown);
- the output of every subprocess a test ran through `communicate()` (`subprocess.run`,
  `check_output`, asyncio's `Process.communicate`) and what a fixture hands to `scan()`
  (e.g. the stderr lines of a running `talkie run`);
- every file the tests wrote under pytest's temporary directory, checked when each test
  module ends. A file only its owner can read (mode 0600: a credential, a NetworkManager
  keyfile, a token file) is where a secret belongs and is skipped.

A leak fails the test (or the module's last test) with where it was found, never the secret.
"""

from __future__ import annotations

import asyncio.subprocess
import os
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
_KEY_RE = re.compile(r'"AIza"\s*\+?\s*"([A-Za-z0-9_\-]{35})"')
_WIFI_RE = re.compile(r'WIFI_PASSWORD\s*=\s*"([^"]+)"')
MAX_FILE_BYTES = 16 * 2**20


def known_secrets(folder: Path = TESTS) -> list[str]:
    found: set[str] = set()
    for path in folder.glob("*.py"):
        text = path.read_text(encoding="utf-8", errors="replace")
        found.update("AIza" + m for m in _KEY_RE.findall(text))
        found.update(p for p in _WIFI_RE.findall(text) if len(p) >= 8)
    return sorted(found)


class LeakScanner:
    def __init__(self, secrets: list[str]) -> None:
        self.secrets = [(s, s.encode()) for s in secrets]
        self.found: list[str] = []
        self.allowed: set[Path] = set()

    def _which(self, data: str | bytes) -> list[str]:
        if isinstance(data, str):
            return [s for s, _ in self.secrets if s in data]
        return [s for s, b in self.secrets if b in data]

    def scan(self, where: str, data: str | bytes | None) -> None:
        """Record a leak if `data` holds a test secret (named by a fingerprint, not shown)."""
        if not data:
            return
        for secret in self._which(data):
            self.found.append(f"{where}: holds the test secret {_fingerprint(secret)}")

    def scan_files(self, root: Path, since: float) -> None:
        for dirpath, _, files in os.walk(root):
            for name in files:
                path = Path(dirpath, name).resolve()
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode) or st.st_mtime < since \
                        or st.st_size > MAX_FILE_BYTES or not st.st_mode & 0o077 \
                        or path in self.allowed:
                    continue
                try:
                    self.scan(f"file {path}", path.read_bytes())
                except OSError:
                    continue

    def redact(self, text: str) -> str:
        for secret, _ in self.secrets:
            text = text.replace(secret, _fingerprint(secret))
        return text

    def take(self) -> list[str]:
        found, self.found = self.found, []
        return list(dict.fromkeys(found))


def _fingerprint(secret: str) -> str:
    return f"{secret[:4]}...({len(secret)} chars)"


SCANNER = LeakScanner(known_secrets())


def scan(where: str, data: str | bytes | None) -> None:
    """For fixtures that read a subprocess's output themselves (line by line)."""
    SCANNER.scan(where, data)


def allow_secret_in(path: Path) -> None:
    """A file a test makes to hold a secret on purpose (a fake service's store, an insecure
    credential a check must catch): not a leak."""
    SCANNER.allowed.add(Path(path).resolve())


def _label(args: Any) -> str:
    argv = args if isinstance(args, (list, tuple)) else [args]
    return SCANNER.redact("subprocess " + " ".join(str(a) for a in argv[:4]))[:160]


def pytest_configure(config: pytest.Config) -> None:
    popen_communicate = subprocess.Popen.communicate
    process_communicate = asyncio.subprocess.Process.communicate

    def communicate(self: subprocess.Popen[Any], *a: Any, **kw: Any) -> Any:
        out = popen_communicate(self, *a, **kw)
        for part in out:
            SCANNER.scan(_label(self.args), part)
        return out

    async def acommunicate(self: asyncio.subprocess.Process, *a: Any, **kw: Any) -> Any:
        out = await process_communicate(self, *a, **kw)
        for part in out:
            SCANNER.scan(f"subprocess pid {self.pid}", part)
        return out

    subprocess.Popen.communicate = communicate  # type: ignore[method-assign]
    asyncio.subprocess.Process.communicate = acommunicate  # type: ignore[method-assign]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    for name, text in report.sections:
        if name.endswith(f" {report.when}"):  # later phases repeat the earlier sections
            SCANNER.scan(f"{item.nodeid} {name}", text)
    if report.longrepr is not None:
        SCANNER.scan(f"{item.nodeid} failure text ({report.when})", str(report.longrepr))
    leaks = SCANNER.take()
    if leaks:
        report.outcome = "failed"
        report.longrepr = "a test secret leaked:\n  " + "\n  ".join(leaks)


@pytest.fixture(scope="module", autouse=True)
def _no_secret_in_files_written(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    since = time.time() - 1
    yield
    SCANNER.scan_files(tmp_path_factory.getbasetemp(), since)
    leaks = SCANNER.take()
    if leaks:
        pytest.fail("a test secret leaked into a file:\n  " + "\n  ".join(leaks), pytrace=False)
