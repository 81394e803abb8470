"""Logging for the daemon: journald with structured fields under systemd, stderr elsewhere,
and a filter that keeps secrets out of every line.

Structured fields go through `extra=` (or `log_event`) with upper-case `TALKIE_*` names, so a
parent can run `journalctl -u talkie TALKIE_EVENT=reconnect`. On stderr they are appended as
`key=value` so the same facts show when developing.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any

#: Field names the daemon uses; any `TALKIE_*` key in `extra=` is passed to the journal.
STATE = "TALKIE_STATE"
SESSION = "TALKIE_SESSION"
EVENT = "TALKIE_EVENT"
LATENCY_MS = "TALKIE_LATENCY_MS"
FIELD_PREFIX = "TALKIE_"

REDACTED = "[REDACTED]"

# Patterns for secrets we were never told about. Each keeps its label and hides the value.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Google API keys: "AIza" + 35 URL-safe characters.
    (re.compile(r"AIza[0-9A-Za-z_\-]{35}"), REDACTED),
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/\-]+=*"), r"\1" + REDACTED),
    (re.compile(r"(?i)(x-goog-api-key['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)([?&;]key=)[^&\s'\"#]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)(\b(?:api[_-]?key|access_token|token|password|psk)['\"]?\s*[:=]\s*['\"]?)"
                r"[^\s'\",}&]+"), r"\1" + REDACTED),
)


class Redactor:
    """Replaces registered secret values and secret-looking strings with `[REDACTED]`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        for s in secrets:
            self.add(s)

    def add(self, secret: Any) -> None:
        """Register one value: a str, or a `config.Secret` (anything with `reveal()`), say the
        API key once it is read. Short values are ignored: hiding every "1234" would make
        logs unreadable and protects nothing."""
        if secret is not None and hasattr(secret, "reveal"):
            secret = secret.reveal()
        if not isinstance(secret, str) or len(secret) < 6:
            return
        with self._lock:
            if secret not in self._secrets:
                # Longest first, so a secret containing another is hidden whole.
                self._secrets = tuple(sorted((*self._secrets, secret), key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, REDACTED)
        for pattern, repl in _PATTERNS:
            text = pattern.sub(repl, text)
        return text


class RedactingFilter(logging.Filter):
    """Redacts a record in place: message, args, exception and stack text, string fields.

    Attached to handlers (not loggers) so records from any library are covered."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        r = self.redactor
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001  # a bad %-format still must not leak its args
            message = f"{record.msg!r} (unformattable args)"
        record.msg = r(message)
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            # Format once here so the traceback text (which includes exception messages and
            # source lines) is redacted; the formatter then reuses exc_text.
            record.exc_text = r(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = r(record.exc_text)
        if record.stack_info:
            record.stack_info = r(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key.startswith(FIELD_PREFIX) and isinstance(value, str):
                setattr(record, key, r(value))
        return True


class LogContext(logging.Filter):
    """What the box is doing now, stamped on every record as TALKIE_STATE and TALKIE_SESSION
    (the history conversation id) while known, so `journalctl TALKIE_SESSION=...` shows one
    conversation, library warnings included. A field given in `extra=` wins.

    The daemon sets `state` and `session` from the event loop; records from other threads
    read whatever was set last, which is what they happened during."""

    def __init__(self) -> None:
        super().__init__()
        self.state: str | None = None
        self.session: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in ((STATE, self.state), (SESSION, self.session)):
            if value is not None and getattr(record, key, None) is None:
                setattr(record, key, value)
        return True


class _StderrFormatter(logging.Formatter):
    """`time level logger: message key=value ...` with the TALKIE_* fields at the end."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{k[len(FIELD_PREFIX):].lower()}={v}"
                          for k, v in sorted(record.__dict__.items())
                          if k.startswith(FIELD_PREFIX) and v is not None)
        if not fields:
            return line
        head, sep, tail = line.partition("\n")  # fields on the first line, before a traceback
        return f"{head} {fields}{sep}{tail}"


