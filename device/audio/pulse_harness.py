"""A private PulseAudio server: null-sink speakers and pipe-source microphones.

Used by the tests, the benches and `talkie simulate --audio pulse` (`PulseSimulation`), so
real PortAudio runs end to end on a machine with no sound card (CI, a laptop over SSH).

PortAudio (libportaudio2) speaks ALSA; ALSA reaches PulseAudio through the 'pulse' plugin
(Debian package libasound2-plugins, pulled in by pulseaudio). The server here is started with
its own runtime dir, HOME and socket, so it never touches a desktop's session, and runs as
root too (`--system=false`, anonymous auth on its own socket). `PULSE_SERVER` points libpulse
(inside the ALSA plugin) at it, and PortAudio is re-initialised so it sees the devices.

Devices, per rate R in `rates`: sink `spkR` (record its `spkR.monitor`), source `micR` fed
from a FIFO by a writer thread in real time (speech when given, silence otherwise).
`use(R)` makes them the defaults, which is what PortAudio's 'pulse' and 'default' devices use.
`noise_rms` adds white noise to the mic (a room is never digital silence: in digital silence the
VAD gate's adaptive floor cannot reject a near-silent tail, see bench/conversation.py).
`echo_room(...)` makes the mic hear the speaker too, through a delay and a room
(device/audio/echo_room.py); `reset()` turns it off.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Self

import numpy as np

from device.audio.backend import MicFrame, Microphone
from device.audio.echo_room import EchoRoom
from device.audio.gating import GatedAudio
from device.errors import AudioDeviceError


class PulseError(AudioDeviceError):
    """The private PulseAudio server cannot run here (the message says what to install)."""


class PipeFeeder:
    """Writes a pipe source's FIFO at real-time pace: queued audio first, silence otherwise,
    plus the echo of the speaker when an `EchoRoom` is set, plus the noise."""

    CHUNK_MS = 10

    def __init__(self, fifo: Path, rate: int, noise_rms: float = 0.0) -> None:
        self.rate = rate
        #: White noise added to everything written (a room is never digital silence).
        self.noise_rms = noise_rms
        self._fifo = fifo
        self._queue: queue.Queue[np.ndarray] = queue.Queue()
        self._stop = threading.Event()
        self._drop = threading.Event()
        self._dropped = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._fd: int | None = None
        self._thread = threading.Thread(target=self._run, name=f"pulse-feed-{rate}", daemon=True)
        #: monotonic time the first sample of the last `feed()` went into the FIFO.
        self.started_at: float | None = None
        #: the speaker's echo mixed into every chunk (None: the mic does not hear the speaker)
        self.echo: EchoRoom | None = None
        #: chunks written late by more than a chunk (the writer fell behind real time)
        self.late_chunks = 0
        #: set: nothing is written, so the source delivers nothing and raises nothing (a hung
        #: sound server, an I2S mic whose clock stopped)
        self.starved = threading.Event()

    def set_echo(self, room: EchoRoom | None) -> None:
        """Mix `room`'s echo into everything written from the next chunk on (None: stop)."""
        if room is not None:
            if room.rate != self.rate:
                raise ValueError(f"echo room at {room.rate} Hz cannot feed the mic at "
                                 f"{self.rate} Hz; the room does not resample")
            room.feeder = self
        self.echo = room

    def start(self) -> None:
        # O_RDWR: opening never blocks even before PulseAudio has the reading end.
        self._fd = os.open(self._fifo, os.O_RDWR | os.O_NONBLOCK)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def feed(self, samples: np.ndarray) -> None:
        """Queue int16 mono samples at this source's rate, played after what is queued."""
        self._idle.clear()
        self._queue.put(np.asarray(samples, np.int16))

    def clear(self) -> None:
        """Forget everything not yet heard: the queue, and (in the writer thread) the part
        of a feed being written and what sits in the FIFO. Without that, a source nobody
        recorded hands the next reader up to 0.7 s of an earlier test's audio."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._dropped.clear()
        self._drop.set()
        self._dropped.wait(1.0)   # so a feed right after this is never dropped with the rest

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until everything fed has been written."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        n = self.rate * self.CHUNK_MS // 1000
        silence = np.zeros(n, np.int16)
        pending = np.zeros(0, np.int16)
        deadline = time.monotonic()
        rng = np.random.default_rng(0)
        while not self._stop.is_set():
            if self._drop.is_set():
                self._drop.clear()
                pending = pending[:0]
                self._drain()
                self._idle.set()
                self._dropped.set()
            if len(pending) < n:
                try:
                    nxt = self._queue.get_nowait()
                    if not len(pending):
                        self.started_at = max(deadline, time.monotonic())
                    pending = np.concatenate((pending, nxt))
                except queue.Empty:
                    pass
            if len(pending):
                chunk = pending[:n]
                pending = pending[n:]
                if len(chunk) < n:
                    chunk = np.concatenate((chunk, silence[:n - len(chunk)]))
                if not len(pending) and self._queue.empty():
                    self._idle.set()
            else:
                chunk = silence
            room = self.echo
            if room is not None:
                mixed = chunk + room.take(n, deadline)
                if self.noise_rms:
                    mixed += rng.normal(0, self.noise_rms, n)
                chunk = np.clip(np.rint(mixed), -32768, 32767).astype(np.int16)
            elif self.noise_rms:
                chunk = np.clip(chunk + rng.normal(0, self.noise_rms, n), -32768, 32767
                                ).astype(np.int16)
            assert self._fd is not None
            try:
                if not self.starved.is_set():
                    os.write(self._fd, chunk.tobytes())
            except BlockingIOError:
                pass   # nobody records the mic: the FIFO is full, and a real mic drops too
            deadline += n / self.rate
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.5:
                deadline = time.monotonic()
            if delay < -n / self.rate:
                self.late_chunks += 1

    def _drain(self) -> None:
        assert self._fd is not None
        try:
            while os.read(self._fd, 65536):
                pass
        except BlockingIOError:
            pass


class MonitorRecorder:
    """Records a sink's monitor with parec for the whole session (sample times +-10 ms).

    It runs from server start because a low-latency reader of the monitor is what makes the
    null sink run in small blocks: with nobody asking for low latency, module-null-sink renders
    2 s ahead and a low-latency PortAudio stream gets starved. `Recording` views take slices.
    """

    KEEP_S = 120

    def __init__(self, server: PulseServer, sink: str, rate: int) -> None:
        self.rate = rate
        self._proc = subprocess.Popen(
            ["parec", f"--device={sink}.monitor", f"--rate={rate}", "--channels=1",
             "--format=s16le", "--latency-msec=5", "--raw"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=server.env(),
            preexec_fn=_die_with_parent)  # noqa: PLW1509
        self._chunks: list[bytes] = []
        self._ends: list[int] = []       # sample count after each chunk
        self._times: list[float] = []    # ... and when it arrived
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, name=f"parec-{sink}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        total = 0
        carry = b""
        keep = self.KEEP_S * self.rate
        while True:
            data = os.read(fd, 4096)
            t = time.monotonic()
            if not data:
                return
            data = carry + data
            cut = len(data) - len(data) % 2
            data, carry = data[:cut], data[cut:]
            total += len(data) // 2
            with self._lock:
                self._chunks.append(data)
                self._ends.append(total)
                self._times.append(t)
                if total - self._ends[0] > keep + self.rate:    # trim a second at a time
                    k = bisect.bisect_left(self._ends, total - keep)
                    del self._chunks[:k], self._ends[:k], self._times[:k]

    @property
    def total(self) -> int:
        with self._lock:
            return self._ends[-1] if self._ends else 0

    @property
    def held_mb(self) -> float:
        """Memory the kept recording takes (up to KEEP_S of audio)."""
        with self._lock:
            return sum(map(len, self._chunks)) / 1e6

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=5)
        self._thread.join(timeout=2)

    def since(self, start: int) -> np.ndarray:
        """Samples from index `start` (counted from server start) on, as far as kept."""
        with self._lock:
            k = bisect.bisect_right(self._ends, start)   # the chunk holding `start`
            if k == len(self._chunks):
                return np.zeros(0, np.int16)
            first = self._ends[k] - len(self._chunks[k]) // 2
            data = b"".join(self._chunks[k:])
        return np.frombuffer(data, np.int16)[max(0, start - first):].copy()

    def marks_since(self, start: int) -> list[tuple[int, float]]:
        """(samples since `start` at the end of a delivered block, its arrival time)."""
        with self._lock:
            k = bisect.bisect_right(self._ends, start)
            return [(total - start, t) for total, t in zip(self._ends[k:], self._times[k:])]

    def time_of(self, index: int) -> float:
        """Approximate monotonic time sample `index` left the sink. Blocks older than KEEP_S
        are dropped, and then this only extrapolates: see `Recording.timeline()`."""
        with self._lock:
            k = bisect.bisect_right(self._ends, index)
            if k == len(self._ends):
                raise IndexError(index)
            return self._times[k] - (self._ends[k] - 1 - index) / self.rate


class Recording:
    """What a sink played from the moment `PulseServer.record()` was called."""

    def __init__(self, recorder: MonitorRecorder) -> None:
        self.rate = recorder.rate
        self._rec = recorder
        self._start = recorder.total

    @property
    def start(self) -> int:
        """Index of `samples()[0]` in the sink's count since server start (what
        `EchoRoom.played_at` takes)."""
        return self._start

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def stop(self) -> None:
        pass

    def samples(self) -> np.ndarray:
        """Everything the sink played since the recording began, int16 mono."""
        return self._rec.since(self._start)

    def tail(self, seconds: float) -> np.ndarray:
        """The last `seconds` the sink played (less if the recording is shorter)."""
        end = self._rec.total
        return self._rec.since(max(self._start, end - int(seconds * self.rate)))

    def time_of(self, index: int) -> float:
        """Monotonic time (+-10 ms) at which sample `index` of `samples()` was played."""
        return self._rec.time_of(self._start + index)

    def timeline(self) -> Timeline:
        """The recording's clock as it stands: keep it to date samples later (the recorder
        forgets blocks after KEEP_S, and extrapolating over minutes drifts by tens of ms)."""
        marks = self._rec.marks_since(self._start)
        return Timeline(self.rate, np.array([m[0] for m in marks], np.int64),
                        np.array([m[1] for m in marks], np.float64))


class Timeline:
    """Sample index <-> monotonic time for a recording, from its blocks' arrival times."""

    def __init__(self, rate: int, ends: np.ndarray, times: np.ndarray) -> None:
        self.rate, self._ends, self._times = rate, ends, times

    def time_of(self, index: int) -> float:
        j = min(int(np.searchsorted(self._ends, index, side="right")), len(self._ends) - 1)
        return float(self._times[j] - (self._ends[j] - 1 - index) / self.rate)

    def index_at(self, t: float) -> int:
        j = min(int(np.searchsorted(self._times, t)), len(self._times) - 1)
        return max(0, int(self._ends[j] - 1 - round((self._times[j] - t) * self.rate)))


