"""Logging: secrets never reach any handler's output, tracebacks included; structured fields
reach the journal (through systemd-python's real JournalHandler) and stderr."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device.logs import REDACTED, Redactor, log_event, setup_logging, under_systemd

ROOT = Path(__file__).resolve().parents[1]
# Shaped like a Google API key (AIza + 35 characters), made up for the test.
API_KEY = "AIzaSyTEST" + "x" * 24 + "abcde"
assert len(API_KEY) == 39
WIFI_PSK = "correct-horse-battery"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """setup_logging configures the root logger; give other tests theirs back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    filters = {h: h.filters[:] for h in handlers}  # pytest's own capture handlers among them
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
        h.filters[:] = filters[h]
    for name in ("device", "talkie"):
        logging.getLogger(name).setLevel(logging.NOTSET)
    root.setLevel(level)


def _all_text(records: list[dict[str, Any]]) -> str:
    return "\n".join(f"{k}={v}" for r in records for k, v in r.items())


def _leaky_logging(logger: logging.Logger) -> None:
    """Every way a secret gets into a log line."""
    logger.info("key is %s", API_KEY)
    logger.info(f"inline {API_KEY} and psk {WIFI_PSK}")
    logger.warning("GET wss://example/ws?alt=json&key=%s HTTP/1.1", "sekrit-query-value-9")
    logger.warning("headers: {'x-goog-api-key': '%s'}", "another-unregistered-123")
    logger.warning("Authorization: Bearer ya29.a0AfH6SMBtokenvalue")
    log_event(logger, "connect_failed", "connect failed: %s", "boom",
              session="s1", detail=f"url had {API_KEY}")
    try:
        raise ConnectionError(f"handshake rejected for key {API_KEY} / {WIFI_PSK}")
    except ConnectionError:
        logger.exception("Live session failed")
    try:
        _raise_with_local_secret()
    except RuntimeError:
        logger.exception("nested")


def _raise_with_local_secret() -> None:
    # The secret is in the source line shown by the traceback, not only in the message.
    raise RuntimeError("bad key AIza" "SyUNREGISTEREDbutLooksLikeAKey12345")


LEAKS = [API_KEY, WIFI_PSK, "sekrit-query-value-9", "another-unregistered-123",
         "ya29.a0AfH6SMBtokenvalue", "AIza" "SyUNREGISTEREDbutLooksLikeAKey12345"]


def test_stderr_handler_redacts_messages_args_fields_and_tracebacks() -> None:
    out = io.StringIO()
    red = setup_logging(logging.DEBUG, journal=False, stream=out, logger_name="device.t1")
    red.add(API_KEY)
    red.add(WIFI_PSK)
    log = logging.getLogger("device.t1.live")
    _leaky_logging(log)
    text = out.getvalue()
    for leak in LEAKS:
        assert leak not in text, leak
    assert text.count(REDACTED) >= 9
    assert "Traceback (most recent call last)" in text  # tracebacks kept, only redacted
    assert "ConnectionError: handshake rejected for key [REDACTED]" in text
    assert "event=connect_failed" in text and "session=s1" in text


def test_library_loggers_are_redacted_and_filtered_by_level() -> None:
    """google-genai and websockets log through their own loggers: same handler, same
    redaction, WARNING and up only (their DEBUG lines carry URLs and frames)."""
    out = io.StringIO()
    red = setup_logging(logging.DEBUG, journal=False, stream=out, logger_name="device.t4")
    red.add(API_KEY)
    logging.getLogger("google_genai.live").warning("connect to wss://h/ws?key=%s", API_KEY)
    logging.getLogger("websockets.client").debug("> GET /ws?key=%s", API_KEY)
    logging.getLogger("device.t4").debug("debug from our code")
    text = out.getvalue()
    assert API_KEY not in text
    assert "google_genai.live: connect to wss://h/ws?key=[REDACTED]" in text
    assert "> GET" not in text and "debug from our code" in text


def test_basicconfig_handler_is_replaced_and_others_get_the_filter() -> None:
    """cli.main() calls logging.basicConfig before `talkie run` sets up logging."""
    root = logging.getLogger()
    basic = logging.StreamHandler(sys.stderr)  # what basicConfig installs
    other_out = io.StringIO()
    other = logging.StreamHandler(other_out)  # someone else's handler, e.g. a file
    root.addHandler(basic)
    root.addHandler(other)
    out = io.StringIO()
    red = setup_logging(logging.INFO, journal=False, stream=out)
    red.add(API_KEY)
    assert basic not in root.handlers and other in root.handlers
    logging.getLogger("talkie").info("cli logger: %s", API_KEY)  # main's CLI logger name
    logging.getLogger("device.daemon").info("daemon logger: %s", API_KEY)
    assert "cli logger: [REDACTED]" in out.getvalue()
    assert "daemon logger: [REDACTED]" in out.getvalue()
    assert API_KEY not in other_out.getvalue() and "[REDACTED]" in other_out.getvalue()


