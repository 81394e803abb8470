"""Start-up time of `talkie run`: process start to `READY=1` on a real NOTIFY_SOCKET.

    python bench/startup.py                 # 10 runs each: WAV box, PulseAudio box, imports
    python bench/startup.py --runs 5 --no-pulse
    python bench/startup.py --runs 5 -- talkie run --config /etc/talkie/config.toml

What systemd waits for with Type=notify: the box as `talkie run` starts it (built-in Live
simulator, mock pins, history in a temporary directory) with WAV audio, then with real
PortAudio on a private PulseAudio server (device/audio/pulse_harness.py). Prints p50/p95 of
each, a bare interpreter that sends READY=1 at once as the floor, and the import time of the
heavy modules (google.genai dominates) in a fresh interpreter, minus `python -c pass`.
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
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable

BASELINE = [PY, "-c", "from device.notify import Notifier; Notifier(use_systemd=False).ready()"]
MODULES = ["google.genai", "numpy", "sounddevice", "gpiozero", "device.config", "device.daemon",
           "device.cli"]


def time_to_ready(cmd: list[str], env: dict[str, str] | None = None,
                  timeout: float = 90.0) -> float:
    """Seconds from spawning `cmd` to its READY=1 datagram. The process is then stopped."""
    with tempfile.TemporaryDirectory(prefix="tk-bench-") as d:
        path = os.path.join(d, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(0.2)
        full = dict(os.environ, **(env or {}))
        full.update(NOTIFY_SOCKET=path, RUNTIME_DIRECTORY=os.path.join(d, "run"),
                    STATE_DIRECTORY=os.path.join(d, "state"),
                    PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                             os.environ.get("PYTHONPATH")])))
        for key in ("WATCHDOG_USEC", "WATCHDOG_PID", "TALKIE_TEST_STALL_S"):
            full.pop(key, None)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=full, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            while True:
                if time.perf_counter() - t0 > timeout:
                    raise TimeoutError(f"no READY=1 from {' '.join(cmd)} within {timeout:.0f} s")
                try:
                    data = sock.recv(4096)
                except TimeoutError:
                    if proc.poll() is not None:
                        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode} before "
                                           f"READY=1:\n{err[-2000:]}") from None
                    continue
                if b"READY=1" in data.split(b"\n"):
                    return time.perf_counter() - t0
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            sock.close()


def box_config(d: Path, audio: str) -> Path:
    """A config like the tests': built-in simulator, mock pins, WAV or PulseAudio audio."""
    mic = d / "silence.wav"
    with wave.open(str(mic), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(b"\0" * 16_000 * 2 * 30)
    io = (f'backend = "files"\ninput = "{mic}"\noutput = "{d / "out.wav"}"' if audio == "wav"
          else 'backend = "sounddevice"\ninput = "pulse"\noutput = "pulse"')
    path = d / f"{audio}.toml"
    path.write_text(f'[live]\nsimulator = true\n[audio]\n{io}\n[gpio]\npin_factory = "mock"\n'
                    f'[history]\npath = "{d / "history.db"}"\n')
    return path


def import_time(module: str | None) -> float:
    """Wall time of a fresh interpreter importing `module` (None: `pass`)."""
    code = f"import {module}" if module else "pass"
    t0 = time.perf_counter()
    r = subprocess.run([PY, "-c", code], cwd=ROOT, check=False, capture_output=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    dt = time.perf_counter() - t0
    return dt if r.returncode == 0 else float("nan")


def pct(xs: list[float], q: float) -> float:
    """The q-th percentile (nearest rank): with few runs p95 is the slowest, as it should."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def summary(xs: list[float]) -> str:
    return (f"p50 {pct(xs, 50) * 1000:7.0f} ms   p95 {pct(xs, 95) * 1000:7.0f} ms   "
            f"(n={len(xs)}, min {min(xs) * 1000:.0f}, max {max(xs) * 1000:.0f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--no-pulse", action="store_true", help="skip the PulseAudio box")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- another command to time")
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    load = os.getloadavg()
    print(f"start -> READY=1, {args.runs} runs each (load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs)")
    base = [time_to_ready(BASELINE) for _ in range(args.runs)]
    print(f"  floor: interpreter + sd_notify        {summary(base)}")
    with tempfile.TemporaryDirectory(prefix="tk-bench-cfg-") as tmp:
        d = Path(tmp)
        run = [PY, "-m", "device", "run", "--config"]
        if cmd:
            xs = [time_to_ready(cmd) for _ in range(args.runs)]
            print(f"  {' '.join(cmd)}: {summary(xs)}")
        else:
            xs = [time_to_ready([*run, str(box_config(d, "wav"))]) for _ in range(args.runs)]
            print(f"  talkie run, WAV audio, mock pins     {summary(xs)}")
        if not args.no_pulse and not cmd:
            from device.audio.pulse_harness import PulseServer
            server = PulseServer(d / "pulse")
            server.start()
            try:
                env = {k: v for k, v in server.env().items()
                       if k.startswith(("PULSE_", "XDG_RUNTIME")) or k == "HOME"}
                cfg = str(box_config(d, "pulse"))
                xs = [time_to_ready([*run, cfg], env) for _ in range(args.runs)]
                print(f"  talkie run, PortAudio on PulseAudio  {summary(xs)}")
            finally:
                server.stop()

    print("import time in a fresh interpreter (median of 3, minus `python -c pass`)")
    bare = statistics.median(import_time(None) for _ in range(3))
    print(f"  python -c pass: {bare * 1000:.0f} ms")
    for m in MODULES:
        t = statistics.median(import_time(m) for _ in range(3))
        print(f"  {m}: " + ("not importable here" if math.isnan(t)
                            else f"+{(t - bare) * 1000:.0f} ms"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
