"""What the child feels, Talkie against a quickstart-style baseline, on the same conversations.

    python bench/conversation.py [--conversations 20] [--soak-s 0] [--also REF] [--json]

Every client runs in its own process, with its own private PulseAudio server (the same null
devices at the same rates: a 48 kHz pipe-source mic and null sink, opened by both clients at
16 kHz in and 24 kHz out), against one Live simulator in a process of its own
(bench/sim_proc.py, with server-side end-pointing after 800 ms of silence, which the baseline
relies on). All clients run at once, so they share the machine's load.

Clients: `talkie` (this tree's daemon, bench/talkie_client.py), `baseline` (Google's
quickstart, bench/baseline_client.py), `floor` (a process that only reads the mic in 20 ms
blocks: what PortAudio costs before any work), and with `--also REF` Talkie as it was at git
REF (`talkie@REF`), so a change is measured before and after in the same run.

The scenario, per conversation (espeak-ng child speech, the simulator's tone voice):
  A  the child presses the button (cold: no connection yet) and speaks at once; the reply
     plays out; the child waits 0.8 s, as children do, and
  B  presses again (warm) and speaks; once the reply has sounded ~0.56 s, inside a beep,
  C  the child interrupts: Talkie's button (press edge); the baseline has no button, so its
     barge-in is the child's voice (speech onset); the child's words follow, the reply plays
     out, a pause, and a 2.3 s hold ends the conversation (the baseline's `end` at 2.0 s).
Replies play out before the child answers: an earlier scenario cut every reply off with the
next utterance, which made the always-on baseline's upload mostly the child's own speech.

Figures (each p50/p95 over every turn of every conversation):
  wake_to_first_frame   button edge -> the first audio message the simulator receives after
                        it; cold (A) and warm (B, C). The child speaks from the edge on.
  speech_end_to_signal  last sample of speech into the mic pipe -> the turn end at the
                        simulator (Talkie's audioStreamEnd, the baseline's server VAD).
  reply_to_sound        the simulator putting a reply's first chunk on the socket -> its first
                        sample at the sink (recorded monitor, +-10 ms), and the same minus the
                        client's output latency as PortAudio reports it (the device buffer).
  speech_end_to_sound   what the child waits: end of speech -> reply heard.
  barge_in              edge (Talkie) or speech onset (baseline) -> the last loud sample
                        before 150 ms of silence at the sink. The baseline plays on: the
                        simulator (like the service) has sent the whole reply by then, so
                        no `interrupted` comes, and its playback queue holds the rest.
  cpu                   process CPU seconds (all threads, /proc) per second of conversation;
                        idle (between conversations) apart.
  upload                bytes the simulator received per conversation (JSON frames, base64
                        audio included) and the PCM inside them.
  rss                   peak (VmHWM) and, with --soak-s, growth over one long conversation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device.audio.pulse_harness import PulseServer, Recording, Timeline, espeak  # noqa: E402
from device.config import Config  # noqa: E402

PY = sys.executable
DEVICE_RATE = 48_000
UTTERANCES = [
    ("Hello Talkie! Can you hear me?", "Tell me about the moon.", "No, I want the dragon one."),
    ("Good morning, bear!", "What do dinosaurs eat?", "Wait, what about the big ones?"),
    ("Hi! I am back.", "Can we sing a song?", "No, a different song please."),
    ("Hello friend!", "Why is the sky blue?", "But why at night is it black?"),
]
#: The room: white noise at -60 dBFS under everything the mic hears. In digital silence the
#: gate's noise guard sits at -86 dB, and webrtcvad calls espeak's -75 dB tail voice or not
#: depending on where the 20 ms frame grid falls: the end of speech then moved by up to
#: 100 ms from one run to the next (bench/conversation.py's own finding, see the report).
ROOM_NOISE_RMS = 33.0
LOUD = 1000          # |sample| above this is sound at the sink (replies peak near 8000+)
PAUSE_S = 0.8        # the child's pause after a reply before answering
HOLD_S = 2.3         # the long press that ends a conversation (long_press_s is 2.0)
IDLE_S = 1.0         # between conversations
TICK = os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile: with few samples p95 is the slowest, as it should be."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))] if s else float("nan")


def stats_ms(xs: list[float]) -> dict[str, Any]:
    ms = [x * 1000 for x in xs]
    return {"p50_ms": round(pct(ms, 50), 1), "p95_ms": round(pct(ms, 95), 1), "n": len(ms),
            "max_ms": round(max(ms), 1) if ms else None}


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a live process."""
    return proc_cpu_path(Path(f"/proc/{pid}/stat"))


