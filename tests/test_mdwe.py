"""Measures the unit's `MemoryDenyWriteExecute=yes` decision with the kernel's own rule.

Linux 6.3+ has `prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)`: the same "no memory may become
writable and executable" rule systemd's seccomp filter enforces (systemd 255+ uses the prctl
itself). A child process sets it, then runs the daemon's stack: the imports, numpy, and real
blocking PortAudio streams through a private PulseAudio server. A stream with `callback=`
must fail under the same rule, proving the rule is on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PR_SET_MDWE = 65

PRELUDE = textwrap.dedent("""
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        sys.exit(f"prctl(PR_SET_MDWE) failed: errno {ctypes.get_errno()}")
""")

BLOCKING = PRELUDE + textwrap.dedent("""
    import sqlite3, numpy as np, soxr, webrtcvad, gpiozero, google.genai, websockets
    import cryptography.hazmat.primitives.ciphers.aead
    import sounddevice as sd
    from device.logs import setup_logging
    from device.notify import Notifier
    setup_logging(journal=False)
    np.fft.rfft(np.ones(4096))
    soxr.resample(np.zeros(1600, dtype=np.float32), 16000, 24000)
    # The echo canceller (livekit's WebRTC APM through ctypes) for voice barge-in.
    from device.audio.echo import WebRtcEchoCanceller
    assert len(WebRtcEchoCanceller().process(bytes(640), bytes(640))) == 640
    # The audio backend's way: blocking streams, read/write from our own thread.
    with sd.InputStream(device="pulse", samplerate=16000, channels=1, dtype="int16",
                        blocksize=320) as s:
        for _ in range(5):
            data, _ = s.read(320)
    with sd.OutputStream(device="pulse", samplerate=24000, channels=1, dtype="float32",
                         blocksize=480) as s:
        for _ in range(5):
            s.write(np.zeros((480, 1), dtype=np.float32))
    print("blocking streams ok", data.shape)
""")

CALLBACK = PRELUDE + textwrap.dedent("""
    import sounddevice as sd
    try:
        sd.InputStream(device="pulse", samplerate=16000, channels=1, dtype="int16",
                       callback=lambda *a: None)
    except MemoryError as e:
        print("callback stream refused:", e)
        sys.exit(3)
    print("callback stream opened")
""")


def _kernel_has_mdwe() -> bool:
    # Probe in a child: the setting cannot be undone in this process.
    code = "import ctypes; l = ctypes.CDLL(None); raise SystemExit(l.prctl(65, 1, 0, 0, 0) != 0)"
    return subprocess.run([sys.executable, "-c", code], check=False, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def pulse_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A private PulseAudio server with a null sink and a null source, as PULSE_SERVER."""
    assert shutil.which("pulseaudio"), "CI installs pulseaudio (apt) for the audio tests"
    root = tmp_path_factory.mktemp("pulse-mdwe")
    sock = root / "native"
    script = root / "default.pa"
    script.write_text(
        f"load-module module-native-protocol-unix auth-anonymous=1 socket={sock}\n"
        "load-module module-null-sink sink_name=spk rate=48000 channels=2\n"
        "load-module module-null-source source_name=mic rate=48000 channels=1\n"
        "set-default-sink spk\nset-default-source mic\n")
    env = dict(os.environ, HOME=str(root), XDG_RUNTIME_DIR=str(root), PULSE_SERVER=f"unix:{sock}",
               PULSE_RUNTIME_PATH=str(root / "rt"),
               XDG_CONFIG_HOME=str(root), PYTHONPATH=str(ROOT))
    log = open(root / "pulseaudio.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--system=false",
         "--disallow-exit", "--disable-shm=yes", "-F", str(script), "--log-target=stderr"],
        env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while not sock.exists():
            assert proc.poll() is None, (root / "pulseaudio.log").read_text()
            assert time.monotonic() < deadline, "pulseaudio did not come up in 15 s"
            time.sleep(0.05)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def mdwe() -> None:
    if not _kernel_has_mdwe():
        pytest.skip(f"kernel {os.uname().release} has no PR_SET_MDWE (Linux 6.3+): "
                    "the rule cannot be applied without systemd here")


def test_daemon_stack_and_blocking_streams_run_under_mdwe(mdwe: None,
                                                          pulse_env: dict[str, str]) -> None:
    r = subprocess.run([sys.executable, "-c", BLOCKING], cwd=ROOT, env=pulse_env, check=False,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "blocking streams ok (320, 1)" in r.stdout


def test_callback_stream_is_refused_under_mdwe(mdwe: None, pulse_env: dict[str, str]) -> None:
    """Why the unit's comment says a callback= stream forces MemoryDenyWriteExecute=no."""
    r = subprocess.run([sys.executable, "-c", CALLBACK], cwd=ROOT, env=pulse_env, check=False,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "write+execute" in r.stdout
    # Control: the same stream without the rule opens, so the rule is what refused it.
    plain = CALLBACK.replace(PRELUDE, "import sys\n")
    r = subprocess.run([sys.executable, "-c", plain], cwd=ROOT, env=pulse_env, check=False,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "callback stream opened" in r.stdout, r.stdout + r.stderr
