"""`talkie run` as systemd sees it: the real daemon process, end to end.

Each test starts `python -m device run --config ...` as a child process the way systemd does:
its own `NOTIFY_SOCKET` (a unix datagram socket the test binds and reads), `WATCHDOG_USEC`,
`RUNTIME_DIRECTORY` and `STATE_DIRECTORY`. The box is real apart from the hardware: the WAV
microphone plays espeak-ng speech in real time, gpiozero MockFactory pins are pressed by an
events script (`--events`), history is SQLite, and the Live API is our simulator, reached by
the unmodified google-genai SDK (built in, or standalone with an API key it checks).

Timing bounds are generous: two cores are shared by many processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from device.speech import synthesize
from tests.leak_scan import scan

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]
MIC_RATE = 16_000
SIM_KEY = "AIza" "SyTESTsimulatorKey0123456789abcdefg"  # made up; the standalone simulator's key
WRONG_KEY = "AIza" "SyTESTwrongKey000000000000000000000"
#: Environment systemd (or a developer's shell) may have set that must not leak into the child.
SCRUB = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM",
         "CREDENTIALS_DIRECTORY", "GEMINI_API_KEY", "RUNTIME_DIRECTORY", "STATE_DIRECTORY",
         "TALKIE_TEST_STALL_S")


# --- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 s of silence, a child's question (espeak-ng), then 50 s of silence: a mic that keeps
    delivering frames (the watchdog's health check) for the whole test."""
    pcm = synthesize("Hello Talkie! Can you tell me a story about a dragon?", MIC_RATE)
    assert pcm, "espeak-ng is needed (apt install espeak-ng); the box's tests speak with it"
    path = tmp_path_factory.mktemp("mic") / "child.wav"
    silence = lambda s: b"\0" * int(MIC_RATE * s) * 2  # noqa: E731
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(MIC_RATE)
        w.writeframes(silence(1.0) + pcm + silence(50.0))
    return path


@dataclass
class StandaloneSimulator:
    base_url: str
    ca_file: str


def _standalone_simulator(certs: Path, *args: str) -> Iterator[StandaloneSimulator]:
    proc = subprocess.Popen(
        [PY, "-m", "device.live.simulator", "--api-key", SIM_KEY, "--cert-dir", str(certs),
         *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        info: dict[str, str] = {}
        while len(info) < 2:
            line = proc.stdout.readline()
            assert line, "the standalone simulator exited before printing its address"
            key, _, value = line.strip().partition(" ")
            if key in ("base_url", "ca_file"):
                info[key] = value.strip()
        yield StandaloneSimulator(info["base_url"], info["ca_file"])
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneSimulator]:
    """`python -m device.live.simulator` accepting only SIM_KEY, streaming replies at a
    quarter of real time, so a reply is still arriving seconds after it starts sounding."""
    yield from _standalone_simulator(tmp_path_factory.mktemp("simcerts"), "--pace", "0.25",
                                     "--first-byte-delay", "0.1")


@pytest.fixture(scope="module")
def stuck_simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneSimulator]:
    """A simulator that takes 60 s to answer the setup: the box hangs in 'connecting'."""
    yield from _standalone_simulator(tmp_path_factory.mktemp("simcerts2"),
                                     "--fault", "slow-setup@*+60")


def write_config(tmp: Path, mic: Path, **sections: dict[str, object]) -> Path:
    """A config for a box with a WAV mic and speaker, mock pins and history under `tmp`."""
    base: dict[str, dict[str, object]] = {
        "live": {"simulator": True},
        "audio": {"backend": "files", "input": str(mic), "output": str(tmp / "speaker.wav")},
        "gpio": {"pin_factory": "mock"},
        "history": {"path": str(tmp / "state" / "history.db")},
    }
    for name, keys in sections.items():
        base.setdefault(name, {}).update(keys)
    lines = []
    for name, keys in base.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    path = tmp / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


# --- the daemon, seen from systemd's side --------------------------------------------------