def proc_cpu_path(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_mem(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    got = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            got[k] = int(v.split()[0]) / 1024
    return got["VmRSS"], got["VmHWM"]


# --- the simulator process ----------------------------------------------------------------

class SimProcess:
    def __init__(self, proc: asyncio.subprocess.Process, base_url: str, ca_file: str) -> None:
        self.proc, self.base_url, self.ca_file = proc, base_url, ca_file
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, server_vad_ms: int, pace: float) -> SimProcess:
        # The simulator's own replies (3-4 s each), in its tone voice.
        args = [PY, str(ROOT / "bench" / "sim_proc.py"), "--pace", str(pace),
                "--server-vad-ms", str(server_vad_ms)]
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
            limit=2**28)
        assert proc.stdout is not None
        hello = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        return cls(proc, hello["base_url"], hello["ca_file"])

    async def report(self) -> list[dict[str, Any]]:
        async with self._lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(b"report\n")
            await self.proc.stdin.drain()
            return json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 60))

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"quit\n")
            await self.proc.stdin.drain()
            await asyncio.wait_for(self.proc.wait(), 10)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


# --- one client ----------------------------------------------------------------------------

@dataclass
class Turn:
    kind: str                       # "cold", "warm", "barge"
    edge: float                     # button edge (client's clock read at the pin)
    onset: float                    # first sample of speech into the mic pipe
    end: float                      # last sample of speech into the mic pipe


@dataclass
class Conversation:
    start: float
    end: float = 0.0
    cpu: float = 0.0
    turns: list[Turn] = field(default_factory=list)
    barge_edge: float | None = None       # what the child did to interrupt (see docstring)
    audio: np.ndarray | None = None       # the sink, from `start`
    rec: Recording | None = None
    clock: Timeline | None = None         # dates `audio`, taken when it ended
    idle_cpu: float = 0.0
    idle_s: float = 0.0
    problem: str = ""