class PulseServer:
    """A private PulseAudio server with null sinks and pipe sources at the given rates."""

    def __init__(self, root: Path, rates: tuple[int, ...] = (48_000, 44_100),
                 noise_rms: float = 0.0) -> None:
        self.root = Path(root)
        self.rates = rates
        self.noise_rms = noise_rms
        self.socket = self.root / "native"
        self.feeders: dict[int, PipeFeeder] = {}
        self.recorders: dict[int, MonitorRecorder] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._saved_env: dict[str, str | None] = {}
        self.rate = rates[0]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(PULSE_SERVER=f"unix:{self.socket}", HOME=str(self.root),
                   XDG_RUNTIME_DIR=str(self.root), PULSE_RUNTIME_PATH=str(self.root / "rt"))
        return env

    def start(self) -> None:
        for tool in ("pulseaudio", "pactl", "parec"):
            if not shutil.which(tool):
                raise PulseError(f"{tool} is missing: apt-get install pulseaudio pulseaudio-utils "
                                 f"libasound2-plugins")
        self.root.mkdir(parents=True, exist_ok=True)
        lines = [f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.socket}",
                 # pacmd (kill-source-output etc.) talks to this; it finds it by the pid file.
                 "load-module module-cli-protocol-unix"]
        for r in self.rates:
            lines.append(f"load-module module-null-sink sink_name=spk{r} rate={r} channels=2")
            lines.append(f"load-module module-pipe-source source_name=mic{r} "
                         f"file={self.root}/mic{r}.fifo rate={r} channels=1 format=s16le")
        script = self.root / "test.pa"
        script.write_text("\n".join(lines) + "\n")
        self._log = open(self.root / "pulseaudio.log", "wb")  # noqa: SIM115
        self._proc = subprocess.Popen(
            ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--system=false",
             "--disallow-exit", "--use-pid-file=yes", "--disable-shm=yes", "-F", str(script),
             "--log-target=stderr", "--log-level=notice"],
            env=self.env(), stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent)  # noqa: PLW1509
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PulseError("pulseaudio exited at start:\n" + self.log_text())
            if self.socket.exists() and self.pactl("info", check=False).returncode == 0:
                break
            time.sleep(0.05)
        else:
            raise PulseError("pulseaudio did not come up in 15 s:\n" + self.log_text())
        for r in self.rates:
            f = PipeFeeder(self.root / f"mic{r}.fifo", r, self.noise_rms)
            f.start()
            self.feeders[r] = f
            self.recorders[r] = MonitorRecorder(self, f"spk{r}", r)
        # Until the recorder asked for 5 ms, the null sink ran 2 s ahead of real time; a
        # suspend/resume restarts its clock at "now" with the small blocks.
        time.sleep(0.3)
        for r in self.rates:
            self.pactl("suspend-sink", f"spk{r}", "1")
            self.pactl("suspend-sink", f"spk{r}", "0")
        for k, v in self.env().items():
            if k.startswith(("PULSE_", "XDG_RUNTIME")):
                self._saved_env[k] = os.environ.get(k)
                os.environ[k] = v
        self.use(self.rates[0])
        reinit_portaudio()

    def stop(self) -> None:
        for f in self.feeders.values():
            f.stop()
        for rec in self.recorders.values():
            rec.stop()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
            self._log.close()
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def log_text(self) -> str:
        try:
            return (self.root / "pulseaudio.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["pactl", *args], env=self.env(), capture_output=True, text=True,
                              check=check, timeout=10)

    def pacmd(self, *args: str) -> subprocess.CompletedProcess[str]:
        """pacmd, for what pactl cannot do (e.g. kill-source-output)."""
        return subprocess.run(["pacmd", *args], env=self.env(), capture_output=True, text=True,  # noqa: PLW1510
                              timeout=10)

    def use(self, rate: int) -> None:
        """Make the `rate` sink and source the defaults (what PortAudio's 'pulse' opens)."""
        self.pactl("set-default-sink", f"spk{rate}")
        self.pactl("set-default-source", f"mic{rate}")
        self.rate = rate

    def reset(self) -> None:
        """Echo off, nothing queued or in the FIFOs, the mics delivering, the first rate's
        devices the defaults."""
        for f in self.feeders.values():
            f.starved.clear()
            f.set_echo(None)
            f.clear()
        self.use(self.rates[0])

    def echo_room(self, delay_ms: float = 40.0, gain_db: float = -6.0, rt60_s: float = 0.25,
                  *, rir: np.ndarray | None = None, seed: int = 0,
                  rate: int | None = None) -> EchoRoom:
        """Let mic `micRATE` hear sink `spkRATE` (default: the current rate) from the next
        10 ms on: `delay_ms` after it is played (plus the path's own latency, see
        device/audio/echo_room.py), through a room of `rt60_s` (or impulse response `rir`
        at that rate), `gain_db` relative to what the sink plays. Replaces the room there was;
        off with `room.close()`, leaving its `with` block, or `reset()`."""
        r = rate or self.rate
        room = EchoRoom(self.recorders[r], r, delay_ms=delay_ms, gain_db=gain_db,
                        rt60_s=rt60_s, rir=rir, seed=seed)
        self.feeders[r].set_echo(room)
        return room

    def feed(self, samples: np.ndarray, rate: int | None = None) -> PipeFeeder:
        """Speak int16 mono `samples` (at the source's rate) into the mic `micRATE`."""
        feeder = self.feeders[rate or self.rate]
        feeder.feed(samples)
        return feeder

    def record(self, rate: int | None = None) -> Recording:
        """What sink `spkRATE` plays from now on (mono, at that rate; +-10 ms timestamps)."""
        return Recording(self.recorders[rate or self.rate])