@dataclass
class Box:
    """A running `talkie run` and what it told its NOTIFY_SOCKET (and stderr)."""
    proc: subprocess.Popen[str]
    sock: socket.socket
    t0: float
    notes: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, line)
    stderr: list[str] = field(default_factory=list)
    stderr_t: list[float] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def _read_socket(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                if self.proc.poll() is not None:
                    return
                continue
            except OSError:
                return
            now = time.monotonic() - self.t0
            with self.cond:
                # One datagram may carry several assignments ("READY=1\nSTATUS=idle").
                self.notes.extend((now, line) for line in data.decode().split("\n") if line)
                self.cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.cond:
                self.stderr.append(line.rstrip("\n"))
                self.stderr_t.append(time.monotonic() - self.t0)

    def wait_for(self, pred: Callable[[str], bool], timeout: float, after: float = 0.0,
                 what: str = "") -> float:
        """Time (since start) of the first line after `after` matching `pred`."""
        deadline = time.monotonic() + timeout
        exited: float | None = None
        with self.cond:
            while True:
                for t, line in self.notes:
                    if t >= after and pred(line):
                        return t
                now = time.monotonic()
                if self.proc.poll() is not None and exited is None:
                    exited = now  # datagrams sent just before exit may still be in the socket
                if now > deadline or exited is not None and now - exited > 0.5:
                    raise AssertionError(
                        f"no {what or 'matching notification'} within {timeout} s; got "
                        f"{self.notes}; exit {self.proc.poll()}; stderr:\n"
                        + "\n".join(self.stderr[-30:]))
                self.cond.wait(0.1)

    def logged(self, text: str, timeout: float) -> float:
        """Time (since start) stderr showed a line containing `text`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while time.monotonic() < deadline:
                for t, line in zip(self.stderr_t, self.stderr):
                    if text in line:
                        return t
                self.cond.wait(0.1)
        raise AssertionError(f"no log line with {text!r}; stderr:\n" + "\n".join(self.stderr))

    def now(self) -> float:
        return time.monotonic() - self.t0

    def times(self, line: str) -> list[float]:
        with self.cond:
            return [t for t, x in self.notes if x == line]

    def statuses(self) -> list[str]:
        with self.cond:
            return [x[len("STATUS="):] for _, x in self.notes if x.startswith("STATUS=")]

    def signal(self, sig: int) -> float:
        self.proc.send_signal(sig)
        return self.now()

    def wait_exit(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        time.sleep(0.2)  # let the readers drain
        return rc


@pytest.fixture
def start_box(tmp_path: Path) -> Iterator[Callable[..., Box]]:
    boxes: list[Box] = []
    sockdir = tempfile.mkdtemp(prefix="tk-notify-")  # short: AF_UNIX paths are <= 107 bytes

    def start(config: Path, *args: str, watchdog_usec: int | None = 2_000_000,
              **env: str) -> Box:
        path = os.path.join(sockdir, f"n{len(boxes)}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(0.2)
        extra = {"NOTIFY_SOCKET": path, "RUNTIME_DIRECTORY": str(tmp_path / "run"),
                 "STATE_DIRECTORY": str(tmp_path / "state"), **env}
        if watchdog_usec is not None:
            extra["WATCHDOG_USEC"] = str(watchdog_usec)
        t0 = time.monotonic()
        proc = subprocess.Popen([PY, "-m", "device", "run", "--config", str(config), *args],
                                cwd=ROOT, env=child_env(**extra), text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        box = Box(proc, sock, t0)
        for target in (box._read_socket, box._read_stderr):
            threading.Thread(target=target, daemon=True).start()
        boxes.append(box)
        return box

    yield start
    for box in boxes:
        if box.proc.poll() is None:
            box.proc.kill()
            box.proc.wait(10)
        box.sock.close()
        scan(f"talkie run stderr (pid {box.proc.pid})", "\n".join(box.stderr))
    for name in os.listdir(sockdir):
        os.unlink(os.path.join(sockdir, name))
    os.rmdir(sockdir)


def events_file(tmp: Path, text: str) -> Path:
    path = tmp / "events.txt"
    path.write_text(text)
    return path


# --- the tests -----------------------------------------------------------------------------

@pytest.mark.parametrize("notify", ["systemd-python", "plain-socket"])
def test_ready_watchdog_stall_and_clean_stop(tmp_path: Path, speech_wav: Path,
                                             start_box: Callable[..., Box], notify: str) -> None:
    """READY=1 once up; WATCHDOG=1 at about half WATCHDOG_USEC; none while the event loop is
    blocked, pings again after; SIGTERM gives STOPPING=1 and exit 0 within a few seconds.
    Once through systemd-python, once on a box without it (our own datagram sender)."""
    cfg = write_config(tmp_path, speech_wav)
    env = {"TALKIE_TEST_STALL_S": "3"}
    if notify == "plain-socket":
        # A `systemd` package that fails to import, first on the path: as if not installed.
        blocker = tmp_path / "no-systemd" / "systemd"
        blocker.mkdir(parents=True)
        (blocker / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
        env["PYTHONPATH"] = os.pathsep.join([str(blocker.parent), str(ROOT)])
    box = start_box(cfg, watchdog_usec=2_000_000, **env)
    ready = box.wait_for(lambda x: x == "READY=1", 90, what="READY=1")
    status_file = tmp_path / "run" / "status.json"
    assert json.loads(status_file.read_text())["state"] == "idle"

    # Healthy: pings every ~1 s (half of 2 s) for 4.5 s.
    box.wait_for(lambda x: x == "WATCHDOG=1", 10, after=ready + 4.5, what="a ping after 4.5 s")
    healthy = [t for t in box.times("WATCHDOG=1") if t >= ready]
    gaps = sorted(b - a for a, b in zip(healthy, healthy[1:]))
    assert len(healthy) >= 3, healthy
    assert 0.6 < gaps[len(gaps) // 2] < 1.6, gaps  # median: half of WATCHDOG_USEC

    # Blocked: SIGUSR2 makes the (test-only) hook sleep on the loop for 3 s.
    sent = box.signal(signal.SIGUSR2)
    blocked = box.logged("blocking the event loop", 10)  # logged just before it sleeps
    resumed = box.wait_for(lambda x: x == "WATCHDOG=1", 15, after=blocked + 3.0,
                           what="a ping after the stall")
    stalled = [t for t in box.times("WATCHDOG=1") if blocked + 0.2 < t < sent + 2.9]
    assert stalled == [], f"pings while the loop was blocked: {stalled}"
    assert resumed - blocked < 3.0 + 4.0  # healthy again: pings come back by themselves

    # SIGTERM: STOPPING=1, then a clean exit.
    term = box.signal(signal.SIGTERM)
    stopping = box.wait_for(lambda x: x == "STOPPING=1", 10, after=term, what="STOPPING=1")
    assert box.wait_exit(10) == 0
    assert box.notes[-1] == (stopping, "STOPPING=1"), "nothing but STOPPING=1 at the end"
    assert box.now() - term < 8.0, "shutdown took too long"
    assert stopping >= term
    assert not status_file.exists(), "a clean exit removes the status file"
    assert not any("Traceback" in line for line in box.stderr), "\n".join(box.stderr)


def test_without_the_env_var_the_stall_hook_is_not_installed() -> None:
    """The test hook cannot fire on a real box: no TALKIE_TEST_STALL_S, no handler."""
    import asyncio

    from device.cli import TEST_STALL_ENV, _arm_test_stall

    async def arm(env: dict[str, str]) -> float | None:
        loop = asyncio.get_running_loop()
        try:
            return _arm_test_stall(loop, env)
        finally:
            loop.remove_signal_handler(signal.SIGUSR2)

    assert asyncio.run(arm({})) is None
    assert asyncio.run(arm({TEST_STALL_ENV: "nonsense"})) is None
    assert asyncio.run(arm({TEST_STALL_ENV: "1.5"})) == 1.5
    unit = (ROOT / "systemd" / "talkie.service").read_text()
    assert TEST_STALL_ENV not in unit


def test_sigterm_during_a_reply_keeps_the_turn(tmp_path: Path, speech_wav: Path,
                                               simulator: StandaloneSimulator,
                                               start_box: Callable[..., Box]) -> None:
    """A press, the child's question, the reply starts sounding, SIGTERM: STATUS= followed
    every state, the box stops cleanly, and the interrupted turn is in SQLite."""
    cfg = write_config(tmp_path, speech_wav, live={
        "simulator": False, "base_url": simulator.base_url, "ca_file": simulator.ca_file})
    script = events_file(tmp_path, "0.3 tap button\n")
    box = start_box(cfg, "--events", str(script), GEMINI_API_KEY=SIM_KEY)
    ready = box.wait_for(lambda x: x == "READY=1", 90, what="READY=1")
    speaking = box.wait_for(lambda x: x == "STATUS=speaking", 45, after=ready,
                            what="STATUS=speaking")
    # The reply streams at a quarter of real time: 0.8 s in, it is still arriving.
    time.sleep(0.8)
    term = box.signal(signal.SIGTERM)
    box.wait_for(lambda x: x == "STOPPING=1", 10, after=term, what="STOPPING=1")
    assert box.wait_exit(15) == 0
    assert box.now() - term < 10.0

    states = box.statuses()
    for state in ("connecting", "listening", "thinking", "speaking"):
        assert state in states, states
    assert states.index("connecting") < states.index("thinking") < states.index("speaking")
    assert speaking > ready

    db = sqlite3.connect(tmp_path / "state" / "history.db")
    convs = db.execute("SELECT id, uuid, ended_at FROM conversations").fetchall()
    assert len(convs) == 1 and convs[0][2] is not None, convs  # closed on the way out
    msgs = db.execute("SELECT sender, content, timings FROM messages WHERE conversation_id = ? "
                      "ORDER BY created_at", (convs[0][0],)).fetchall()
    assert [m[0] for m in msgs] == ["user", "assistant"], msgs
    assert "s of audio]" in msgs[0][1]  # what the simulator "heard"
    assert msgs[1][1].strip(), "the words of the reply said before SIGTERM are kept"
    assert json.loads(msgs[1][2]).get("interrupted") == 1.0
    # Journal fields on stderr: the conversation's records carry its state and session id.
    uuid = convs[0][1]
    assert any(f"session={uuid}" in line and "state=" in line for line in box.stderr), \
        "\n".join(box.stderr)
    assert any("event=latency" in line and "latency_ms=" in line for line in box.stderr)
    assert SIM_KEY not in "\n".join(box.stderr)


def test_sigterm_while_connecting_stops_at_once(tmp_path: Path, speech_wav: Path,
                                                stuck_simulator: StandaloneSimulator,
                                                start_box: Callable[..., Box]) -> None:
    """SIGTERM while the SDK waits for a setup that never comes: the connect is cancelled
    (not swallowed), STOPPING=1, exit 0 well within TimeoutStopSec=8."""
    cfg = write_config(tmp_path, speech_wav, live={
        "simulator": False, "base_url": stuck_simulator.base_url,
        "ca_file": stuck_simulator.ca_file, "connect_timeout_s": 60.0})
    box = start_box(cfg, "--events", str(events_file(tmp_path, "0.2 tap button\n")),
                    GEMINI_API_KEY=SIM_KEY)
    ready = box.wait_for(lambda x: x == "READY=1", 90, what="READY=1")
    connecting = box.wait_for(lambda x: x == "STATUS=connecting", 30, after=ready)
    time.sleep(max(0.0, connecting + 1.5 - box.now()))  # the TLS handshake is done by now
    term = box.signal(signal.SIGTERM)
    box.wait_for(lambda x: x == "STOPPING=1", 10, after=term, what="STOPPING=1")
    assert box.wait_exit(15) == 0
    assert box.now() - term < 6.0
    assert "connecting" == box.statuses()[-1]


def test_refused_api_key_is_an_error_state_with_a_clear_line(
        tmp_path: Path, speech_wav: Path, simulator: StandaloneSimulator,
        start_box: Callable[..., Box]) -> None:
    """The Live API refuses the key: the box goes to the error state, systemd's status line
    and the log say why, the key shows nowhere, and the daemon keeps running."""
    cfg = write_config(tmp_path, speech_wav, live={
        "simulator": False, "base_url": simulator.base_url, "ca_file": simulator.ca_file})
    script = events_file(tmp_path, "0.3 tap button\n")
    box = start_box(cfg, "--events", str(script), GEMINI_API_KEY=WRONG_KEY)
    ready = box.wait_for(lambda x: x == "READY=1", 90, what="READY=1")
    box.wait_for(lambda x: x.startswith("STATUS=error"), 45, after=ready, what="STATUS=error")
    error_line = next(s for s in box.statuses() if s.startswith("error"))
    assert "API key" in error_line and "talkie setup" in error_line, error_line
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "error"
    assert "API key" in (status["live"]["last_error"] or "")
    time.sleep(0.5)
    assert box.proc.poll() is None, "a refused key must not end the daemon"
    # What a parent sees over SSH.
    talkie_status = [PY, "-m", "device", "status", "--file", str(tmp_path / "run" / "status.json")]
    seen = subprocess.run(talkie_status, cwd=ROOT, env=child_env(), capture_output=True,
                          text=True, timeout=30)
    assert seen.returncode == 0, seen.stdout + seen.stderr
    assert "error" in seen.stdout and "API key" in seen.stdout, seen.stdout
    assert WRONG_KEY not in seen.stdout
    box.signal(signal.SIGTERM)
    assert box.wait_exit(15) == 0
    gone = subprocess.run(talkie_status, cwd=ROOT, env=child_env(), capture_output=True,
                          text=True, timeout=30)
    assert gone.returncode == 3, gone.stdout  # like `systemctl status` of a stopped unit
    text = "\n".join(box.stderr)
    assert any("API key" in line for line in box.stderr), text
    assert WRONG_KEY not in text and WRONG_KEY not in json.dumps(status)
    assert "Traceback" not in text


SECRET = "AIza" "SyTESTdoNotPrintMe0123456789abcdefg"


@pytest.mark.parametrize("case", ["unknown-key", "wrong-type", "no-api-key", "missing-ca-file",
                                  "sync-without-token", "missing-mic-file",
                                  "events-on-real-pins", "mistyped-token"])
def test_bad_config_exits_78_with_one_clear_line(tmp_path: Path, speech_wav: Path,
                                                 case: str) -> None:
    """EX_CONFIG (the unit's RestartPreventExitStatus) and one line naming the key and the
    fix: no traceback, no secret, no restart loop."""
    env: dict[str, str] = {"GEMINI_API_KEY": SECRET}
    args: list[str] = []
    token_file = tmp_path / "token"
    token_file.write_text("")
    if case == "unknown-key":
        cfg = write_config(tmp_path, speech_wav, live={"simulatr": True})
        expect = "unknown key 'live.simulatr'"
    elif case == "wrong-type":
        cfg = write_config(tmp_path, speech_wav, audio={"volume": "loud"})
        expect = "'audio.volume' must be a number"
    elif case == "no-api-key":
        cfg = write_config(tmp_path, speech_wav, live={"simulator": False})
        env = {}
        expect = "no Gemini API key"
    elif case == "missing-ca-file":
        cfg = write_config(tmp_path, speech_wav, live={
            "simulator": False, "base_url": "https://127.0.0.1:9", "ca_file": "/nonexistent.pem"})
        expect = "'live.ca_file' is '/nonexistent.pem', which does not exist"
    elif case == "sync-without-token":
        cfg = write_config(tmp_path, speech_wav, sync={"url": "https://127.0.0.1:9",
                                                       "token_file": str(token_file)})
        expect = "[sync] has a url but no token"
    elif case == "mistyped-token":
        cfg = write_config(tmp_path, speech_wav, sync={"url": "https://127.0.0.1:9"})
        with cfg.open("a") as f:
            f.write("token = 48151623429\n")  # a token of digits, unquoted: still a secret
        expect = "'sync.token' must be a string"
    elif case == "missing-mic-file":
        cfg = write_config(tmp_path, tmp_path / "nope.wav")
        expect = "'audio.input'"
    else:
        cfg = write_config(tmp_path, speech_wav, gpio={"pin_factory": "lgpio"})
        args = ["--events", str(events_file(tmp_path, "0.5 tap button\n"))]
        expect = "--events drives mock pins"
    t0 = time.monotonic()
    r = subprocess.run([PY, "-m", "device", "run", "--config", str(cfg), *args], cwd=ROOT,
                       env=child_env(**env), capture_output=True, text=True, timeout=60)
    assert r.returncode == 78, (r.returncode, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("talkie: config error:") and expect in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    assert SECRET not in r.stderr + r.stdout and "48151623429" not in r.stderr + r.stdout
    assert time.monotonic() - t0 < 30  # fails before opening audio or importing the SDK


def test_ready_and_watchdog_on_pulseaudio(tmp_path: Path, pulse: object,
                                          start_box: Callable[..., Box]) -> None:
    """Real PortAudio on the private PulseAudio server: READY=1 only once the devices are
    open, pings while the mic delivers, a conversation on spoken audio, a clean SIGTERM."""
    from device.audio.pulse_harness import espeak

    cfg = write_config(tmp_path, tmp_path / "unused.wav",
                       audio={"backend": "sounddevice", "input": "pulse", "output": "pulse"})
    script = events_file(tmp_path, "0.5 tap button\n")
    env = {k: v for k, v in pulse.env().items()  # type: ignore[attr-defined]
           if k.startswith(("PULSE_", "XDG_RUNTIME")) or k == "HOME"}
    box = start_box(cfg, "--events", str(script), **env)
    ready = box.wait_for(lambda x: x == "READY=1", 90, what="READY=1")
    box.wait_for(lambda x: x == "STATUS=listening", 30, after=ready, what="STATUS=listening")
    pulse.feed(espeak("Hello Talkie, what is a dragon?", 48_000))  # type: ignore[attr-defined]
    box.wait_for(lambda x: x == "STATUS=speaking", 30, after=ready, what="STATUS=speaking")
    assert len([t for t in box.times("WATCHDOG=1") if t > ready]) >= 2
    term = box.signal(signal.SIGTERM)
    box.wait_for(lambda x: x == "STOPPING=1", 10, after=term, what="STOPPING=1")
    assert box.wait_exit(15) == 0
    assert box.now() - term < 10.0
    assert "Traceback" not in "\n".join(box.stderr)


def test_no_ready_when_the_microphone_cannot_open(tmp_path: Path, pulse: object,
                                                  start_box: Callable[..., Box]) -> None:
    """READY=1 means audio is up: a mic that does not exist gives no READY, one line naming
    the device and the fix, and an exit code systemd restarts (a USB mic may come later)."""
    cfg = write_config(tmp_path, tmp_path / "unused.wav",
                       audio={"backend": "sounddevice", "input": "no-such-mic", "output": "pulse"})
    env = {k: v for k, v in pulse.env().items()  # type: ignore[attr-defined]
           if k.startswith(("PULSE_", "XDG_RUNTIME")) or k == "HOME"}
    box = start_box(cfg, **env)
    rc = box.wait_exit(60)
    assert rc not in (0, 78), rc
    assert not any(line == "READY=1" for _, line in box.notes), box.notes
    text = "\n".join(box.stderr)
    assert "no-such-mic" in text and "[audio] input" in text, text
    assert "Traceback" not in text