class Client:
    """A client process on its own PulseAudio server, driven through stdin."""

    def __init__(self, name: str, kind: str, key: str, pulse: PulseServer, tmp: Path) -> None:
        self.name, self.kind, self.key, self.pulse, self.tmp = name, kind, key, pulse, tmp
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict[str, Any]] = []
        self._presses: asyncio.Queue[float] = asyncio.Queue()
        self._threads: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        self._ready = asyncio.Event()
        self.conversations: list[Conversation] = []
        self.rss_samples: list[tuple[float, float, float]] = []   # (t, rss MB, cpu s)
        self.stderr_path = tmp / f"{name}.log"

    async def start(self, cmd: list[str], env: dict[str, str]) -> None:
        full = dict(os.environ)
        full.update(self.pulse.env())
        full.update(env)
        full["GEMINI_API_KEY"] = self.key
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=self._stderr, env=full, cwd=ROOT)
        self._reader = asyncio.create_task(self._read())
        try:
            await asyncio.wait_for(self._ready.wait(), 90)
        except TimeoutError:
            raise RuntimeError(f"{self.name} did not start; see {self.stderr_path}:\n"
                               + self.stderr_path.read_text(errors="replace")[-2000:]) from None

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            self.events.append(ev)
            if ev.get("ev") == "ready":
                self._ready.set()
            elif ev.get("ev") == "press":
                self._presses.put_nowait(ev["t"])
            elif ev.get("ev") == "threads":
                self._threads.put_nowait(ev["map"])

    async def send(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def press(self) -> float:
        """Press the button; returns the edge time the client read when it drove the pin."""
        await self.send("press")
        return await asyncio.wait_for(self._presses.get(), 10)

    async def release(self) -> None:
        if self.kind != "baseline":
            await self.send("release")

    async def end(self) -> None:
        if self.kind == "baseline":
            await self.send("end")

    async def say(self, pcm: np.ndarray, voiced: tuple[int, int]) -> tuple[float, float]:
        """Speak into the mic; returns (onset, end) times of the speech into the pipe."""
        feeder = self.pulse.feeders[DEVICE_RATE]
        before = feeder.started_at
        self.pulse.feed(pcm, DEVICE_RATE)
        while feeder.started_at == before:
            await asyncio.sleep(0.002)
        t0 = feeder.started_at
        assert t0 is not None
        return t0 + voiced[0] / DEVICE_RATE, t0 + voiced[1] / DEVICE_RATE

    async def thread_cpu(self) -> dict[str, float]:
        """CPU seconds so far per thread, by the thread's Python name (others by comm)."""
        assert self.proc is not None
        names: dict[str, str] = {}
        if self.kind != "floor":
            await self.send("threads")
            names = await asyncio.wait_for(self._threads.get(), 10)
        out: dict[str, float] = {}
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                name = names.get(task.name) or (task / "comm").read_text().strip()
                out[f"{name}"] = out.get(name, 0.0) + proc_cpu_path(task / "stat")
        return out

    def cpu(self) -> float:
        assert self.proc is not None
        return proc_cpu(self.proc.pid)

    def mem(self) -> tuple[float, float]:
        assert self.proc is not None
        return proc_mem(self.proc.pid)

    async def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            await self.send("quit")
            await asyncio.wait_for(self.proc.wait(), 20)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._stderr.close()


# --- listening to the sink -----------------------------------------------------------------

def loud_runs(x: np.ndarray, rate: int, min_s: float, gap_s: float = 0.02) -> list[tuple[int, int]]:
    """(start, end) sample indices of stretches of sound at least `min_s` long, bridging
    dips shorter than `gap_s` (the zero crossings of a tone)."""
    idx = np.flatnonzero(np.abs(x.astype(np.int32)) > LOUD)
    if not len(idx):
        return []
    breaks = np.flatnonzero(np.diff(idx) > gap_s * rate)
    starts = np.concatenate(([idx[0]], idx[breaks + 1]))
    ends = np.concatenate((idx[breaks], [idx[-1]]))
    return [(int(s), int(e)) for s, e in zip(starts, ends) if e - s >= min_s * rate]


def index_at(rec: Recording, t: float) -> int:
    """The sample index of `rec` played at monotonic time `t` (inverse of time_of)."""
    i = max(0, int((t - rec.time_of(0)) * rec.rate))
    with contextlib.suppress(IndexError):
        i = max(0, i + int((t - rec.time_of(i)) * rec.rate))
    return i


async def wait_sound(rec: Recording, after: float, timeout: float = 15.0) -> float:
    """Wait until a stretch of sound (>= 150 ms: a reply, not an earcon blip) starts after
    monotonic time `after`; return when its first sample played."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        x = rec.samples()
        i0 = index_at(rec, after) if len(x) else 0
        runs = loud_runs(x[i0:], rec.rate, 0.15)
        if runs:
            return rec.time_of(i0 + runs[0][0])
    raise TimeoutError(f"no reply heard within {timeout:.0f} s")


async def wait_quiet(rec: Recording, after: float, quiet_s: float = 0.4,
                     timeout: float = 30.0) -> float:
    """Wait until the sink has been silent for `quiet_s` after `after`; return when the
    silence began."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        x = rec.samples()
        i0 = index_at(rec, after)
        tail = np.abs(x[i0:].astype(np.int32)) > LOUD
        last = int(np.flatnonzero(tail)[-1]) if tail.any() else -1
        if len(tail) - 1 - last >= quiet_s * rec.rate:
            return rec.time_of(i0 + last + 1)
    raise TimeoutError(f"the reply did not end within {timeout:.0f} s")


# --- the scenario --------------------------------------------------------------------------

@dataclass
class Speech:
    pcm: np.ndarray
    voiced: tuple[int, int]


def make_speech(text: str) -> Speech:
    x = espeak(text, DEVICE_RATE, voice="en-us+f4", pitch=75)
    loud = np.flatnonzero(np.abs(x.astype(np.int32)) > 300)
    return Speech(x, (int(loud[0]), int(loud[-1])))


async def sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.monotonic()))


async def one_conversation(c: Client, lines: list[Speech]) -> Conversation:
    conv = Conversation(start=time.monotonic())
    cpu0 = c.cpu()
    conv.rec = c.pulse.record()
    try:
        await talk(c, conv, lines)
    except TimeoutError as e:   # a turn went unanswered: counted, and the next one goes on
        conv.problem = str(e)
    # the end: a long press (the baseline closes its session when Talkie's would)
    edge = await c.press()
    await sleep_until(edge + 2.0)
    await c.end()
    await sleep_until(edge + HOLD_S)
    await c.release()
    await asyncio.sleep(0.3)
    conv.end = time.monotonic()
    conv.cpu = c.cpu() - cpu0
    conv.audio = conv.rec.samples()
    conv.clock = conv.rec.timeline()
    idle0 = c.cpu()
    await asyncio.sleep(IDLE_S)
    conv.idle_cpu, conv.idle_s = c.cpu() - idle0, IDLE_S
    c.rss_samples.append((time.monotonic(), c.mem()[0], c.cpu()))
    return conv


