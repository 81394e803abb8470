"""A PortAudio thread stuck in a dead device must not crash the daemon's exit.

Found by the chaos soak: a microphone read that never returned (the sound server dropped the
stream mid-read) was still inside PortAudio when sounddevice's exit handler terminated
PortAudio: SIGSEGV after "stopped cleanly", which systemd records as a failed stop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import atexit, threading, sys
import sounddevice
from device.audio.devices import join_or_abandon

# Stand in for sounddevice's exit handler (what terminates PortAudio), to see if it runs.
atexit.unregister(sounddevice._exit_handler)
real = sounddevice._exit_handler
def exit_handler():
    print("PortAudio terminated", flush=True)
    real()
sounddevice._exit_handler = exit_handler
atexit.register(exit_handler)

release = threading.Event()
thread = threading.Thread(target=release.wait, daemon=True)  # a read that never returns
thread.start()
if sys.argv[1] == "done":
    release.set()
join_or_abandon(thread, "microphone 'usb'", timeout=0.2)
print("exiting", flush=True)
"""


@pytest.mark.parametrize("thread, terminated", [("done", True), ("stuck", False)])
def test_portaudio_is_terminated_at_exit_only_when_no_thread_is_inside_it(thread, terminated):
    out = subprocess.run([sys.executable, "-c", SCRIPT, thread], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "exiting"
    assert ("PortAudio terminated" in out.stdout) is terminated
    if not terminated:
        assert "microphone 'usb' thread is stuck in the sound system" in out.stderr