def under_systemd(env: Mapping[str, str] | None = None) -> bool:
    """True when systemd started us with the journal at hand."""
    env = os.environ if env is None else env
    return bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"))


def setup_logging(
    level: int | str = logging.INFO,
    *,
    redactor: Redactor | None = None,
    journal: bool | None = None,
    stream: Any = None,
    logger_name: str | tuple[str, ...] = ("device", "talkie"),
    journal_sender: Any = None,
    library_level: int | str = logging.WARNING,
    context: LogContext | None = None,
) -> Redactor:
    """Send our loggers (`device.*`, `talkie`) at `level`, every library's at `library_level`
    (google-genai, websockets, ...), through one redacting handler; return its Redactor.

    The handler sits on the root logger because library records only reach the root: without
    it Python's last-resort handler would print their warnings, unredacted, to stderr. A
    `logging.basicConfig` stderr handler found there is removed (under systemd it would log
    every line twice); any other handler already there gets the redacting filter too.

    `journal=None` picks journald under systemd and stderr otherwise; True without
    systemd-python falls back to stderr with a warning. Call `redactor.add(api_key)` as soon
    as the key is read. Calling again replaces the handlers set up before. `journal_sender`
    replaces `systemd.journal.send` (tests capture what would reach journald). `context`
    stamps the daemon's state and session on every record (see LogContext)."""
    redactor = redactor or Redactor()
    if journal is None:
        journal = under_systemd()
    handler: logging.Handler | None = None
    fallback_reason = None
    if journal:
        try:
            from systemd.journal import JournalHandler  # type: ignore[import-not-found]
        except ImportError:
            fallback_reason = "systemd-python is not installed (pip install systemd-python)"
        else:
            kwargs: dict[str, Any] = {"SYSLOG_IDENTIFIER": "talkie"}
            if journal_sender is not None:
                kwargs["sender_function"] = journal_sender
            handler = JournalHandler(**kwargs)
            handler.setFormatter(logging.Formatter("%(message)s"))
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(_StderrFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if context is not None:
        handler.addFilter(context)  # before redaction, which then covers its fields too
    handler.addFilter(RedactingFilter(redactor))
    handler._talkie = True  # type: ignore[attr-defined]  # marks ours for replacement

    root = logging.getLogger()
    for old in root.handlers[:]:
        basic = type(old) is logging.StreamHandler and old.stream in (sys.stderr, sys.stdout)
        if getattr(old, "_talkie", False) or basic:
            root.removeHandler(old)
            if not basic:
                old.close()
        elif not any(isinstance(f, RedactingFilter) for f in old.filters):
            old.addFilter(RedactingFilter(redactor))
    root.addHandler(handler)
    root.setLevel(library_level)
    names = (logger_name,) if isinstance(logger_name, str) else logger_name
    for name in names:
        logging.getLogger(name).setLevel(level)
    if fallback_reason:
        logging.getLogger(__name__).warning(
            "journald logging unavailable: %s; logging to stderr", fallback_reason)
    return redactor


def log_event(logger: logging.Logger, event: str, msg: str, *args: object,
              level: int = logging.INFO, **fields: object) -> None:
    """Log `msg % args` with `TALKIE_EVENT=event` and `fields` as journal fields.

    Field names are upper-cased and given the `TALKIE_` prefix when missing:
    `log_event(log, "reconnect", "Live reconnect in %.1f s", d, attempt=3, latency_ms=812)`
    gives `TALKIE_EVENT=reconnect TALKIE_ATTEMPT=3 TALKIE_LATENCY_MS=812`."""
    if not logger.isEnabledFor(level):
        return
    extra: dict[str, object] = {EVENT: event}
    for key, value in fields.items():
        name = key.upper()
        if not name.startswith(FIELD_PREFIX):
            name = FIELD_PREFIX + name
        extra[name] = value
    logger.log(level, msg, *args, extra=extra, stacklevel=2)
