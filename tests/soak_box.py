"""Chaos soak: the real daemon (`talkie run`) in its own process, a child talking turn after
turn, and random faults from every side, for minutes (CI) or hours (`make soak`).

    SOAK_MINUTES=240 SOAK_SEED=7 python -m tests.soak_box      # or: make soak

What is real: the daemon process exactly as systemd starts it (NOTIFY_SOCKET, WATCHDOG_USEC,
STATE_DIRECTORY; this driver restarts it on a crash as `Restart=on-failure` would, and counts
it); the google-genai SDK against the Live simulator (in this process, so faults can be armed
while it runs); PortAudio through a private PulseAudio server (the child's espeak-ng speech
goes into a pipe source, the toy speaks into a null sink): all audio is real PortAudio, not
the WAV backend, because the child must answer what the box does (talk only while it
listens) and the microphone and speaker faults are the sound server dropping the streams;
the history server (`python -m server serve`, SQLite) on loopback; mock pins driven by an
events script (the child shakes the toy awake: a shake never barges in on a reply).

Faults, at random times from SOAK_SEED:
- Live: goAway (after a reply, and mid-utterance), close 1011 mid-reply, TCP drop mid-reply,
  slow setup (1-5 s), a refused resumption handle: armed one-shot in the simulator.
- audio: the sound server kills the microphone's or the speaker's stream (a USB device
  pulled), the box reopens it.
- history server: killed (SIGKILL or SIGTERM), started again 5-60 s later.
- disk full: the box's state directory (history, handle, budget) is a small tmpfs mounted in
  this soak's own mount namespace; a filler file takes every free byte for a while (ENOSPC:
  SQLite says SQLITE_FULL), then is removed.
- wall clock: libfaketime (LD_PRELOAD, an offset file it re-reads every second, monotonic
  untouched) moves the daemon's CLOCK_REALTIME back, forward, to just before midnight, and
  into quiet hours; our code is not patched. (libfaketime 0.9.10 breaks an absolute
  clock_nanosleep on CLOCK_MONOTONIC, i.e. Python's time.sleep, with EINVAL: the daemon
  does not call it; a traceback would show here if it did.)

It asserts: the daemon never died (restarts 0) and kept its watchdog pings; every turn it
completed is in the server's history exactly once after sync; no utterance the box heard
went unanswered without the box saying so (offline/error/sleep); RSS is flat; the state is
idle at the end; no traceback, no secret in its log. The last stdout line is one JSON object.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
#: Made up; split so no tracked file holds a key-shaped token.
SOAK_KEY = "AIza" "SySOAKchaosKey000000000000000000000"
NS_ENV = "TALKIE_SOAK_NS"
STATE_FS_BYTES = 6 * 2**20
SENTENCES = (
    "Hello Talkie! Can you tell me a story about a dragon?",
    "Why is the sky blue?",
    "I saw a big red fire truck today.",
    "What do dinosaurs eat for breakfast?",
    "Can we sing a song about the moon?",
    "My cat is called Pickles and she is very fluffy.",
)
#: systemd/talkie.service's WatchdogSec: a longer silence and systemd kills the box.
WATCHDOG_S = 20.0
#: Quiet timeout of the daemon (device/daemon.py): after this the box goes idle.
QUIET_TIMEOUT_S = 30.0


@dataclass
class Settings:
    minutes: float
    seed: int
    work: Path
    fault_every_s: float = 12.0
    rss_slope_max_mb_per_min: float = 0.1
    rss_growth_max_mb: float = 25.0


@dataclass
class Outcomes:
    utterances: int = 0
    answered: int = 0
    told: int = 0          # the box went offline/error/idle/sleeping: the child saw and heard it
    unheard: int = 0       # the box stayed listening: the gate did not take it (counted, not lost)
    lost: int = 0          # heard (thinking) but neither answered nor told within a minute


class Daemon:
    """`talkie run` under a small systemd stand-in: notify socket, watchdog, restarts."""

    def __init__(self, work: Path, config: Path, env: dict[str, str]) -> None:
        self.work = work
        self.config = config
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.starts = 0
        self.states: list[tuple[float, str]] = []
        self.state = ""
        self.state_changed = asyncio.Event()
        self.watchdog: list[float] = []
        self.log_path = work / "daemon.log"
        self.log_lines: collections.deque[str] = collections.deque(maxlen=400)
        self.turns = 0
        self.errors: list[str] = []
        self.disk_full_logged = 0
        self.pings_withheld = 0
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        sockpath = f"/tmp/tk-soak-{os.getpid()}.sock"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sockpath)
        self.sockpath = sockpath
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(sockpath)
        self.sock.setblocking(False)
        self._tasks: list[asyncio.Task[Any]] = []
        self.stopping = False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        self.starts += 1
        env = dict(self.env, NOTIFY_SOCKET=self.sockpath)
        self.proc = await asyncio.create_subprocess_exec(
            PY, "-m", "device", "run", "--config", str(self.config), "--events",
            str(self.work / "events.txt"), cwd=ROOT, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        self._tasks.append(asyncio.create_task(self._read_stderr(self.proc)))

    async def supervise(self) -> None:
        """Restart=on-failure: a death during the soak is counted and the box started again."""
        while not self.stopping:
            assert self.proc is not None
            rc = await self.proc.wait()
            if self.stopping:
                return
            self.restarts += 1
            self.errors.append(f"the daemon exited with {rc} at {time.monotonic():.0f}")
            await asyncio.sleep(3)  # RestartSec=3
            await self.start()

    async def read_notify(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            now = time.monotonic()
            for line in data.decode(errors="replace").split("\n"):
                if line == "WATCHDOG=1":
                    self.watchdog.append(now)
                elif line.startswith("STATUS=") or line.startswith("READY=1"):
                    if line.startswith("STATUS="):
                        state = line[len("STATUS="):].split(":", 1)[0]
                        self.state = state
                        self.states.append((now, state))
                        self.state_changed.set()

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            self._log.write(raw)
            line = raw.decode(errors="replace").rstrip("\n")
            self.log_lines.append(line)
            if re.search(r"\bturn \d+ complete\b", line):
                self.turns += 1
            if "disk is full" in line:
                self.disk_full_logged += 1
            if "watchdog ping withheld" in line:
                self.pings_withheld += 1
            if "Traceback" in line or "internal error" in line:
                self.errors.append(f"daemon log: {line[:200]}")
        self._log.flush()

    def rss_mb(self) -> float | None:
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        m = re.search(r"VmRSS:\s+(\d+) kB", text)
        return int(m.group(1)) / 1024 if m else None

    def threads(self) -> int:
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return 0
        m = re.search(r"Threads:\s+(\d+)", text)
        return int(m.group(1)) if m else 0

    async def wait_state(self, states: set[str], timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while self.state not in states:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.state_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.state_changed.wait()
        return self.state

    async def stop(self) -> int | None:
        self.stopping = True
        rc = None
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(20):
                    rc = await self.proc.wait()
            except TimeoutError:
                self.errors.append("the daemon did not stop within 20 s of SIGTERM")
                self.proc.kill()
                rc = await self.proc.wait()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 5)
        self._log.close()
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sockpath)
        return rc


class HistoryServer:
    """`python -m server serve` on loopback; killed and started again by the chaos."""

    def __init__(self, work: Path) -> None:
        self.db = work / "server.db"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = open(work / "server.log", "ab")  # noqa: SIM115
        out = subprocess.run([PY, "-m", "server", "--db", str(self.db), "add-device", "soak-box"],
                             cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
        self.token = out.stdout.strip().splitlines()[0]

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            [PY, "-m", "server", "--db", str(self.db), "serve", "--host", "127.0.0.1",
             "--port", str(self.port)], cwd=ROOT, stdout=self.log, stderr=self.log)
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("the history server did not come up; see server.log")

    async def stop(self, hard: bool) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        await asyncio.to_thread(self.proc.wait, 10)
        self.proc = None

    def messages(self) -> list[tuple[str, str, str]]:
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return con.execute("SELECT uuid, sender, content FROM messages").fetchall()
        finally:
            con.close()


class Clock:
    """The daemon's wall clock, through libfaketime's offset file (seconds from real time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0.0
        self.write(0.0)

    def write(self, offset: float) -> None:
        self.offset = offset
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{offset:+.0f}\n")
        os.replace(tmp, self.path)

    def env(self) -> dict[str, str]:
        return {"LD_PRELOAD": FAKETIME_LIB, "FAKETIME_TIMESTAMP_FILE": str(self.path),
                "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_CACHE_DURATION": "1"}


class Chaos:
    """Arms random faults and keeps count of the ones that really happened."""

    def __init__(self, s: Settings, rng: random.Random, sim: Any, pulse: Any, daemon: Daemon,
                 server: HistoryServer, clock: Clock, state_dir: Path,
                 quiet: tuple[int, int]) -> None:
        self.s, self.rng, self.sim, self.pulse = s, rng, sim, pulse
        self.daemon, self.server, self.clock, self.state_dir = daemon, server, clock, state_dir
        self.quiet = quiet  # quiet hours start, end (minutes of the day)
        self.faults: collections.Counter[str] = collections.Counter()
        self.armed: list[tuple[str, Any]] = []
        self.busy: set[str] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.notes: list[str] = []

    KINDS = {
        "live_goaway": 3, "live_goaway_now": 2, "live_1011": 3, "live_tcp_drop": 3,
        "live_slow_setup": 2, "live_refused_handle": 2, "mic_fail": 2, "speaker_fail": 2,
        "server_down": 2, "disk_full": 2, "clock_back": 1, "clock_forward": 1,
        "clock_midnight": 1, "clock_quiet": 1,
    }

    async def run(self, until: float) -> None:
        """Random faults until `until`; SOAK_KINDS=live,mic,... keeps only those kinds."""
        only = [k for k in os.environ.get("SOAK_KINDS", "").split(",") if k]
        table = {k: w for k, w in self.KINDS.items() if not only or any(k.startswith(o) for o in only)}
        if not table:  # SOAK_KINDS=none: a baseline without faults
            await asyncio.sleep(max(0.0, until - time.monotonic()))
            return
        kinds, weights = zip(*table.items())
        while time.monotonic() < until:
            await asyncio.sleep(self.rng.expovariate(1 / self.s.fault_every_s))
            if time.monotonic() >= until:
                break
            kind = self.rng.choices(kinds, weights)[0]
            if kind.split("_")[0] in self.busy:
                continue
            try:
                await getattr(self, kind)()
            except Exception as e:  # noqa: BLE001 - a fault that could not be made is a note
                self.notes.append(f"{kind}: {type(e).__name__}: {e}")
        self.count_live()

    def spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def settle(self) -> None:
        """End every fault still in force: the box must then find its way back alone."""
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for _, plan in self.armed:
            self.sim.disarm(plan)
        self.count_live()
        self.clock.write(0.0)
        (self.state_dir / "filler").unlink(missing_ok=True)
        if not self.server.up:
            await self.server.start()
        self.busy.clear()

    # --- Live faults (one-shot, counted when they fire) --------------------------------------

    def _arm(self, kind: str, spec: str) -> None:
        self.armed.append((kind, self.sim.inject(spec)))

    def _next_reply(self) -> str:
        """@CONN:TURN of the next reply on the newest open connection (else any connection)."""
        live = sorted(self.sim._live, key=lambda sess: sess.rec.index)
        if not live:
            return "@*:1"
        sess = live[-1]
        return f"@{sess.rec.index}:{sess.turn_in_conn + 1}"

    def count_live(self) -> None:
        still = []
        for kind, plan in self.armed:
            if plan in self.sim.faults and id(plan) in self.sim._one_shot:
                still.append((kind, plan))
            else:
                self.faults[kind] += 1
        self.armed = still

    async def live_goaway(self) -> None:
        self._arm("live_goaway", f"goaway{self._next_reply()}+0.5")

    async def live_goaway_now(self) -> None:
        if self.sim.go_away_now(self.rng.uniform(0.2, 2.0)):
            self.faults["live_goaway_now"] += 1

    async def live_1011(self) -> None:
        self._arm("live_1011", f"close-1011-mid-reply{self._next_reply()}")

    async def live_tcp_drop(self) -> None:
        self._arm("live_tcp_drop", f"tcp-drop{self._next_reply()}")

    async def live_slow_setup(self) -> None:
        self._arm("live_slow_setup", f"slow-setup@*+{self.rng.uniform(1, 5):.1f}")

    async def live_refused_handle(self) -> None:
        self._arm("live_refused_handle", "reject-handle@*")

    # --- audio --------------------------------------------------------------------------------

    def _kill_stream(self, what: str) -> bool:
        kind = "source-output" if what == "mic" else "sink-input"
        title = "Source Output #" if what == "mic" else "Sink Input #"
        listing = self.pulse.pactl("list", f"{kind}s").stdout
        pid = f'application.process.id = "{self.daemon.pid}"'
        ids = [b.split()[0] for b in listing.split(title)[1:] if pid in b]
        for i in ids:
            self.pulse.pacmd(f"kill-{kind}", i)
        return bool(ids)

    async def mic_fail(self) -> None:
        if self._kill_stream("mic"):
            self.faults["mic_fail"] += 1

    async def speaker_fail(self) -> None:
        if self._kill_stream("speaker"):
            self.faults["speaker_fail"] += 1

    # --- history server and disk --------------------------------------------------------------

    async def server_down(self) -> None:
        self.busy.add("server")
        await self.server.stop(hard=self.rng.random() < 0.5)
        self.faults["server_down"] += 1

        async def later() -> None:
            try:
                await asyncio.sleep(self.rng.uniform(5, min(60, self.s.fault_every_s * 3)))
            finally:
                if not self.server.up:
                    await self.server.start()
                self.busy.discard("server")
        self.spawn(later())

    async def disk_full(self) -> None:
        self.busy.add("disk")
        filler = self.state_dir / "filler"
        await asyncio.to_thread(_fill, filler)
        self.faults["disk_full"] += 1

        async def later() -> None:
            try:
                await asyncio.sleep(self.rng.uniform(8, min(45, self.s.fault_every_s * 3)))
            finally:
                filler.unlink(missing_ok=True)
                self.busy.discard("disk")
        self.spawn(later())

    # --- the wall clock -----------------------------------------------------------------------

    def _now_local(self) -> tuple[float, float]:
        """(real epoch seconds, seconds since local midnight of the faked clock)."""
        real = time.time()
        fake = time.localtime(real + self.clock.offset)
        return real, fake.tm_hour * 3600 + fake.tm_min * 60 + fake.tm_sec

    async def clock_back(self) -> None:
        # Never before real time minus 3 min: the simulator's certificate starts 5 min back.
        low = -180.0
        if self.clock.offset <= low + 60:
            return
        self.clock.write(max(low, self.clock.offset - self.rng.uniform(60, 6 * 3600)))
        self.faults["clock_back"] += 1

    async def clock_forward(self) -> None:
        self.clock.write(self.clock.offset + self.rng.uniform(600, 6 * 3600))
        self.faults["clock_forward"] += 1

    async def clock_midnight(self) -> None:
        _, since_midnight = self._now_local()
        self.clock.write(self.clock.offset + 86400 - since_midnight - self.rng.uniform(5, 40))
        self.faults["clock_midnight"] += 1
        self.busy.add("clock")

        async def later() -> None:  # stay long enough to cross it
            try:
                await asyncio.sleep(45)
            finally:
                self.busy.discard("clock")
        self.spawn(later())

    async def clock_quiet(self) -> None:
        _, since_midnight = self._now_local()
        start = self.quiet[0] * 60 + 60
        ahead = (start - since_midnight) % 86400
        self.clock.write(self.clock.offset + ahead)
        self.faults["clock_quiet"] += 1
        self.busy.add("clock")

        async def later() -> None:  # quiet hours for a while, then back to the real time
            try:
                await asyncio.sleep(self.rng.uniform(10, 30))
            finally:
                self.clock.write(0.0)
                self.faults["clock_back"] += 1
                self.busy.discard("clock")
        self.spawn(later())


def _fill(path: Path) -> None:
    """Take every free byte of the filesystem holding `path` (ENOSPC for everyone else)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 512):
            block = b"\0" * size
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, block)
    finally:
        os.close(fd)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _quiet_window() -> tuple[int, int]:
    """Quiet hours (minutes of the day, local) 6-7 h from now, not containing midnight."""
    now = time.localtime()
    start = (now.tm_hour * 60 + now.tm_min + 6 * 60) % 1440
    if start > 1440 - 90:
        start = (start + 120) % 1440
    return start, start + 60


def _config(work: Path, state: Path, sim: Any, server: HistoryServer,
            quiet: tuple[int, int]) -> Path:
    token = work / "sync-token"
    token.write_text(server.token + "\n")
    token.chmod(0o600)
    hhmm = lambda m: f"{m // 60:02d}:{m % 60:02d}"  # noqa: E731
    text = f"""
[live]
base_url = "{sim.base_url}"
ca_file = "{sim.ca_file}"
connect_timeout_s = 4.0
reply_timeout_s = 12.0
max_connects_per_minute = 30
[audio]
backend = "sounddevice"
input = "pulse"
output = "pulse"
[gpio]
pin_factory = "mock"
shake_enabled = true
[limits]
quiet_hours_start = "{hhmm(quiet[0])}"
quiet_hours_end = "{hhmm(quiet[1])}"
max_conversation_minutes = 10
[history]
path = "{state / 'history.db'}"
[sync]
url = "http://127.0.0.1:{server.port}"
token_file = "{token}"
"""
    path = work / "config.toml"
    path.write_text(text)
    return path


def _events(work: Path, seconds: float) -> None:
    """A shake every 4 s while the child plays: wakes an idle box, never interrupts it."""
    lines = [f"{t:.1f} shake shake 6 0.08" for t in range(8, int(seconds), 4)]
    (work / "events.txt").write_text("\n".join(lines) + "\n")


async def child(daemon: Daemon, pulse: Any, utterances: list[Any], rng: random.Random,
                until: float, out: Outcomes) -> None:
    """Talk whenever the box listens; wait for the answer; now and then fall quiet."""
    while time.monotonic() < until:
        state = await daemon.wait_state({"listening"}, timeout=min(30, until - time.monotonic()))
        if state is None:
            continue
        await asyncio.sleep(rng.uniform(0.3, 1.2))
        if daemon.state != "listening":
            continue
        if rng.random() < 0.04:  # the child wanders off: the quiet timeout ends the talk
            await asyncio.sleep(QUIET_TIMEOUT_S + 5)
            continue
        pcm = rng.choice(utterances)
        seen = len(daemon.states)
        pulse.feed(pcm)
        out.utterances += 1
        t_end = time.monotonic() + len(pcm) / 48_000
        deadline = t_end + 60
        outcome = "unheard"
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            after = [s for _, s in daemon.states[seen:]]
            if "speaking" in after:
                outcome = "answered"
                break
            if any(s in ("offline", "error", "idle", "sleeping") for s in after):
                outcome = "told"
                break
            if "thinking" in after:
                outcome = "lost"  # heard; stays lost unless an answer or a signal comes
            elif time.monotonic() > t_end + 5:
                break  # still listening: the gate did not take it as a turn
        if outcome == "answered":
            out.answered += 1
            await daemon.wait_state({"listening", "idle", "offline", "error", "sleeping"}, 60)
        elif outcome == "told":
            out.told += 1
        elif outcome == "lost":
            out.lost += 1
            daemon.errors.append(f"utterance {out.utterances}: heard, never answered, box said "
                                 f"nothing (states {[s for _, s in daemon.states[seen:]]})")
        else:
            out.unheard += 1


def _device_messages(state: Path) -> tuple[list[tuple[str, str, str]], list[str], int]:
    """(messages, uuids of completed turns' replies, outbox size) from the box's SQLite."""
    con = sqlite3.connect(f"file:{state / 'history.db'}?mode=ro", uri=True, timeout=10)
    try:
        msgs = con.execute("SELECT uuid, sender, content FROM messages").fetchall()
        replies = [u for u, t in con.execute(
            "SELECT uuid, timings FROM messages WHERE sender = 'assistant'")
            if "interrupted" not in json.loads(t)]
        outbox = con.execute("SELECT count(*) FROM outbox").fetchone()[0]
        try:
            outbox -= con.execute("SELECT count(*) FROM outbox WHERE refused IS NOT NULL"
                                  ).fetchone()[0]
        except sqlite3.OperationalError:
            pass
        return msgs, replies, outbox
    finally:
        con.close()


async def soak(s: Settings) -> dict[str, Any]:
    from device.audio.pulse_harness import PulseServer, espeak
    from device.live.simulator import Simulator

    rng = random.Random(s.seed)
    s.work.mkdir(parents=True, exist_ok=True)
    state = s.work / "state"
    state.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={STATE_FS_BYTES},mode=0700", "tmpfs",
                    str(state)], check=True, timeout=30)
    pulse = PulseServer(s.work / "pulse", rates=(48_000,))
    pulse.start()
    utterances = [espeak(t, 48_000, voice="en-us+f4", pitch=70) for t in SENTENCES]
    server = HistoryServer(s.work)
    await server.start()
    clock = Clock(s.work / "faketime")
    quiet = _quiet_window()
    talk_s = s.minutes * 60
    _events(s.work, talk_s)
    out = Outcomes()
    summary: dict[str, Any] = {}
    errors: list[str] = []
    async with Simulator(api_key=SOAK_KEY, cert_dir=s.work / "certs", voice="espeak") as sim:
        config = _config(s.work, state, sim, server, quiet)
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "GEMINI_API_KEY")}
        env.update(PYTHONUNBUFFERED="1", GEMINI_API_KEY=SOAK_KEY, WATCHDOG_USEC=str(int(WATCHDOG_S * 1e6)),
                   STATE_DIRECTORY=str(state), RUNTIME_DIRECTORY=str(s.work / "run"),
                   **clock.env())
        daemon = Daemon(s.work, config, env)
        notify = asyncio.create_task(daemon.read_notify())
        await daemon.start()
        supervisor = asyncio.create_task(daemon.supervise())
        chaos = Chaos(s, rng, sim, pulse, daemon, server, clock, state, quiet)
        rss: list[tuple[float, float]] = []
        threads: list[int] = []

        async def sample() -> None:
            while True:
                await asyncio.sleep(5)
                v = daemon.rss_mb()
                if v is not None:
                    rss.append((time.monotonic(), v))
                    threads.append(daemon.threads())

        sampler = asyncio.create_task(sample())
        t0 = time.monotonic()
        try:
            if await daemon.wait_state({"idle"}, 60) is None:
                raise RuntimeError("the daemon never became idle; see daemon.log:\n"
                                   + "\n".join(list(daemon.log_lines)[-30:]))
            until = t0 + talk_s
            warm = t0 + min(60.0, talk_s / 4)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(child(daemon, pulse, utterances, rng, until, out))
                tg.create_task(chaos.run(until))
            await chaos.settle()
            # The child stops; the box must come back to idle by itself (quiet timeout).
            if await daemon.wait_state({"idle"}, QUIET_TIMEOUT_S + 90) != "idle":
                errors.append(f"the box is {daemon.state!r}, not idle, after the soak")
            # Sync catches up (its backoff may have grown during outages: up to 5 min).
            t_sync = time.monotonic()
            synced = False
            while time.monotonic() - t_sync < 330:
                dev, replies, outbox = await asyncio.to_thread(_device_messages, state)
                srv = await asyncio.to_thread(server.messages)
                if outbox == 0 and {m[0] for m in dev} <= {m[0] for m in srv}:
                    synced = True
                    break
                await asyncio.sleep(2)
            sync_wait = time.monotonic() - t_sync
            srv_by_uuid = collections.Counter(m[0] for m in srv)
            dev_uuids = {m[0] for m in dev}
            missing = [u for u in replies if srv_by_uuid[u] == 0]
            dupes = [u for u, n in srv_by_uuid.items() if n > 1]
            if not synced:
                errors.append(f"sync did not catch up in {sync_wait:.0f} s: outbox {outbox}, "
                              f"{len(dev_uuids - set(srv_by_uuid))} messages not on the server")
            if len(replies) < daemon.turns:
                errors.append(f"{daemon.turns} turns completed but only {len(replies)} saved "
                              f"on the box")
            if set(srv_by_uuid) - dev_uuids:
                errors.append("the server has messages the box does not")
            if dupes:
                errors.append(f"{len(dupes)} messages twice on the server")
            dev_content = {m[0]: m for m in dev}
            changed = [m for m in srv if m[0] in dev_content and dev_content[m[0]] != m]
            if changed:
                errors.append(f"{len(changed)} messages differ between box and server")
            turns_lost = max(0, daemon.turns - len(replies)) + len(missing) + out.lost
            listening_sockets = _listening_sockets(daemon.pid)
            if listening_sockets:
                errors.append(f"the daemon listens on {listening_sockets}")
        finally:
            sampler.cancel()
            rc = await daemon.stop()
            supervisor.cancel()
            notify.cancel()
            await chaos.settle()
            await server.stop(hard=False)
            pulse.stop()
            subprocess.run(["umount", "-l", str(state)], check=False, timeout=30)
        if rc != 0:
            errors.append(f"SIGTERM: exit {rc}, not 0")
        gaps = [b - a for a, b in zip(daemon.watchdog, daemon.watchdog[1:])]
        wd_gap = max(gaps, default=0.0)
        if wd_gap > WATCHDOG_S:
            errors.append(f"a watchdog gap of {wd_gap:.1f} s: systemd would have killed the box")
        rss_start = _median([v for t, v in rss if warm <= t < warm + 60]) or (rss[0][1] if rss else 0)
        rss_end = _median([v for _, v in rss[-12:]]) or 0.0
        slope = _slope([(t, v) for t, v in rss if t >= warm])
        half = warm + (rss[-1][0] - warm) / 2 if rss else warm
        slope_late = _slope([(t, v) for t, v in rss if t >= half])
        with open(s.work / "rss.csv", "w") as f:  # seconds since start, MB, threads
            f.writelines(f"{t - t0:.0f},{v:.2f},{n}\n" for (t, v), n in zip(rss, threads))
        if rss_end - rss_start > s.rss_growth_max_mb:
            errors.append(f"RSS grew {rss_end - rss_start:.1f} MB")
        # Flat means flat once warm: allocator arenas, SQLite's page cache and first-use code
        # paths fill during the first minutes (a 25-min run: +3.6 MB in its first half, then
        # 0.07 MB/min), so the second half's slope is the leak check.
        if s.minutes >= 15 and slope_late > s.rss_slope_max_mb_per_min:
            errors.append(f"RSS grows {slope_late:.3f} MB/min in the second half")
        if chaos.faults["disk_full"] and not daemon.disk_full_logged:
            errors.append("the disk filled up but the log never said so")
        if daemon.turns == 0:
            errors.append("no turn completed")
        errors += daemon.errors
        summary = {
            "ok": not errors and daemon.restarts == 0,
            "minutes": s.minutes,
            "seed": s.seed,
            "faults": dict(sorted(chaos.faults.items())),
            "faults_total": sum(chaos.faults.values()),
            "turns_completed": daemon.turns,
            "turns_lost": turns_lost,
            "turns_on_server": len(replies) - len(missing),
            "server_messages": len(srv_by_uuid),
            "utterances": out.utterances,
            "answered": out.answered,
            "told_offline_or_sleeping": out.told,
            "not_taken_as_speech": out.unheard,
            "restarts": daemon.restarts,
            "rss_start_mb": round(rss_start, 1),
            "rss_end_mb": round(rss_end, 1),
            "rss_slope_mb_per_min": round(slope, 4),
            "rss_slope_second_half_mb_per_min": round(slope_late, 4),
            "threads_start": threads[0] if threads else 0,
            "threads_end": threads[-1] if threads else 0,
            "watchdog_max_gap_s": round(wd_gap, 2),
            "watchdog_pings_withheld": daemon.pings_withheld,
            "disk_full_log_lines": daemon.disk_full_logged,
            "sync_wait_s": round(sync_wait, 1),
            "live_connections": len(sim.connections),
            "exit_code": rc,
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "chaos_notes": chaos.notes[:10],
            "errors": errors[:20],
        }
    return summary


def _listening_sockets(pid: int) -> list[str]:
    """Sockets the process listens on (TCP, UDP, unix), from `ss`."""
    out = subprocess.run(["ss", "-H", "-l", "-p", "-n", "-t", "-u", "-x"], capture_output=True,
                         text=True, timeout=30).stdout
    return [line.split()[4] if len(line.split()) > 4 else line
            for line in out.splitlines() if f"pid={pid}," in line]


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else 0.0


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares MB per minute."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mt) * (v - mv) for t, v in points) / var * 60


def _in_own_namespace() -> None:
    """Run the soak in a private mount namespace (root there), so its tmpfs goes with it."""
    if os.environ.get(NS_ENV):
        return
    if not shutil.which("unshare"):
        raise SystemExit("soak: unshare (util-linux) is missing: apt-get install util-linux")
    args = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        args += ["--user", "--map-root-user"]
    os.environ[NS_ENV] = "1"
    os.execvp("unshare", [*args, PY, "-m", "tests.soak_box", *sys.argv[1:]])


def main() -> int:
    import logging
    import tempfile
    if not Path(FAKETIME_LIB).exists():
        print("soak: libfaketime is missing: apt-get install faketime", file=sys.stderr)
        return 2
    _in_own_namespace()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    minutes = float(os.environ.get("SOAK_MINUTES", "30"))
    seed = int(os.environ.get("SOAK_SEED", str(random.randrange(1 << 30))))
    work = Path(os.environ.get("SOAK_DIR") or tempfile.mkdtemp(prefix="talkie-soak-"))
    every = float(os.environ.get("SOAK_FAULT_EVERY_S", "12"))
    print(f"soak: {minutes:g} min, seed {seed}, faults every ~{every:g} s, in {work}",
          flush=True)
    summary = asyncio.run(soak(Settings(minutes, seed, work, fault_every_s=every)))
    print(json.dumps(summary), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
