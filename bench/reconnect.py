"""Live API reconnects: how long a goAway switch takes, and what faults cost in uploaded audio.

    python bench/reconnect.py [--reconnects 40] [--connects 30] [--no-conversations]

1. goAway -> setupComplete of the next connection (the LiveSession's planned switch, real
   google-genai SDK, the local TLS simulator), p50/p95 over N switches, against a fresh
   connect (LiveSession.run() start -> setupComplete, new client each time).
2. Per conversation (`talkie simulate --json` against the simulator, two espeak-ng turns):
   seconds of audio uploaded against seconds of microphone audio, clean and under faults.
   Resent turns cost upload; the gate keeps silence from costing anything.

The connect limiter is raised for part 1 (the default 12 a minute would pace the switches).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device.config import Config, Secret  # noqa: E402
from device.events import GoAway, TurnComplete  # noqa: E402
from device.live.session import LinkUp, LiveSession  # noqa: E402
from device.live.simulator import Simulator  # noqa: E402
from device.speech import synthesize  # noqa: E402

RATE = 16_000
SCENARIOS = {"clean": [], "goaway after turn 1": ["goaway:1"],
             "close 1011 mid-reply 2": ["close-1011-mid-reply:2"],
             "tcp drop mid-reply 2": ["tcp-drop:2"], "no reply to turn 2": ["no-reply:2"]}


def pct(values: list[float], p: float) -> float:
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def speech(text: str) -> bytes:
    pcm = synthesize(text, RATE)
    if pcm is None:  # no espeak-ng: a hum of speech length
        t = np.arange(int(RATE * 1.2)) / RATE
        return (8000 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()
    return pcm


def cfg_for(sim: Simulator) -> Config:
    return Config().replace(live={"base_url": sim.base_url, "ca_file": str(sim.ca_file),
                                  "simulator": False, "max_connects_per_minute": 600})


async def goaway_switches(n: int) -> list[float]:
    """Seconds from receiving goAway to the next connection's setupComplete, n times."""
    said = speech("Hello Talkie")
    times: list[float] = []
    goaway_at: list[float] = []
    changed = asyncio.Event()

    def on_event(ev: Any) -> None:
        if isinstance(ev, GoAway):
            goaway_at.append(time.monotonic())
        elif isinstance(ev, LinkUp) and goaway_at and len(times) < len(goaway_at):
            times.append(ev.t - goaway_at[-1])
        elif isinstance(ev, TurnComplete):
            turns.append(ev)
        changed.set()

    turns: list[TurnComplete] = []
    async with Simulator(voice="tone", pace=50.0, first_byte_delay_s=0.01,
                         faults=["goaway@*:1+1"]) as sim:
        session = LiveSession(cfg_for(sim), Secret("bench"), on_event)
        task = asyncio.create_task(session.run())
        try:
            while len(times) < n:
                want = len(turns) + 1
                session.send_audio(said)
                session.end_of_speech()
                async with asyncio.timeout(30):
                    while len(turns) < want or len(times) < want:
                        changed.clear()
                        await changed.wait()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return times


async def fresh_connects(n: int) -> list[float]:
    times: list[float] = []
    async with Simulator(voice="tone") as sim:
        for _ in range(n):
            up = asyncio.Event()
            started = time.monotonic()
            t: list[float] = []

            def on_event(ev: Any, t: list[float] = t, up: asyncio.Event = up) -> None:
                if isinstance(ev, LinkUp):
                    t.append(ev.t)
                    up.set()

            session = LiveSession(cfg_for(sim), Secret("bench"), on_event)
            task = asyncio.create_task(session.run())
            async with asyncio.timeout(30):
                await up.wait()
            times.append(t[0] - started)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return times


def conversation_wav(path: Path) -> Path:
    silence = lambda s: np.zeros(int(RATE * s), np.int16)  # noqa: E731
    turns = [np.frombuffer(speech(t), "<i2") for t in ("Hello Talkie", "What do dragons eat?")]
    pcm = np.concatenate([silence(0.3), turns[0], silence(2.5), turns[1], silence(1.5)])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


async def conversation(faults: list[str], tmp: Path) -> dict[str, Any]:
    mic = tmp / "mic.wav"
    if not mic.exists():
        conversation_wav(mic)
    cfg = tmp / "c.toml"
    cfg.write_text("[live]\nreply_timeout_s = 3.0\n")
    async with Simulator(voice="tone", pace=8.0, faults=faults,
                         reply_texts=("Okay!", "Yes, go on!")) as sim:
        with tempfile.TemporaryDirectory(dir=tmp) as state:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "device", "simulate", "--mic", str(mic),
                "--out", str(Path(state) / "out.wav"), "--live-url", sim.base_url,
                "--ca-file", str(sim.ca_file), "--api-key", "bench", "--json",
                "--state-dir", state, "--config", str(cfg), cwd=ROOT,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
            out, _ = await proc.communicate()
    return json.loads(out.decode().strip().splitlines()[-1])


async def main(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"load_1min": os.getloadavg()[0], "cpus": os.cpu_count()}
    switches = await goaway_switches(args.reconnects)
    fresh = await fresh_connects(args.connects)
    ms = lambda xs: {"p50_ms": round(statistics.median(xs) * 1000, 1),  # noqa: E731
                     "p95_ms": round(pct(xs, 95) * 1000, 1), "n": len(xs)}
    result["goaway_to_setup_complete"] = ms(switches)
    result["fresh_connect"] = ms(fresh)
    print(f"load {result['load_1min']:.1f} on {result['cpus']} CPUs")
    print(f"goAway -> setupComplete  p50 {ms(switches)['p50_ms']:7.1f} ms  "
          f"p95 {ms(switches)['p95_ms']:7.1f} ms  ({len(switches)} switches)")
    print(f"fresh connect            p50 {ms(fresh)['p50_ms']:7.1f} ms  "
          f"p95 {ms(fresh)['p95_ms']:7.1f} ms  ({len(fresh)} connects)")
    if args.conversations:
        result["conversations"] = {}
        print(f"{'conversation':26} {'turns':>5} {'mic s':>7} {'uploaded s':>10} {'ratio':>6}")
        with tempfile.TemporaryDirectory(prefix="talkie-bench-") as tmp:
            for name, faults in SCENARIOS.items():
                s = await conversation(faults, Path(tmp))
                ratio = s["uploaded_audio_s"] / s["mic_audio_s"] if s["mic_audio_s"] else 0
                result["conversations"][name] = {
                    k: s[k] for k in ("ok", "turns", "mic_audio_s", "uploaded_audio_s")}
                print(f"{name:26} {s['turns']:>5} {s['mic_audio_s']:>7.2f} "
                      f"{s['uploaded_audio_s']:>10.2f} {ratio:>6.2f}")
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reconnects", type=int, default=40, help="goAway switches (>= 30)")
    p.add_argument("--connects", type=int, default=30, help="fresh connects to compare")
    p.add_argument("--no-conversations", dest="conversations", action="store_false",
                   help="skip the uploaded-seconds part (it runs talkie simulate)")
    p.add_argument("--json", action="store_true", help="last stdout line: the figures as JSON")
    a = p.parse_args()
    if a.reconnects < 30:
        p.error("--reconnects must be at least 30 for a p95 worth reading")
    out = asyncio.run(main(a))
    if a.json:
        print(json.dumps(out))