async def talk(c: Client, conv: Conversation, lines: list[Speech]) -> None:
    assert conv.rec is not None
    rec = conv.rec
    a, b, cc = lines
    # A: cold wake, speech from the edge, the reply plays out
    edge = await c.press()
    onset, end = await c.say(a.pcm, a.voiced)
    await asyncio.sleep(0.1)
    await c.release()
    conv.turns.append(Turn("cold", edge, onset, end))
    heard = await wait_sound(rec, end)
    done = await wait_quiet(rec, heard)
    await sleep_until(done + PAUSE_S)
    # B: warm press and speech; the reply starts
    edge = await c.press()
    onset, end = await c.say(b.pcm, b.voiced)
    await asyncio.sleep(0.1)
    await c.release()
    conv.turns.append(Turn("warm", edge, onset, end))
    heard = await wait_sound(rec, end)
    # C: barge-in 60 ms into the reply's third beep (beeps 180 ms, gaps 70 ms)
    await sleep_until(heard + 0.56)
    edge = await c.press()
    onset, end = await c.say(cc.pcm, cc.voiced)
    await asyncio.sleep(0.1)
    await c.release()
    conv.turns.append(Turn("barge", edge, onset, end))
    conv.barge_edge = onset if c.kind == "baseline" else edge
    heard = await wait_sound(rec, end)
    done = await wait_quiet(rec, heard)
    await sleep_until(done + PAUSE_S)


async def soak(c: Client, lines: list[list[Speech]], seconds: float) -> dict[str, Any]:
    """One long conversation: turns A and B's pattern (speak, reply plays out, pause) until
    `seconds` have passed. RSS and CPU are sampled after every turn."""
    start = time.monotonic()
    samples: list[tuple[float, float, float]] = []
    edge = await c.press()
    await asyncio.sleep(0.1)
    await c.release()
    k = unanswered = 0
    while time.monotonic() - start < seconds:
        s = lines[k % len(lines)][k % 3]
        k += 1
        rec = c.pulse.record()
        _, end = await c.say(s.pcm, s.voiced)
        try:
            heard = await wait_sound(rec, end)
            done = await wait_quiet(rec, heard)
        except TimeoutError:
            done = time.monotonic()
            unanswered += 1
        await sleep_until(done + PAUSE_S)
        samples.append((time.monotonic() - start, c.mem()[0], c.cpu()))
    await c.press()
    await asyncio.sleep(2.0)
    await c.end()
    await asyncio.sleep(HOLD_S - 2.0)
    await c.release()
    del edge
    return {"turns": k, "unanswered": unanswered, "seconds": time.monotonic() - start,
            "samples": samples}


# --- analysis ------------------------------------------------------------------------------

