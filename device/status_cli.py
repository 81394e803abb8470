"""`talkie status` and `talkie logs`: what a parent on SSH runs to see how the box is doing."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from device.status import StatusReport, default_status_path, read_status

UNIT = "talkie"


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `status` and `logs` on the CLI's subparsers."""
    p = sub.add_parser("status", help="show what the box is doing (state, Wi-Fi, errors)")
    p.add_argument("--json", action="store_true", help="print the status file as JSON")
    p.add_argument("--file", type=Path, default=None,
                   help=f"status file to read (default {default_status_path()})")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="show the daemon's log (journalctl -u talkie)")
    p.add_argument("--since", help='start time, as journalctl takes it: "1 hour ago", '
                                   '"today", "2026-11-22 18:00"')
    p.add_argument("--event", action="append", default=[],
                   help="only this event (reconnect, state, error, ...); repeat for several")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("-n", "--lines", type=int, default=None, help="last N lines only")
    p.add_argument("--verbose", action="store_true",
                   help="show every journal field (TALKIE_STATE, TALKIE_LATENCY_MS, ...)")
    p.add_argument("--directory", type=Path, default=None,
                   help="read journal files from this folder (e.g. an SD card mounted elsewhere)")
    p.set_defaults(func=cmd_logs)


# --- status -----------------------------------------------------------------------------

def _ago(iso: str | None, now: datetime) -> str:
    if not iso:
        return "never"
    try:
        t = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return f"{_duration((now - t).total_seconds())} ago ({t.astimezone().strftime('%Y-%m-%d %H:%M')})"


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m}m"
    if m:
        return f"{m}m {s}s"
    return f"{s}s"


def format_report(report: StatusReport, now: datetime | None = None) -> str:
    """The human-readable text of `talkie status`."""
    now = now or datetime.now(UTC)
    st = report.status
    if not report.running:
        lines = [f"Talkie is NOT running: {report.reason}.",
                 "  Check: systemctl status talkie   and   talkie logs -n 30"]
        if st is not None:
            lines.append(f"  Last known state: {st.state} (written {_ago(st.updated, now)})")
            for err in st.errors[-3:]:
                lines.append(f"  Error {_ago(err.get('at'), now)}: {err.get('message')}")
        return "\n".join(lines)
    assert st is not None
    w = st.wifi
    if w.ssid or w.signal_percent is not None or w.signal_dbm is not None:
        sig = (f"{w.signal_percent}%" if w.signal_percent is not None
               else f"{w.signal_dbm:.0f} dBm" if w.signal_dbm is not None else "signal unknown")
        wifi = f"{w.ssid or '(unknown network)'}, {sig}"
    else:
        wifi = "unknown (no nmcli or wireless interface)"
    live = st.live
    live_line = f"last connected {_ago(live.last_connect, now)}"
    if live.last_error:
        live_line += f"; last error {_ago(live.last_error_at, now)}: {live.last_error}"
    budget = ("no daily limit" if st.budget_left_s is None
              else f"{_duration(st.budget_left_s)} of talking left today")
    lines = [
        f"Talkie is running (pid {st.pid}), state: {st.state} for {_ago(st.since, now).split(' ago')[0]}",
        f"  Up for:            {_duration(st.uptime_s)}",
        f"  Last conversation: {_ago(st.last_conversation, now)}",
        f"  Wi-Fi:             {wifi}",
        f"  Gemini Live:       {live_line}",
        f"  Budget:            {budget}",
    ]
    if st.errors:
        lines.append(f"  Recent errors ({len(st.errors)}):")
        for err in st.errors[-5:]:
            lines.append(f"    {_ago(err.get('at'), now)}: {err.get('message')}")
    else:
        lines.append("  Recent errors:     none")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    """Exit 0 when the daemon runs, 3 when it does not (like `systemctl status`)."""
    report = read_status(args.file)
    if args.json:
        out = {"running": report.running, "reason": report.reason, "path": str(report.path),
               "status": asdict(report.status) if report.status else None}
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(format_report(report))
    return 0 if report.running else 3


# --- logs -------------------------------------------------------------------------------

def journalctl_argv(args: argparse.Namespace, journalctl: str = "journalctl") -> list[str]:
    """The journalctl command line for `talkie logs` arguments."""
    argv = [journalctl, "--no-pager", "-o", "verbose" if args.verbose else "short-iso"]
    if args.directory is not None:
        argv += ["--directory", str(args.directory)]
    # A unit match only: the events below are ANDed with it, OR-ed among themselves.
    argv += ["-u", UNIT]
    if args.since:
        argv += ["--since", args.since]
    if args.lines is not None:
        argv += ["-n", str(args.lines)]
    if args.follow:
        argv.append("--follow")
    argv += [f"TALKIE_EVENT={e}" for e in args.event]
    return argv


def cmd_logs(args: argparse.Namespace) -> int:
    exe = shutil.which("journalctl")
    if exe is None:
        print("talkie logs: journalctl was not found. It comes with systemd "
              "(apt-get install systemd); on a machine without it, run the daemon in a "
              "terminal to see its log on stderr.", file=sys.stderr)
        return 2
    argv = journalctl_argv(args, exe)
    sys.stdout.flush()
    try:
        os.execv(exe, argv)  # hand the terminal over: paging, Ctrl-C and --follow just work
    except OSError as e:
        print(f"talkie logs: cannot run {exe}: {e.strerror}", file=sys.stderr)
        return 2
    return 0  # not reached