class FedMicrophone:
    """A live microphone that ends once what was fed into it has been heard, plus `tail_s`.

    `talkie simulate` stops when its microphone ends (a WAV file does); a PulseAudio pipe
    source never does, so this one stops at the end of the fed audio.
    """

    def __init__(self, mic: Microphone, feeder: PipeFeeder, samples: int,
                 tail_s: float = 0.2) -> None:
        self._mic = mic
        self._feeder = feeder
        self._seconds = samples / feeder.rate + tail_s

    async def __aenter__(self) -> Self:
        await self._mic.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._mic.__aexit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._mic, name)   # overflows, state, ...: the real microphone's

    def _heard_all(self, t: float) -> bool:
        started = self._feeder.started_at
        return started is not None and t >= started + self._seconds

    async def frames(self) -> AsyncIterator[MicFrame]:
        async for frame in self._mic.frames():
            yield frame
            if self._heard_all(frame.t):
                return

    async def gated(self, gate: object) -> AsyncIterator[GatedAudio]:
        # A hand-over carries no capture time; it comes within a batch of the capture.
        async for got in self._mic.gated(gate):
            yield got
            if self._heard_all(time.monotonic()):
                return


class PulseSimulation:
    """`talkie simulate --audio pulse`: the daemon on real PortAudio through a private server.

    The WAV `mic` is spoken into the pipe source `mic48000` in real time from `begin()`; the
    null sink `spk48000` is recorded from `begin()` to the end, into the WAV `out` (48 kHz).
    """

    RATE = 48_000

    def __init__(self, mic: str | Path, out: str | Path) -> None:
        self.mic = Path(mic)
        self.out = Path(out)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._server: PulseServer | None = None
        self._speech = np.zeros(0, np.int16)
        self._recording: Recording | None = None

    def audio_config(self) -> dict[str, Any]:
        """The [audio] keys that put the daemon on this server's devices."""
        return {"backend": "sounddevice", "input": "pulse", "output": "pulse",
                "input_rate": self.RATE, "output_rate": self.RATE}

    async def __aenter__(self) -> Self:
        from device.audio.files import read_wav
        self._speech = await asyncio.to_thread(read_wav, self.mic, self.RATE)
        self._tmp = tempfile.TemporaryDirectory(prefix="talkie-pulse-")
        self._server = PulseServer(Path(self._tmp.name), rates=(self.RATE,))
        try:
            await asyncio.to_thread(self._server.start)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._recording is not None:
                await asyncio.to_thread(self._write_out, self._recording.samples())
        finally:
            if self._server is not None:
                await asyncio.to_thread(self._server.stop)
                self._server = None
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    def microphone(self, mic: Microphone) -> FedMicrophone:
        """Wrap the daemon's microphone so that it ends with the fed WAV."""
        assert self._server is not None
        return FedMicrophone(mic, self._server.feeders[self.RATE], len(self._speech))

    def begin(self) -> None:
        """Start speaking the WAV into the microphone and recording the speaker."""
        assert self._server is not None
        self._recording = self._server.record(self.RATE)
        self._server.feed(self._speech, self.RATE)

    def _write_out(self, samples: np.ndarray) -> None:
        import wave
        try:
            with wave.open(str(self.out), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(self.RATE)
                w.writeframes(samples.astype("<i2").tobytes())
        except OSError as e:
            raise AudioDeviceError(f"--out {self.out} cannot be written ({e.strerror}); give a "
                                   f"writable path") from None


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, so no server outlives a run."""
    import ctypes
    import signal
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


def reinit_portaudio() -> None:
    """Make PortAudio enumerate devices again (it does so only at initialisation)."""
    import sounddevice as sd
    sd._terminate()
    sd._initialize()


def espeak(text: str, rate: int = 16_000, voice: str = "en-us", pitch: int = 50,
           speed: int = 160) -> np.ndarray:
    """Speech from espeak-ng as int16 mono at `rate`."""
    import io
    import wave

    import soxr
    out = subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed),
                          "--stdout", text], capture_output=True, check=True, timeout=30).stdout
    with wave.open(io.BytesIO(out)) as w:
        src = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    if src != rate:
        x = soxr.resample(x.astype(np.float32) / 32768, src, rate)
        x = (np.clip(x, -1, 0.99997) * 32768).astype(np.int16)
    return x