def analyse(c: Client, conns: list[dict[str, Any]], latency_out_s: float | None) -> dict[str, Any]:
    mine = [x for x in conns if x["key"] == c.key]
    audio = sorted((m for x in mine for m in x["audio"]), key=lambda m: m[0])
    other = sorted((m for x in mine for m in x["other"]), key=lambda m: m[0])
    ends = sorted((e for x in mine for e in x["turn_ends"]), key=lambda e: e[0])
    replies = sorted((r for x in mine for r in x["replies"] if r[0] is not None),
                     key=lambda r: r[0])
    cold, warm, sig, r2s, e2s, barge = [], [], [], [], [], []
    wire = pcm = 0
    missing: list[str] = []
    rows: list[dict[str, Any]] = []
    for conv in c.conversations:
        assert conv.rec is not None and conv.audio is not None
        rate = conv.rec.rate
        wire += sum(m[2] for m in audio if conv.start <= m[0] <= conv.end)
        wire += sum(m[2] for m in other if conv.start <= m[0] <= conv.end)
        pcm += sum(m[1] for m in audio if conv.start <= m[0] <= conv.end)
        # Any sound counts (10 ms): a reply broken up by an underrun must not be dated by
        # its first unbroken 150 ms. Earcons sound at the press and at link-up, before any
        # turn has ended.
        runs = loud_runs(conv.audio, rate, 0.01)
        assert conv.clock is not None
        times = [conv.clock.time_of(s) for s, _ in runs]
        for turn in conv.turns:
            row: dict[str, Any] = {"kind": turn.kind}
            first = next((m[0] for m in audio if m[0] > turn.edge), None)
            if first is not None and first < conv.end:
                (cold if turn.kind == "cold" else warm).append(first - turn.edge)
                row["wake_to_first_frame_ms"] = round((first - turn.edge) * 1000, 1)
            sent = next((e[0] for e in ends if e[0] > turn.end - 0.05), None)
            if sent is not None and sent < conv.end:
                sig.append(sent - turn.end)
                row["speech_end_to_signal_ms"] = round((sent - turn.end) * 1000, 1)
                gate = next((e for e in c.events if e.get("ev") == "speech_end"
                             and turn.end < e["at"] < sent + 0.01), None)
                if gate is not None:   # Talkie: where the time went
                    row["gate_frame_ms"] = round((gate["t"] - turn.end) * 1000, 1)
                    row["gate_seen_ms"] = round((gate["at"] - turn.end) * 1000, 1)
            else:
                missing.append(f"no turn end after {turn.kind} speech")
            heard = next((t for t in times if t > turn.end), None)
            if heard is not None:
                e2s.append(heard - turn.end)
                row["speech_end_to_sound_ms"] = round((heard - turn.end) * 1000, 1)
            reply = next((r for r in replies if turn.end < r[0] < conv.end), None)
            if reply is not None:
                onset = next((t for t in times if t > reply[0]), None)
                if onset is None or onset - reply[0] > 5:
                    missing.append("a reply never sounded")
                else:
                    r2s.append(onset - reply[0])
                    row["reply_to_sound_ms"] = round((onset - reply[0]) * 1000, 1)
                    row["speech_end_to_reply_ms"] = round((reply[0] - turn.end) * 1000, 1)
            rows.append(row)
        if conv.barge_edge is not None:
            barge.append(silence_after(conv, conv.barge_edge))
            rows[-1]["barge_in_ms"] = round(barge[-1] * 1000, 1)
    conv_s = sum(v.end - v.start for v in c.conversations)
    cpu_s = sum(v.cpu for v in c.conversations)
    idle_s = sum(v.idle_s for v in c.conversations)
    idle_cpu = sum(v.idle_cpu for v in c.conversations)
    n = len(c.conversations)
    out: dict[str, Any] = {
        "conversations": n, "conversation_s": round(conv_s, 2),
        "cpu_s": round(cpu_s, 3), "cpu_per_s": round(cpu_s / conv_s, 5) if conv_s else None,
        "idle_cpu_per_s": round(idle_cpu / idle_s, 5) if idle_s else None,
        "upload_wire_bytes_per_conversation": round(wire / n) if n else None,
        "upload_pcm_bytes_per_conversation": round(pcm / n) if n else None,
        "upload_audio_s_per_conversation": round(pcm / n / 32000, 2) if n else None,
        "wake_to_first_frame_cold": stats_ms(cold), "wake_to_first_frame_warm": stats_ms(warm),
        "speech_end_to_signal": stats_ms(sig), "reply_to_sound": stats_ms(r2s),
        "speech_end_to_sound": stats_ms(e2s), "barge_in": stats_ms(barge),
        "replies_interrupted": sum(1 for r in replies if r[3]),
        "problems": sorted(set(missing)) + [f"{sum(1 for v in c.conversations if v.problem)} "
                                            f"conversation(s): a reply never came"] * any(
            v.problem for v in c.conversations),
        "turns": rows,
    }
    if latency_out_s is not None:
        out["output_latency_ms"] = round(latency_out_s * 1000, 1)
        out["reply_to_sound_over_buffer"] = stats_ms([x - latency_out_s for x in r2s])
    if c.proc is not None:
        rss, hwm = c.mem() if c.proc.returncode is None else (float("nan"), float("nan"))
        out["rss_mb"], out["rss_peak_mb"] = round(rss, 1), round(hwm, 1)
    return out


