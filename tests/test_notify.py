"""sd_notify over a real unix datagram socket: a child process is the daemon, the test is
systemd. Covers systemd-python's sender and the plain-socket fallback."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]

# The child: READY, STATUS, healthy pings for HEALTHY_S, a blocked loop for BLOCK_S, healthy
# again, health() False for SICK_S, healthy, then STOPPING=1 and exit 0 on SIGTERM.
CHILD = textwrap.dedent("""
    import asyncio, os, signal, sys, time
    from device.notify import Notifier, watchdog_task

    async def main():
        n = Notifier(use_systemd=os.environ.get("USE_LIB") == "1")
        assert (n._lib is not None) == (os.environ["USE_LIB"] == "1")  # the path under test
        healthy = True
        n.ready(status="idle")
        n.status("listening")
        dog = asyncio.create_task(watchdog_task(n, lambda: healthy))
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await asyncio.sleep(1.0)
        n.status("blocking")
        time.sleep(1.2)               # the event loop is stuck: no pings may arrive
        n.status("unblocked")
        await asyncio.sleep(1.0)
        n.status("sick")
        healthy = False               # e.g. no mic frames: pings withheld
        await asyncio.sleep(1.0)
        healthy = True
        n.status("healed")
        await asyncio.sleep(0.6)
        n.status("waiting-for-term")
        await stop.wait()
        n.stopping()
        dog.cancel()
        sys.exit(0)

    asyncio.run(main())
""")


def _listen(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.2)
    return s


def _collect(sock: socket.socket, proc: subprocess.Popen[bytes],
             deadline: float) -> list[tuple[float, str]]:
    got: list[tuple[float, str]] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        msg = data.decode()
        got.append((time.monotonic() - t0, msg))
        if msg == "STATUS=waiting-for-term":
            proc.send_signal(signal.SIGTERM)
        if msg == "STOPPING=1":
            break
    return got


def _between(got: list[tuple[float, str]], start: str, end: str) -> list[float]:
    names = [m for _, m in got]
    i, j = names.index(start), names.index(end)
    return [t for t, m in got[i:j] if m == "WATCHDOG=1"]


@pytest.mark.parametrize("use_lib", ["1", "0"], ids=["systemd-python", "plain-socket"])
def test_ready_status_watchdog_rate_and_stall(tmp_path: Path, use_lib: str) -> None:
    path = str(tmp_path / "notify.sock")
    sock = _listen(path)
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000", USE_LIB=use_lib,
               PYTHONPATH=str(ROOT))
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([PY, "-c", CHILD], env=env, cwd=ROOT)
    try:
        got = _collect(sock, proc, deadline=20)
        rc = proc.wait(timeout=5)
    finally:
        proc.kill()
        sock.close()
    names = [m for _, m in got]
    assert names[0] == "READY=1\nSTATUS=idle", names[:3]
    assert names[1] == "STATUS=listening"
    assert names[-1] == "STOPPING=1" and rc == 0

    # Healthy: interval is half of 0.4 s -> about 5 pings per second.
    healthy = _between(got, "STATUS=listening", "STATUS=blocking")
    assert 3 <= len(healthy) <= 7, healthy  # 1 s at 0.2 s, with room for a loaded CI
    gaps = [b - a for a, b in itertools.pairwise(healthy)]
    assert all(0.12 < g < 0.6 for g in gaps), gaps

    # Blocked loop: nothing between blocking and unblocked (both sent around the sleep).
    assert _between(got, "STATUS=blocking", "STATUS=unblocked") == []
    t_block = got[names.index("STATUS=blocking")][0]
    t_unblock = got[names.index("STATUS=unblocked")][0]
    assert t_unblock - t_block > 1.1
    # The first wake-up after the stall is late: that ping is withheld, then pings resume.
    after = _between(got, "STATUS=unblocked", "STATUS=sick")
    assert 2 <= len(after) <= 6, after

    # health() False: no pings; back to healthy: pings again.
    assert _between(got, "STATUS=sick", "STATUS=healed") == []
    assert len(_between(got, "STATUS=healed", "STATUS=waiting-for-term")) >= 1


def test_abstract_socket_and_no_watchdog(tmp_path: Path) -> None:
    """An '@' address is the abstract namespace; without WATCHDOG_USEC no pings are sent."""
    name = f"talkie-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    child = textwrap.dedent("""
        import asyncio
        from device.notify import Notifier, watchdog_task
        async def main():
            n = Notifier(use_systemd=False)
            n.ready()
            await asyncio.wait_for(watchdog_task(n, lambda: True), 2)  # returns at once
            n.status("done")
        asyncio.run(main())
    """)
    env = dict(os.environ, NOTIFY_SOCKET="@" + name, PYTHONPATH=str(ROOT))
    env.pop("WATCHDOG_USEC", None)
    try:
        subprocess.run([PY, "-c", child], env=env, cwd=ROOT, check=True, timeout=20)
        assert sock.recv(100) == b"READY=1"
        assert sock.recv(100) == b"STATUS=done"
    finally:
        sock.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    from device.notify import Notifier, watchdog_interval
    n = Notifier(env={})
    assert not n.enabled
    n.ready()
    n.status("x")
    n.watchdog()
    n.stopping()
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 10.0
    # A watchdog meant for another process (WATCHDOG_PID) is not ours to feed.
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
