"""Start-up time: process start to `READY=1` over a real NOTIFY_SOCKET, and import times.

    python bench/startup.py                          # the systemd-integration skeleton
    python bench/startup.py --runs 5 -- talkie run --config demo.toml

Prints the median and range of start -> READY=1 for the command, against a baseline of a bare
interpreter that sends READY=1 at once (same process, same run), and the import time of each
`device` module in a fresh interpreter, relative to `python -c pass`.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

BASELINE = [PY, "-c", "from device.notify import Notifier; Notifier(use_systemd=False).ready()"]
SKELETON = [PY, "-c", (
    "import logging; from device.logs import setup_logging; from device.notify import Notifier;"
    "from device.status import StatusFile; import os, pathlib;"
    "r = setup_logging(journal=False); n = Notifier();"
    "s = StatusFile(pathlib.Path(os.environ['BENCH_DIR']) / 'status.json', redact=r);"
    "s.set_state('idle'); n.ready(status='idle')")]
MODULES = ["device.notify", "device.logs", "device.status", "device.status_cli",
           "device.config", "device.daemon"]


def time_to_ready(cmd: list[str], timeout: float = 60.0) -> float:
    """Seconds from spawning `cmd` to its READY=1 datagram. The process is then stopped."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(0.5)
        env = dict(os.environ, NOTIFY_SOCKET=path, BENCH_DIR=d,
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        try:
            while True:
                if time.perf_counter() - t0 > timeout:
                    raise TimeoutError(f"no READY=1 from {cmd[0]} within {timeout:.0f} s")
                try:
                    data = sock.recv(4096)
                except TimeoutError:
                    if proc.poll() not in (None, 0):
                        raise RuntimeError(f"{cmd[0]} exited {proc.returncode} before READY=1")
                    continue
                if b"READY=1" in data.split(b"\n"):
                    return time.perf_counter() - t0
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            sock.close()


def import_time(module: str | None) -> float:
    """Wall time of a fresh interpreter importing `module` (None: `pass`)."""
    code = f"import {module}" if module else "pass"
    t0 = time.perf_counter()
    r = subprocess.run([PY, "-c", code], cwd=ROOT, check=False, capture_output=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        return float("nan")  # not on this branch (yet)
    return dt


def _summary(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1000:7.1f} ms  (min {min(xs) * 1000:.1f}, max {max(xs) * 1000:.1f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- command to time (default: skeleton)")
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    name = " ".join(cmd) if cmd else "skeleton (logs + notify + status file, no audio)"
    cmd = cmd or SKELETON

    base = [time_to_ready(BASELINE) for _ in range(args.runs)]
    runs = [time_to_ready(cmd) for _ in range(args.runs)]
    print(f"start -> READY=1, {args.runs} runs each")
    print(f"  baseline (interpreter + notify): {_summary(base)}")
    print(f"  {name}: {_summary(runs)}  = {statistics.median(runs) / statistics.median(base):.2f}x baseline")

    print("import time in a fresh interpreter (median of 3, minus `python -c pass`)")
    bare = statistics.median(import_time(None) for _ in range(3))
    print(f"  python -c pass: {bare * 1000:.1f} ms")
    for m in MODULES:
        t = statistics.median(import_time(m) for _ in range(3))
        if math.isnan(t):
            print(f"  {m}: not importable here")
        else:
            print(f"  {m}: +{(t - bare) * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