def silence_after(conv: Conversation, t: float) -> float:
    """Seconds from `t` to the last loud sample before 150 ms of silence at the sink."""
    assert conv.rec is not None and conv.audio is not None and conv.clock is not None
    rate = conv.rec.rate
    i0 = conv.clock.index_at(t)
    loud = np.flatnonzero(np.abs(conv.audio[i0:].astype(np.int32)) > LOUD)
    if not len(loud):
        return 0.0
    gaps = np.flatnonzero(np.diff(loud) > 0.15 * rate)
    last = loud[gaps[0]] if len(gaps) else loud[-1]
    return max(0.0, conv.clock.time_of(i0 + int(last)) - t)


# --- running it ----------------------------------------------------------------------------

def checkout(ref: str, into: Path) -> Path:
    """This repository's tree at `ref`, unpacked (no worktree, no history touched)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def talkie_config(d: Path, sim: SimProcess, name: str) -> Path:
    path = d / f"{name}.toml"
    path.write_text(
        f'[live]\nsimulator = false\nbase_url = "{sim.base_url}"\nca_file = "{sim.ca_file}"\n'
        f'[audio]\nbackend = "sounddevice"\ninput = "pulse"\noutput = "pulse"\n'
        f'input_rate = 16000\noutput_rate = 24000\n'
        f'[gpio]\npin_factory = "mock"\n'
        # no 15-minute cap: the soak is one conversation (the baseline has no cap either)
        f'[limits]\nmax_conversation_minutes = 0\n'
        f'[history]\npath = "{d / name / "history.db"}"\n')
    (d / name).mkdir(exist_ok=True)
    return path


FLOOR = """
import json, sys, sounddevice as sd
s = sd.InputStream(device="pulse", samplerate=16000, channels=1, dtype="int16", blocksize=320,
                   latency="low")
s.start()
print(json.dumps({"ev": "ready"}), flush=True)
import threading
threading.Thread(target=lambda: [s.read(320) for _ in iter(int, 1)], daemon=True).start()
for line in sys.stdin:
    if line.strip() == "press":
        import time; print(json.dumps({"ev": "press", "t": time.monotonic()}), flush=True)
    if line.strip() == "quit":
        break