def test_journal_handler_gets_fields_and_no_secret() -> None:
    sent: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []

    def sender(MESSAGE: str, **fields: Any) -> None:  # stands in for sd_journal_send only
        # Like journald, keep only valid field names (upper case); lower-case LogRecord
        # attributes that JournalHandler passes along are dropped by journald too.
        raw.append({"MESSAGE": MESSAGE, **fields})
        sent.append({"MESSAGE": MESSAGE, **{k: v for k, v in fields.items() if k.isupper()}})

    red = setup_logging(logging.INFO, journal=True, journal_sender=sender,
                        logger_name="device.t2")
    red.add(API_KEY)
    red.add(WIFI_PSK)
    log = logging.getLogger("device.t2")
    _leaky_logging(log)
    log_event(log, "reconnect", "Live reconnect in %.1f s", 1.25, state="connecting",
              latency_ms=812, attempt=3)
    text = _all_text(raw)  # everything handed to sd_journal_send, valid field or not
    for leak in LEAKS:
        assert leak not in text, leak
    rec = sent[-1]
    assert rec["MESSAGE"] == "Live reconnect in 1.2 s"
    assert rec["TALKIE_EVENT"] == "reconnect"
    assert rec["TALKIE_STATE"] == "connecting"
    assert rec["TALKIE_LATENCY_MS"] == 812 and rec["TALKIE_ATTEMPT"] == 3
    assert rec["SYSLOG_IDENTIFIER"] == "talkie"
    exc = next(r for r in sent if "Live session failed" in r["MESSAGE"])
    assert "Traceback" in exc["MESSAGE"] and "[REDACTED]" in exc["EXCEPTION_TEXT"]


def test_journal_send_serializes_fields_for_journald() -> None:
    """Our fields have names journald accepts (upper-case letters, digits, underscore, not
    starting with _), so `journalctl TALKIE_EVENT=wake` finds them."""
    sent: list[dict[str, Any]] = []
    setup_logging(journal=True, journal_sender=lambda MESSAGE, **f: sent.append(f),
                  logger_name="device.t3")
    log_event(logging.getLogger("device.t3"), "wake", "woke", session="abc", gesture="shake")
    talkie = {k for k in sent[0] if k.startswith("TALKIE_")}
    assert talkie == {"TALKIE_EVENT", "TALKIE_SESSION", "TALKIE_GESTURE"}
    assert all(k.replace("_", "").isalnum() and k.isupper() for k in talkie)


def test_journal_requested_without_systemd_python_falls_back_to_stderr(tmp_path: Path) -> None:
    """A missing systemd-python must not stop the daemon: stderr, and one warning saying so."""
    shadow = tmp_path / "shadow" / "systemd"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('hidden for the test')\n")
    code = ("import logging; from device.logs import setup_logging, log_event;"
            "setup_logging(journal=True); log_event(logging.getLogger('device'), 'x', 'hello')")
    env = dict(os.environ, PYTHONPATH=f"{shadow.parent}{os.pathsep}{ROOT}")
    r = subprocess.run([sys.executable, "-c", code], env=env, check=False, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert "systemd-python is not installed" in r.stderr
    assert "hello event=x" in r.stderr


@pytest.mark.parametrize("env,expected", [
    ({}, False), ({"INVOCATION_ID": "abc"}, True), ({"JOURNAL_STREAM": "8:123"}, True)])
def test_under_systemd(env: dict[str, str], expected: bool) -> None:
    assert under_systemd(env) is expected


def test_redactor_patterns_leave_ordinary_text() -> None:
    from device.config import Secret
    r = Redactor(["s3cr3t-value"])
    r.add(Secret("from-the-credential-file"))
    assert r("key from-the-credential-file") == f"key {REDACTED}"
    assert r("state idle -> listening, latency 812 ms") == "state idle -> listening, latency 812 ms"
    assert r("a s3cr3t-value b") == f"a {REDACTED} b"
    assert r("monkey=1 key=abc123&x=2") == "monkey=1 key=abc123&x=2"  # only query-style key=
    assert r("https://h/p?key=abc123&x=2") == f"https://h/p?key={REDACTED}&x=2"
    assert r("api_key: 'zzz999'") == f"api_key: '{REDACTED}'"


def test_context_stamps_state_and_session_on_every_record() -> None:
    """The daemon's LogContext: every record reaching the journal while a conversation runs
    carries TALKIE_STATE and TALKIE_SESSION, library records too, so
    `journalctl TALKIE_SESSION=<id>` shows one conversation; a field given explicitly wins,
    and nothing is stamped while unknown."""
    from device.logs import LogContext

    sent: list[dict[str, Any]] = []
    context = LogContext()
    setup_logging(logging.INFO, journal=True, context=context, logger_name="device.t4",
                  journal_sender=lambda MESSAGE, **f: sent.append({"MESSAGE": MESSAGE, **f}))
    log = logging.getLogger("device.t4")
    log.info("booting")
    context.state = "listening"
    context.session = "0b7e7c1e-conv"
    log.info("heard something")
    logging.getLogger("websockets.client").warning("keepalive ping timeout")
    log_event(log, "reconnect", "Live reconnect", state="connecting")
    context.state, context.session = "idle", None
    log.info("back to sleep")

    by_msg = {r["MESSAGE"]: r for r in sent}
    assert "TALKIE_STATE" not in by_msg["booting"] and "TALKIE_SESSION" not in by_msg["booting"]
    for msg in ("heard something", "keepalive ping timeout"):
        assert by_msg[msg]["TALKIE_STATE"] == "listening", by_msg[msg]
        assert by_msg[msg]["TALKIE_SESSION"] == "0b7e7c1e-conv"
    assert by_msg["Live reconnect"]["TALKIE_STATE"] == "connecting"  # explicit wins
    assert by_msg["Live reconnect"]["TALKIE_EVENT"] == "reconnect"
    assert by_msg["back to sleep"]["TALKIE_STATE"] == "idle"
    assert "TALKIE_SESSION" not in by_msg["back to sleep"]
