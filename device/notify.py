"""sd_notify for a Type=notify service: READY, STATUS, STOPPING and a health-gated watchdog.

Uses systemd-python when installed; otherwise sends the same datagram to `$NOTIFY_SOCKET`
itself (the protocol is one `KEY=value` line per datagram). Outside systemd (no socket) every
call is a cheap no-op, so the daemon calls these unconditionally.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

#: A ping is skipped when the loop woke this much later than asked (seconds): the loop is
#: too busy to serve audio, so systemd should notice if it lasts.
DEFAULT_MAX_LAG_S = 1.0


def _systemd_notify() -> Callable[[str], object] | None:
    try:
        from systemd import daemon  # type: ignore[import-not-found]
    except ImportError:
        return None
    return daemon.notify  # type: ignore[no-any-return]


class Notifier:
    """Sends sd_notify messages; a no-op when `NOTIFY_SOCKET` is unset."""

    def __init__(self, env: Mapping[str, str] | None = None, *, use_systemd: bool = True) -> None:
        env = os.environ if env is None else env
        self.socket_path = env.get("NOTIFY_SOCKET") or None
        self._lib = _systemd_notify() if use_systemd and env is os.environ else None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    def _send(self, message: str) -> None:
        if self.socket_path is None:
            return
        if self._lib is not None:
            self._lib(message)
            return
        addr = self.socket_path
        if addr.startswith("@"):  # abstract namespace: a leading NUL byte
            addr = "\0" + addr[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode(), addr)
        except OSError as e:
            # systemd gone or socket full: never take the daemon down for a notification.
            log.debug("sd_notify %s failed: %s", message.split("=", 1)[0], e)

    def ready(self, status: str | None = None) -> None:
        """Tell systemd start-up is done (audio and GPIO are up)."""
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        """One line shown by `systemctl status talkie`."""
        self._send("STATUS=" + text.replace("\n", " "))

    def stopping(self) -> None:
        """Tell systemd a clean shutdown has begun."""
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        """One keep-alive ping; call only when healthy (use `watchdog_task`)."""
        self._send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of `WATCHDOG_USEC`), or None when systemd wants none.

    `WATCHDOG_PID`, when set, must be this process: a child started by the daemon must not
    ping for it."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number; watchdog pings disabled", usec)
        return None
    return value / 2_000_000 if value > 0 else None


async def watchdog_task(
    notifier: Notifier,
    health: Callable[[], bool],
    *,
    interval: float | None = None,
    max_lag: float = DEFAULT_MAX_LAG_S,
) -> None:
    """Ping systemd's watchdog at half `WATCHDOG_USEC` while the daemon is healthy.

    Runs until cancelled. A blocked event loop stops the pings by itself (this task cannot
    run); a loop that wakes us more than `max_lag` late, or `health()` returning False (say,
    no mic frames for a while), skips the ping, so a lasting fault ends in systemd's restart.
    Returns at once when no watchdog is configured."""
    if interval is None:
        interval = watchdog_interval()
    if interval is None or not notifier.enabled:
        return
    # Sleep in small steps so one late wake-up is measured against a short expectation.
    step = min(interval, 1.0)
    last_ping = 0.0
    unhealthy_logged = False
    while True:
        asked = time.monotonic()
        await asyncio.sleep(step)
        now = time.monotonic()
        lag = now - asked - step
        if now - last_ping < interval - step / 2:
            continue
        try:
            healthy = bool(health())
        except Exception:  # a broken check is an unhealthy daemon, not a dead watchdog task
            log.exception("watchdog health check failed")
            healthy = False
        if lag > max_lag or not healthy:
            if not unhealthy_logged:
                log.warning("watchdog ping withheld: loop lag %.0f ms, health %s",
                            lag * 1000, healthy)
                unhealthy_logged = True
            continue
        unhealthy_logged = False
        notifier.watchdog()
        last_ping = now