"""


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load0 = os.getloadavg()
    lines = [[make_speech(t) for t in conv] for conv in UTTERANCES]
    model = Config().live.model
    sim = await SimProcess.start(args.server_vad_ms, args.pace)
    clients: list[Client] = []
    with tempfile.TemporaryDirectory(prefix="talkie-bench-") as tmp:
        d = Path(tmp)
        kinds = [("talkie", "talkie", None), ("baseline", "baseline", None)]
        if args.floor:
            kinds.append(("floor", "floor", None))
        for ref in args.also:
            kinds.append((f"talkie@{ref}", "talkie", checkout(ref, d / f"src-{ref}")))
        try:
            for name, kind, src in kinds:
                pulse = PulseServer(d / f"pulse-{name.replace('@', '-')}", rates=(DEVICE_RATE,),
                                    noise_rms=ROOM_NOISE_RMS)
                pulse.start()
                c = Client(name, kind, f"bench-{name}", pulse, d)
                clients.append(c)
                if kind == "talkie":
                    cmd = [PY, str(ROOT / "bench" / "talkie_client.py"),
                           "--config", str(talkie_config(d, sim, name.replace("@", "-")))]
                    env = {"TALKIE_SRC": str(src)} if src else {}
                elif kind == "baseline":
                    cmd = [PY, str(ROOT / "bench" / "baseline_client.py"), "--base-url",
                           sim.base_url, "--ca-file", sim.ca_file, "--model", model]
                    env = {}
                else:
                    cmd, env = [PY, "-c", FLOOR], {}
                await c.start(cmd, env)
            await asyncio.sleep(1.0)  # let the gates learn the room
            spies = [await start_profile(c, Path(args.profile)) for c in clients
                     if args.profile and c.kind != "floor"]

            async def drive(c: Client) -> None:
                for k in range(args.conversations):
                    if c.kind == "floor":
                        c.conversations.append(await idle_conversation(c))
                    else:
                        c.conversations.append(await one_conversation(c, lines[k % len(lines)]))

            threads0 = [await c.thread_cpu() for c in clients]
            await asyncio.gather(*(drive(c) for c in clients))
            threads1 = [await c.thread_cpu() for c in clients]
            for spy in spies:
                spy.send_signal(2)   # py-spy writes its file on SIGINT
                await spy.wait()
            soaks: dict[str, Any] = {}
            if args.soak_s:
                results = await asyncio.gather(*(soak(c, lines, args.soak_s) for c in clients
                                                 if c.kind != "floor"))
                soaks = {c.name: r for c, r in zip([c for c in clients if c.kind != "floor"],
                                                   results)}
            conns = await sim.report()
            latencies = output_latencies(clients)
            figures = {c.name: analyse(c, conns, latencies.get(c.name)) for c in clients}
            for c, a, b in zip(clients, threads0, threads1):
                spent = {k: round(v - a.get(k, 0.0), 2) for k, v in b.items()}
                figures[c.name]["cpu_s_by_thread"] = dict(sorted(
                    ((k, v) for k, v in spent.items() if v > 0), key=lambda kv: -kv[1]))
            for name, s in soaks.items():
                figures[name]["soak"] = soak_figures(s)
        finally:
            for c in clients:
                await c.stop()
                c.pulse.stop()
            await sim.stop()
    return {"load_before": [round(x, 2) for x in load0],
            "load_after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
            "pace": args.pace, "server_vad_ms": args.server_vad_ms, "clients": figures}


async def idle_conversation(c: Client) -> Conversation:
    """The floor client does nothing but read its mic: time it over a typical conversation."""
    conv = Conversation(start=time.monotonic())
    cpu0 = c.cpu()
    await asyncio.sleep(16.0)
    conv.end = time.monotonic()
    conv.cpu = c.cpu() - cpu0
    conv.rec = c.pulse.record()
    conv.audio = np.zeros(0, np.int16)
    conv.clock = conv.rec.timeline()
    return conv


async def start_profile(c: Client, into: Path) -> asyncio.subprocess.Process:
    """py-spy (pip install py-spy) sampling the client for the conversations: collapsed
    stacks per thread, only samples holding the GIL (Python-level CPU, not waits), in INTO/NAME.txt."""
    into.mkdir(parents=True, exist_ok=True)
    assert c.proc is not None
    return await asyncio.create_subprocess_exec(
        str(Path(PY).with_name("py-spy")), "record", "--pid", str(c.proc.pid), "--format", "raw",
        "--threads", "--gil", "--rate", "200", "--output", str(into / f"{c.name}.txt"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


def output_latencies(clients: list[Client]) -> dict[str, float]:
    """The output latency PortAudio reports for each client's speaker stream, from its log
    line (Talkie) or the stream defaults (baseline: read by opening the same stream)."""
    out: dict[str, float] = {}
    for c in clients:
        for ev in c.events:
            if ev.get("ev") == "speaker" and "latency" in ev:
                out[c.name] = float(ev["latency"])
    return out


def soak_figures(s: dict[str, Any]) -> dict[str, Any]:
    samples = s["samples"]
    if len(samples) < 4:
        return {"turns": s["turns"], "unanswered": s["unanswered"],
                "seconds": round(s["seconds"], 1)}
    # RSS after the first tenth (imports, caches, first connection) against the end.
    k = max(1, len(samples) // 10)
    rss0, rss1 = statistics.median(x[1] for x in samples[k:2 * k]), samples[-1][1]
    half = len(samples) // 2
    first = (samples[half][2] - samples[0][2]) / (samples[half][0] - samples[0][0])
    second = (samples[-1][2] - samples[half][2]) / (samples[-1][0] - samples[half][0])
    return {"turns": s["turns"], "unanswered": s["unanswered"], "seconds": round(s["seconds"], 1),
            "rss_start_mb": round(rss0, 1), "rss_end_mb": round(rss1, 1),
            "rss_growth_pct": round((rss1 - rss0) / rss0 * 100, 2),
            "cpu_per_s_first_half": round(first, 5), "cpu_per_s_second_half": round(second, 5),
            "rss_mb_series": [[round(t), round(r, 1)] for t, r, _ in samples[:: max(1, len(samples) // 30)]]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int,
                    default=int(os.environ.get("BENCH_CONVERSATIONS", "20")))
    ap.add_argument("--soak-s", type=float, default=float(os.environ.get("BENCH_SOAK_S", "0")))
    ap.add_argument("--also", action="append", default=[], metavar="REF",
                    help="also run Talkie as it was at git REF (before/after in one run)")
    ap.add_argument("--no-floor", dest="floor", action="store_false")
    ap.add_argument("--pace", type=float, default=4.0)
    ap.add_argument("--server-vad-ms", type=int, default=800)
    ap.add_argument("--profile", metavar="DIR", help="sample each client with py-spy into DIR")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    out = asyncio.run(run(args))
    print(json.dumps(out, indent=1 if args.json else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
