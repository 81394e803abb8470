"""Security checks of the running box and the parents' server.

Covered elsewhere, not repeated here: tokens and the parents' password hashed at rest, login
rate-limited, plain HTTP refused off loopback and behind a proxy marking plain HTTP
(tests/test_history_sync.py); secrets in any output of the suite (tests/leak_scan.py)."""

from __future__ import annotations

import hmac
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from server import db as sdb
from tests.test_run_service import (SIM_KEY, Box, events_file, simulator, speech_wav,  # noqa: F401
                                    start_box, write_config)


def listening(pid: int) -> list[str]:
    """Every listening socket (TCP, UDP, unix, raw) of process `pid`, as `ss` shows them."""
    out = subprocess.run(["ss", "-H", "-l", "-n", "-p", "-t", "-u", "-x", "-w"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return [line for line in out.splitlines() if f"pid={pid}," in line]


def test_ss_sees_a_listening_socket_of_a_process() -> None:
    """The check below can fail: `ss -p` does show a process's listening sockets here."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert any(str(s.getsockname()[1]) in line for line in listening(os.getpid()))


def test_the_running_box_opens_no_listening_socket(tmp_path: Path, speech_wav: Path,
                                                   simulator, start_box: Callable[..., Box]) -> None:
    """`talkie run` against an external Live simulator: idle, then in a conversation (the
    Live socket open, the child's question answered), nothing listens."""
    cfg = write_config(tmp_path, speech_wav, live={
        "simulator": False, "base_url": simulator.base_url, "ca_file": simulator.ca_file})
    events = events_file(tmp_path, "0.5 tap button\n")
    box = start_box(cfg, "--events", str(events), GEMINI_API_KEY=SIM_KEY)
    box.wait_for(lambda x: x == "READY=1", 90, what="READY=1")
    seen = [listening(box.proc.pid)]
    box.wait_for(lambda x: x == "STATUS=speaking", 60, what="the reply")
    seen.append(listening(box.proc.pid))
    assert box.proc.poll() is None
    box.signal(signal.SIGTERM)
    assert box.wait_exit(15) == 0
    assert seen == [[], []], seen


def test_secrets_are_compared_in_constant_time(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Device tokens and the parents' password are checked with hmac.compare_digest on their
    hashes, never with == on the secret; a wrong password costs the same scrypt work."""
    con = sdb.open_db(str(tmp_path / "s.db"))
    token = sdb.add_device(con, "box")
    sdb.set_password(con, "the parents' password")
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a, b):  # noqa: ANN001, ANN202
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(sdb.hmac, "compare_digest", spy)
    assert sdb.device_for_token(con, token) is not None
    assert sdb.parent_password_ok(con, "the parents' password")
    assert not sdb.parent_password_ok(con, "a wrong guess")
    assert len(compared) == 3
    for a, b in compared:
        assert token not in (a, b) and "password" not in a + b and "guess" not in a + b
    con.close()
