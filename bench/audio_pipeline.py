"""What the audio pipeline costs: CPU per audio second, peak memory, flush latency.

- capture: 48 kHz int16 blocks -> streaming soxr to 16 kHz -> 20 ms frames -> VAD gate,
  against a baseline that only cuts frames (the work any pipeline must do);
- playback: 24 kHz reply chunks -> soxr to 48 kHz -> PlaybackBuffer pulled in 10 ms blocks;
- peak Python memory (tracemalloc) while doing both, and the process's max RSS;
- flush latency: a tone played through real PortAudio into a private PulseAudio null sink,
  flushed mid-way; the time from flush() to the last loud sample on the sink's monitor
  (5 runs), plus the same for the WAV speaker (its clock task);
- the whole pipeline live: a child process runs the microphone (48 kHz, PortAudio) into the
  gate and plays replies (24 kHz chunks) with earcons on the speaker, through the private
  PulseAudio server, while this process speaks into the mic; its CPU seconds (all threads,
  PortAudio's and libpulse's included) per audio second and its peak RSS, against the same
  child with both streams open doing nothing (the baseline).

Figures on a shared machine are noisy: the load average is printed with them.
Run: python bench/audio_pipeline.py [--no-pulse] [--live-seconds N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device.audio.backend import MIC_RATE, REPLY_RATE, MicFrame
from device.audio.buffer import BufferedSpeaker
from device.audio.resample import FrameCutter, Resampler
from device.audio.vad import VadGate
from device.config import AudioConfig

SECONDS = 60


def signal(rate: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(rate * seconds)) / rate
    # Syllable-like bursts of a harmonic tone in low noise: makes the gate open and close.
    env = (np.sin(2 * np.pi * 0.5 * t) > 0.3) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
    x = env * (np.sin(2 * np.pi * 180 * t) + 0.5 * np.sin(2 * np.pi * 360 * t)) * 6000
    return (x + rng.normal(0, 100, len(t))).astype(np.int16)


def capture_cpu(gate: bool, x: np.ndarray) -> float:
    block = 960
    rs = Resampler(48_000, MIC_RATE) if gate else None
    cut = FrameCutter()
    g = VadGate(AudioConfig())
    t0 = time.process_time()
    n = 0
    for i in range(0, len(x), block):
        b = x[i:i + block]
        if rs is None:
            frames = cut.push(b[::3].copy())   # baseline: decimate by slicing, cut frames
        else:
            frames = cut.push(rs.process(b))
        for f in frames:
            n += 1
            if gate:
                g.process(MicFrame(f.tobytes(), n * 0.02))
    return (time.process_time() - t0) / SECONDS


def playback_cpu(x: np.ndarray) -> float:
    spk = BufferedSpeaker(48_000, volume=0.8, max_volume=1.0, prefill_s=0.0)
    chunk = REPLY_RATE * 40 // 1000      # the Live API sends ~40 ms chunks
    t0 = time.process_time()
    for i in range(0, len(x), chunk):
        spk.write(x[i:i + chunk].tobytes(), t_received=time.monotonic())
        for _ in range(4):
            spk._pull(480, time.monotonic())
    return (time.process_time() - t0) / SECONDS


async def wav_flush_latency() -> float:
    from device.audio.files import WavSpeaker
    with tempfile.TemporaryDirectory() as d:
        spk = WavSpeaker(Path(d) / "out.wav", volume=1.0)
        async with spk:
            spk.write(signal(REPLY_RATE, 2.0).tobytes())
            await asyncio.sleep(0.5)
            t = time.monotonic()
            spk.flush()
            while spk.busy:
                await asyncio.sleep(0.001)
            return time.monotonic() - t


async def pulse_flush_latencies(runs: int = 5) -> tuple[list[float], float, list[float]]:
    from device.audio.playback import SoundDeviceSpeaker
    from device.audio.pulse_harness import PulseServer
    out: list[float] = []
    errors: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        server = PulseServer(Path(d))
        server.start()
        try:
            t = np.arange(REPLY_RATE * 3) / REPLY_RATE
            tone = (0.5 * 32767 * np.sin(2 * np.pi * 300 * t)).astype(np.int16).tobytes()
            spk = SoundDeviceSpeaker("pulse", rate=48_000, volume=1.0)
            played: list[float] = []
            spk.on_played = lambda t_recv, t_played: played.append(t_played)
            async with spk:
                for _ in range(runs):
                    rec = server.record()
                    spk.write(tone, t_received=time.monotonic())
                    await asyncio.sleep(0.5)
                    t_flush = time.monotonic()
                    spk.flush()
                    await asyncio.sleep(0.3)
                    x = rec.samples()
                    loud = np.nonzero(np.abs(x) > 300)[0]
                    out.append(rec.time_of(int(loud[-1])) - t_flush)
                    errors.append(played[-1] - rec.time_of(int(loud[0])))
                latency = spk.latency
        finally:
            server.stop()
    return out, latency, errors


async def live_child(mode: str, seconds: float) -> None:
    """In the child process: run the streams for `seconds`, print CPU and memory as JSON."""
    from device.audio import open_audio
    cfg = AudioConfig(input="pulse", output="pulse", input_rate=48_000, output_rate=48_000)
    mic, spk = open_audio(cfg)
    gate = VadGate(cfg)
    reply = signal(REPLY_RATE, 4.0).tobytes()
    chunk = REPLY_RATE * 40 // 1000 * 2

    async def talk() -> None:
        # Replies of 4 s at the Live API's pace (faster than real time), then 4 s of quiet.
        while True:
            spk.play_earcon("thinking")
            for i in range(0, len(reply), chunk):
                spk.write(reply[i:i + chunk], t_received=time.monotonic() if i == 0 else None)
                await asyncio.sleep(0.01)
            await asyncio.sleep(8.0 - len(reply) / 2 / REPLY_RATE / 4)

    async with mic, spk:
        talker = asyncio.create_task(talk()) if mode == "talk" else None
        cpu0, t0, frames = time.process_time(), time.monotonic(), 0
        async for frame in mic.frames():
            frames += 1
            if mode == "talk":
                gate.process(frame)
            if time.monotonic() - t0 >= seconds:
                break
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        if talker is not None:
            talker.cancel()
    print(json.dumps({"cpu_s": cpu, "audio_s": wall, "frames": frames, "starts": gate.starts,
                      "underruns": spk.stats.underruns + spk.device_underruns,
                      "maxrss_mb": status_mb("VmHWM")}))


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status in MB: VmRSS now, VmHWM its
    peak (ru_maxrss would carry a parent's peak from before exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def live_pipeline(seconds: float) -> dict[str, dict[str, float]]:
    """Both children (baseline, then talk) against one private PulseAudio server."""
    from device.audio.pulse_harness import PulseServer
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as d:
        server = PulseServer(Path(d), rates=(48_000,))
        server.start()
        try:
            from device.audio.pulse_harness import espeak
            said = espeak("Can you tell me a story about a dragon and a big red bike?", 48_000)
            talk = np.concatenate((said, np.zeros(3 * 48_000, np.int16)))
            for mode in ("idle", "talk"):
                server.feed(np.tile(talk, int(seconds * 48_000 // len(talk)) + 2))
                r = subprocess.run([sys.executable, __file__, "--live-child", mode,
                                    "--live-seconds", str(seconds)], env=server.env(),
                                   capture_output=True, text=True, timeout=seconds + 60,
                                   check=False)
                server.reset()
                if r.returncode != 0:
                    raise RuntimeError(f"live {mode} run failed:\n{r.stderr[-2000:]}")
                out[mode] = json.loads(r.stdout.strip().splitlines()[-1])
        finally:
            server.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-pulse", action="store_true",
                    help="skip the runs through PulseAudio (flush latency, live pipeline)")
    ap.add_argument("--live-seconds", type=float, default=30.0,
                    help="length of each live pipeline run (default 30)")
    ap.add_argument("--live-child", choices=("idle", "talk"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.live_child:
        asyncio.run(live_child(args.live_child, args.live_seconds))
        return 0
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores "
          f"(figures on a busy machine are noisy)")
    mic_in, reply_in = signal(48_000, SECONDS), signal(REPLY_RATE, SECONDS)
    base = capture_cpu(False, mic_in)
    cap = capture_cpu(True, mic_in)
    play = playback_cpu(reply_in)
    # Memory apart from CPU (tracemalloc slows Python down); the input signals are excluded.
    tracemalloc.start()
    capture_cpu(True, mic_in)
    playback_cpu(reply_in)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"capture 48k->16k + VAD gate: {cap * 1000:.2f} ms CPU per audio second "
          f"({cap * 100:.2f} % of a core); baseline frame cutting {base * 1000:.2f} ms "
          f"(ratio {cap / base:.1f}x)")
    print(f"playback 24k->48k + buffer: {play * 1000:.2f} ms CPU per audio second "
          f"({play * 100:.2f} % of a core)")
    print(f"pipeline DSP, capture + playback: {(cap + play):.5f} CPU seconds per audio second")
    print(f"peak Python memory the pipeline allocates: {peak / 1e6:.2f} MB ({SECONDS} s of audio "
          f"each way, inputs excluded); "
          f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(f"WAV speaker flush -> silent: {asyncio.run(wav_flush_latency()) * 1000:.1f} ms")
    if not args.no_pulse:
        lat, dev, err = asyncio.run(pulse_flush_latencies())
        print(f"PortAudio->PulseAudio flush -> last sound on the sink: median "
              f"{statistics.median(lat) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms over "
              f"{len(lat)} runs (stream latency {dev * 1000:.0f} ms, block 10 ms, +-10 ms "
              f"recording error)")
        print(f"on_played vs when the sink played the first sample: "
              f"{', '.join(f'{e * 1000:+.0f}' for e in err)} ms")
        live = live_pipeline(args.live_seconds)
        idle, talk = live["idle"], live["talk"]
        per = {m: v["cpu_s"] / v["audio_s"] for m, v in live.items()}
        print(f"live pipeline through PortAudio ({talk['audio_s']:.0f} s, mic -> gate, replies "
              f"and earcons -> speaker, {talk['starts']:.0f} speech starts, "
              f"{talk['underruns']:.0f} underruns): {per['talk']:.4f} CPU seconds per audio "
              f"second ({per['talk'] * 100:.1f} % of a core); streams open and idle "
              f"{per['idle']:.4f} (ratio {per['talk'] / per['idle']:.1f}x)")
        print(f"live pipeline peak memory: max RSS {talk['maxrss_mb']:.0f} MB, idle streams "
              f"{idle['maxrss_mb']:.0f} MB (+{talk['maxrss_mb'] - idle['maxrss_mb']:.0f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
