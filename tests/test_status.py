"""The status file (atomic, redacted, bounded) and `talkie status` / `talkie logs` as a parent
on SSH sees them."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from device.logs import Redactor
from device.status import (
    MAX_ERRORS,
    StatusFile,
    WifiInfo,
    default_status_path,
    parse_nmcli_wifi,
    parse_proc_wireless,
    read_status,
    read_wifi,
)
from device.status_cli import add_commands

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "AIzaSy" + "K" * 33


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="talkie")
    add_commands(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_path_follows_runtime_directory() -> None:
    assert default_status_path({"RUNTIME_DIRECTORY": "/run/talkie"}) == Path("/run/talkie/status.json")
    assert default_status_path({"RUNTIME_DIRECTORY": "/run/a:/run/b"}) == Path("/run/a/status.json")
    assert default_status_path({}) == Path("/run/talkie/status.json")


def test_atomic_writes_never_show_half_a_file(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    sf = StatusFile(path)
    sf.set_state("idle")
    bad: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                json.loads(path.read_text())
            except ValueError as e:  # a torn or empty file
                bad.append(str(e))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(300):
            sf.set_state("listening" if i % 2 else "thinking")
            sf.add_error("x" * (i % 50))  # files of varying length
    finally:
        done.set()
        t.join()
    assert bad == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]  # no temp files left
    # Readable by a parent's shell even under the unit's UMask=0077.
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_content_errors_are_bounded_and_redacted(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    sf = StatusFile(path, redact=Redactor([API_KEY]))
    sf.set_state("connecting")
    sf.live_failed(ConnectionError(f"403 for wss://host/ws?key={API_KEY}"))
    for i in range(MAX_ERRORS + 5):
        sf.add_error(RuntimeError(f"error {i} with key {API_KEY}"))
    sf.conversation_ended()
    sf.live_connected()
    sf.set_budget_left(754.0)
    sf.set_wifi(WifiInfo(ssid="Home", signal_percent=71, source="nmcli"))
    raw = path.read_text()
    assert API_KEY not in raw
    data = json.loads(raw)
    assert data["state"] == "connecting" and data["pid"] == os.getpid()
    assert len(data["errors"]) == MAX_ERRORS
    assert data["errors"][-1]["message"] == "RuntimeError: error 14 with key [REDACTED]"
    assert data["live"]["last_error"].startswith("ConnectionError: 403")
    assert data["wifi"]["ssid"] == "Home" and data["budget_left_s"] == 754.0


def test_talkie_status_when_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "status.json"
    sf = StatusFile(path)
    sf.set_state("listening")
    sf.set_wifi(WifiInfo(ssid="Home", signal_percent=71, source="nmcli"))
    sf.set_budget_left(600)
    sf.add_error("Live connect failed: timeout")
    assert _cli("status", "--file", str(path)) == 0
    out = capsys.readouterr().out
    assert f"Talkie is running (pid {os.getpid()}), state: listening" in out
    assert "Wi-Fi:             Home, 71%" in out
    assert "10m 0s of talking left today" in out
    assert "Live connect failed: timeout" in out
    assert "Last conversation: never" in out

    assert _cli("status", "--json", "--file", str(path)) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["running"] is True and data["status"]["state"] == "listening"


def test_talkie_status_when_the_daemon_died(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A daemon that was killed leaves its file behind: the pid in it is dead."""
    path = tmp_path / "status.json"
    child = textwrap.dedent(f"""
        from pathlib import Path
        from device.status import StatusFile
        sf = StatusFile(Path({str(path)!r}))
        sf.set_state("speaking")
        sf.add_error("speaker underrun")
    """)
    subprocess.run([sys.executable, "-c", child], cwd=ROOT, check=True, timeout=30,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert _cli("status", "--file", str(path)) == 3
    out = capsys.readouterr().out
    assert "Talkie is NOT running: the daemon that wrote" in out and "has exited" in out
    assert "Last known state: speaking" in out and "speaker underrun" in out
    assert "systemctl status talkie" in out

    assert _cli("status", "--json", "--file", str(path)) == 3
    assert json.loads(capsys.readouterr().out)["running"] is False


def test_talkie_status_without_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("status", "--file", str(tmp_path / "none.json")) == 3
    assert "NOT running: no status file at" in capsys.readouterr().out


def test_reused_pid_is_not_taken_for_the_daemon(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    sf = StatusFile(path)
    sf.status.pid_start_ticks = (sf.status.pid_start_ticks or 0) + 12345  # another process
    sf.write()
    assert read_status(path).running is False


def test_clean_exit_removes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    sf = StatusFile(path)
    sf.set_state("idle")
    sf.remove()
    assert not path.exists()


def test_unwritable_directory_is_reported_not_raised(tmp_path: Path) -> None:
    errors: list[OSError] = []
    blocker = tmp_path / "file"
    blocker.write_text("")
    sf = StatusFile(blocker / "status.json", on_error=errors.append)
    sf.set_state("idle")
    sf.set_state("listening")
    assert len(errors) == 1  # once per cause, not once per state change


def test_wifi_parsers() -> None:
    out = "no:Neighbours:40:wlan0\nyes:My\\:Home:71:wlan0\n"
    assert parse_nmcli_wifi(out) == WifiInfo(ssid="My:Home", signal_percent=71,
                                             interface="wlan0", source="nmcli")
    assert parse_nmcli_wifi("no:X:10:wlan0\n") is None
    proc = ("Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE\n"
            " face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22\n"
            " wlan0: 0000   58.  -52.  -256        0      0      0      0     12        0\n")
    assert parse_proc_wireless(proc) == WifiInfo(interface="wlan0", signal_dbm=-52.0,
                                                 source="/proc/net/wireless")


async def test_read_wifi_runs_nmcli_and_falls_back(tmp_path: Path) -> None:
    nmcli = tmp_path / "nmcli"  # a stand-in for NetworkManager's CLI, printing its -t format
    nmcli.write_text("#!/bin/sh\necho 'yes:Home:64:wlan0'\n")
    nmcli.chmod(0o755)
    info = await read_wifi(str(nmcli))
    assert info.ssid == "Home" and info.signal_percent == 64
    proc = tmp_path / "wireless"
    proc.write_text("h1\nh2\n wlan0: 0000   58.  -61.  -256  0 0 0 0 0 0\n")
    info = await read_wifi(str(tmp_path / "missing-nmcli"), proc=proc)
    assert info.signal_dbm == -61.0 and info.ssid is None
    assert await read_wifi(str(tmp_path / "missing-nmcli"), proc=tmp_path / "none") == WifiInfo()


async def test_read_wifi_hung_nmcli_times_out_or_cancels_without_leftovers(tmp_path: Path) -> None:
    """A hung nmcli: the timeout falls back to /proc, and a shutdown cancel is not swallowed;
    either way the nmcli process is killed, not left behind."""
    import asyncio
    nmcli = tmp_path / "nmcli"
    pids = tmp_path / "pids"
    nmcli.write_text(f"#!/bin/sh\necho $$ >> {pids}\nexec sleep 30\n")
    nmcli.chmod(0o755)

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"

    assert await read_wifi(str(nmcli), proc=tmp_path / "none", timeout=0.5) == WifiInfo()
    task = asyncio.create_task(read_wifi(str(nmcli), proc=tmp_path / "none", timeout=30))
    while len(pids.read_text().split()) < 2:
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for pid in map(int, pids.read_text().split()):
        assert not alive(pid), f"nmcli {pid} left running"


def _logs(argv: list[str], path_env: str) -> subprocess.CompletedProcess[str]:
    code = ("import sys, argparse; from device.status_cli import add_commands;"
            "p = argparse.ArgumentParser(prog='talkie');"
            "add_commands(p.add_subparsers(required=True));"
            "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    return subprocess.run([sys.executable, "-c", code, "logs", *argv], cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), PATH=path_env))


def test_talkie_logs_without_journalctl(tmp_path: Path) -> None:
    r = _logs([], str(tmp_path))  # an empty PATH: no journalctl
    assert r.returncode == 2
    assert "journalctl was not found" in r.stderr and "apt-get install systemd" in r.stderr


def test_talkie_logs_runs_journalctl(tmp_path: Path) -> None:
    assert shutil.which("journalctl"), "CI installs systemd (apt) for these tests"
    journal = tmp_path / "journal"
    journal.mkdir()
    r = _logs(["--directory", str(journal), "--since", "1 hour ago", "--event", "reconnect",
               "-n", "5"], os.environ["PATH"])
    # An empty journal folder: journalctl itself answers, with no entries.
    assert r.returncode == 0, r.stderr
    assert "No entries" in r.stdout + r.stderr
    r = _logs(["--directory", str(journal), "--since", "not a time"], os.environ["PATH"])
    assert r.returncode != 0 and "not a time" in r.stderr  # journalctl's own clear error


def test_journalctl_argv() -> None:
    from device.status_cli import journalctl_argv
    ns = argparse.Namespace(verbose=False, directory=None, since="today", lines=None,
                            follow=True, event=["reconnect", "error"])
    assert journalctl_argv(ns) == ["journalctl", "--no-pager", "-o", "short-iso", "-u", "talkie",
                                   "--since", "today", "--follow",
                                   "TALKIE_EVENT=reconnect", "TALKIE_EVENT=error"]


def test_talkie_logs_filter_is_unit_and_any_event(tmp_path: Path) -> None:
    """journalctl's own parse of our command line: events OR-ed, AND the talkie unit."""
    journal = tmp_path / "journal"
    journal.mkdir()
    code = ("import sys, argparse; from device.status_cli import add_commands;"
            "p = argparse.ArgumentParser(prog='talkie');"
            "add_commands(p.add_subparsers(required=True));"
            "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    r = subprocess.run([sys.executable, "-c", code, "logs", "--directory", str(journal),
                        "--event", "reconnect", "--event", "error"], cwd=ROOT, check=False,
                       capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), SYSTEMD_LOG_LEVEL="debug"))
    line = next(x for x in r.stderr.splitlines() if x.startswith("Journal filter:"))
    assert line.startswith("Journal filter: ((TALKIE_EVENT=error OR TALKIE_EVENT=reconnect) AND (")
    assert "_SYSTEMD_UNIT=talkie.service" in line
