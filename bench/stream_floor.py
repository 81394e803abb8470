"""What bare PortAudio streams cost through PulseAudio, before any of Talkie's work.

    python bench/stream_floor.py [--seconds 15]

Each configuration runs in a fresh child process on a private PulseAudio server (the
harness's 48 kHz null devices) and does nothing but read the microphone or write silence in
a loop; the figure is the child's CPU seconds (all threads: PortAudio's, libpulse's and
Python's) per second. These are the floors under bench/conversation.py's CPU figures: a
box that keeps its microphone open (the pre-roll) and its speaker running (no pop from an
I2S amplifier whose clock stops, a reply that never waits for a stream to start) pays them
whatever it does with the audio. Resolution: the kernel's 10 ms CPU tick over the length.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device.audio.pulse_harness import PulseServer  # noqa: E402

#: (label, kind, rate, block frames, latency): Talkie's streams and the baseline's. Kind
#: 'in' reads with PortAudio's wait, 'talkie-in' waits as the capture thread does, 'out' writes.
CONFIGS = [
    ("talkie mic: 16 kHz, 40 ms reads", "talkie-in", 16000, 640, "low"),
    ("talkie mic, PortAudio's wait (hangs on dead source)", "in", 16000, 640, "low"),
    ("floor client mic: 16 kHz, 20 ms reads", "in", 16000, 320, "low"),
    ("baseline mic: 16 kHz, 1024-frame reads", "in", 16000, 1024, "high"),
    ("talkie speaker playing: 10 ms writes, 60 ms buffer", "out", 24000, 240, 0.06),
    ("talkie speaker resting: 30 ms writes, 60 ms buffer", "out", 24000, 720, 0.06),
    ("speaker: 20 ms writes, 60 ms buffer", "out", 24000, 480, 0.06),
]

CHILD = r"""
import os, sys, time
import numpy as np, sounddevice as sd
kind, rate, block, latency, seconds = sys.argv[1:]
rate, block, seconds = int(rate), int(block), float(seconds)
latency = latency if latency in ("low", "high") else float(latency)
if kind.endswith("in"):
    s = sd.InputStream(device="pulse", samplerate=rate, channels=1, dtype="int16",
                       blocksize=block, latency=latency)
    if kind == "talkie-in":   # device/audio/capture.py: only what the device holds
        import threading
        from device.audio.capture import _await_block
        stop = threading.Event()
        step = lambda: _await_block(s, block, rate, stop) and s.read(block)
    else:
        step = lambda: s.read(block)
else:
    s = sd.OutputStream(device="pulse", samplerate=rate, channels=1, dtype="float32",
                        blocksize=block, latency=latency)
    silence = np.zeros(block, np.float32)
    step = lambda: s.write(silence)
s.start()
for _ in range(int(0.5 * rate / block)):
    step()
t = os.times()
c0, t0, n = t.user + t.system, time.monotonic(), 0
while time.monotonic() - t0 < seconds:
    step()
    n += 1
t = os.times()
print((t.user + t.system - c0) / seconds, n / seconds)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tk-floor-") as tmp:
        server = PulseServer(Path(tmp) / "pulse", rates=(48_000,), noise_rms=33.0)
        server.start()
        env = dict(os.environ) | server.env() | {"PYTHONPATH": str(ROOT)}
        try:
            print(f"{'stream':52} {'CPU s/s':>8} {'calls/s':>8}   (load {os.getloadavg()[0]:.2f})")
            for label, *config in CONFIGS:
                out = subprocess.run([sys.executable, "-c", CHILD, *map(str, config),
                                      str(args.seconds)], env=env, check=True,
                                     capture_output=True, text=True).stdout.split()
                print(f"{label:52} {float(out[0]):8.4f} {float(out[1]):8.1f}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
