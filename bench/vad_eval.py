"""How well the VAD gate keeps speech and drops the rest, on labelled espeak-ng speech in noise.

Corpus: sentences a child might say, spoken by espeak-ng with several voices, child-like pitch
(-p 80) and different speeds, separated by 3-7 s pauses (the child waits for the toy), mixed
with white, pink, babble (other espeak speech) and 50 Hz hum noise at SNR 20/10/5/0 dB.
Frames are labelled from the clean speech. For each condition it prints, for the gate, raw
webrtcvad (no pre-roll/hangover) and the stream-everything baseline:

  recall   share of speech frames streamed
  first100 share of utterances whose first 100 ms were all streamed
  nonsp    share (and seconds) of non-speech audio streamed

Target: first100 >= 99 %, recall >= 98 %, nonsp <= 30 % at SNR >= 5 dB.
The last lines sum the conditions at SNR >= 5 dB (and clean) up per method: the worst recall
and first100, and the worst and mean share of non-speech streamed.
Run: python bench/vad_eval.py [--quick] [--seed N] [--aggressiveness N] [--set KEY=VALUE]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
import webrtcvad

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device.audio.backend import FRAME_SAMPLES, MIC_RATE, MicFrame
from device.audio.vad import GateSettings, VadGate
from device.config import AudioConfig
from device.events import SpeechAudio

SENTENCES = [
    "Hello teddy!",
    "Can you tell me a story about a dragon?",
    "Why is the sky blue?",
    "I had pasta for lunch, and then, we went to the park.",
    "What do dinosaurs eat?",
    "My sister has a red bike.",
    "Let's play the animal game again.",
    "How many legs does a spider have?",
    "Tomorrow is my birthday, I will be seven.",
    "Sing me a song, please.",
    "Is the moon made of cheese?",
    "Goodnight!",
]
VOICES = [("en-us", 80, 150), ("en-gb+f3", 80, 170), ("en-us+f4", 70, 130),
          ("en-us+m3", 50, 175), ("en-gb", 80, 140), ("en-us+f2", 90, 160)]
BABBLE = ["The weather report says rain for the whole weekend in the north.",
          "Please remember to buy milk, bread and eggs on the way home.",
          "The meeting was moved to Thursday afternoon at three.",
          "He parked the car behind the old library near the station."]


def say(text: str, voice: str, pitch: int, speed: int) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed),
                          "--stdout", text], capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    return soxr.resample(x, rate, MIC_RATE).astype(np.float32)


@dataclass
class Corpus:
    clean: np.ndarray          # float32 speech track
    speech: np.ndarray         # bool per frame
    onsets: list[int]          # first speech frame of each utterance


def build_corpus(rng: np.random.Generator, n_utts: int) -> Corpus:
    parts = [np.zeros(int(2.0 * MIC_RATE), np.float32)]
    onsets: list[int] = []
    for i in range(n_utts):
        voice, pitch, speed = VOICES[i % len(VOICES)]
        u = say(SENTENCES[i % len(SENTENCES)], voice, pitch, speed)
        u *= 10 ** (rng.uniform(-24, -18) / 20) / (np.sqrt(np.mean(u[np.abs(u) > 1e-3] ** 2)))
        start = sum(len(p) for p in parts)
        parts.append(u)
        parts.append(np.zeros(int(rng.uniform(3.0, 7.0) * MIC_RATE), np.float32))
        onsets.append(start)
    clean = np.concatenate(parts)
    n = len(clean) // FRAME_SAMPLES
    clean = clean[:n * FRAME_SAMPLES]
    fr = clean.reshape(n, FRAME_SAMPLES)
    db = 10 * np.log10(np.mean(fr ** 2, axis=1) + 1e-12)
    speech = db > -50
    # An utterance starts at its first labelled frame.
    first = []
    for s in onsets:
        k = s // FRAME_SAMPLES
        while not speech[k]:
            k += 1
        first.append(k)
    return Corpus(clean, speech, first)


def noise(kind: str, n: int, rng: np.random.Generator, babble: np.ndarray) -> np.ndarray:
    if kind == "white":
        return rng.normal(0, 1, n).astype(np.float32)
    if kind == "pink":
        spec = np.fft.rfft(rng.normal(0, 1, n))
        f = np.arange(len(spec))
        spec[1:] /= np.sqrt(f[1:])
        return np.fft.irfft(spec, n).astype(np.float32)
    if kind == "hum":
        t = np.arange(n) / MIC_RATE
        return (np.sin(2 * np.pi * 50 * t) + 0.5 * np.sin(2 * np.pi * 100 * t)
                + 0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
    reps = -(-n // len(babble)) + 1
    loop = np.tile(babble, reps)
    off = int(rng.integers(0, len(babble)))
    return loop[off:off + n]


def mix(c: Corpus, nz: np.ndarray, snr_db: float | None) -> np.ndarray:
    if snr_db is None:
        x = c.clean
    else:
        fr = c.clean.reshape(-1, FRAME_SAMPLES)
        p_speech = np.mean(fr[c.speech] ** 2)
        p_noise = np.mean(nz ** 2)
        x = c.clean + nz * np.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10)))
    return (np.clip(x, -1, 0.99997) * 32768).astype(np.int16)


def run_gate(x: np.ndarray, settings: GateSettings) -> tuple[np.ndarray, float]:
    gate = VadGate(settings)
    n = len(x) // FRAME_SAMPLES
    sent = np.zeros(n, bool)
    t0 = time.process_time()
    for k in range(n):
        f = MicFrame(x[k * FRAME_SAMPLES:(k + 1) * FRAME_SAMPLES].tobytes(), (k + 1) * 0.02)
        for ev in gate.process(f):
            if isinstance(ev, SpeechAudio):
                sent[round(ev.t / 0.02) - 1] = True
    return sent, time.process_time() - t0


def run_raw(x: np.ndarray, aggressiveness: int) -> np.ndarray:
    vad = webrtcvad.Vad(aggressiveness)
    n = len(x) // FRAME_SAMPLES
    return np.array([vad.is_speech(x[k * FRAME_SAMPLES:(k + 1) * FRAME_SAMPLES].tobytes(),
                                   MIC_RATE) for k in range(n)])


def score(sent: np.ndarray, c: Corpus) -> tuple[float, float, float, float]:
    recall = sent[c.speech].mean()
    first = np.mean([sent[k:k + 5].all() for k in c.onsets])
    nonsp = ~c.speech
    return recall, first, sent[nonsp].mean(), sent[nonsp].sum() * 0.02


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aggressiveness", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="fewer utterances")
    ap.add_argument("--seed", type=int, default=7, help="another corpus and noise draw")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a GateSettings field, e.g. --set peak_margin_db=3")
    args = ap.parse_args()
    cfg = AudioConfig()
    base = GateSettings(aggressiveness=cfg.vad_aggressiveness, preroll_ms=cfg.preroll_ms,
                        hangover_ms=cfg.hangover_ms, tail_ms=cfg.tail_ms,
                        min_speech_ms=cfg.min_speech_ms, noise_guard_db=cfg.vad_noise_guard_db)
    if args.aggressiveness is not None:
        base = GateSettings(**{**base.__dict__, "aggressiveness": args.aggressiveness})
    for kv in args.set:
        k, v = kv.split("=", 1)
        base = GateSettings(**{**base.__dict__, k: type(getattr(base, k))(float(v))})
    rng = np.random.default_rng(args.seed)
    c = build_corpus(rng, 12 if args.quick else 24)
    babble = sum(say(t, v, p, s)[:MIC_RATE * 3] if len(say(t, v, p, s)) >= MIC_RATE * 3 else
                 np.pad(say(t, v, p, s), (0, MIC_RATE * 3 - len(say(t, v, p, s))))
                 for t, (v, p, s) in zip(BABBLE, VOICES[1:5]))
    total_s = len(c.clean) / MIC_RATE
    print(f"corpus: {len(c.onsets)} utterances, {total_s:.0f} s, speech {c.speech.mean():.0%} "
          f"of frames; gate: aggressiveness {base.aggressiveness}, pre-roll {base.preroll_ms} "
          f"ms, hangover {base.hangover_ms} ms (tail {base.tail_ms} ms), min speech "
          f"{base.min_speech_ms} ms, guard {base.noise_guard_db} dB")
    print(f"{'condition':<12} {'method':<10} {'recall':>7} {'first100':>9} {'nonsp':>7} {'nonsp s':>8}")
    cpu = 0.0
    frames = 0
    ok = True
    bar: dict[str, list[tuple[float, float, float]]] = {}
    conds = [("clean", None)] + [(k, s) for k in ("white", "pink", "babble", "hum")
                                 for s in (20, 10, 5, 0)]
    for kind, snr in conds:
        nz = noise(kind if kind != "clean" else "white", len(c.clean), rng, babble)
        x = mix(c, nz, snr)
        sent, t = run_gate(x, base)
        cpu += t
        frames += len(sent)
        name = kind if snr is None else f"{kind} {snr}dB"
        rows = [("gate", sent), ("raw vad", run_raw(x, base.aggressiveness)),
                ("all", np.ones(len(sent), bool))]
        for method, s in rows:
            r, f, n, ns = score(s, c)
            if snr is None or snr >= 5:
                bar.setdefault(method, []).append((r, f, n))
            flag = ""
            if method == "gate" and (snr is None or snr >= 5):
                good = f >= 0.99 and r >= 0.98 and n <= 0.30
                ok &= good
                flag = "" if good else "  <- misses target"
            print(f"{name:<12} {method:<10} {r:7.1%} {f:9.1%} {n:7.1%} {ns:8.1f}{flag}")
    print("at SNR >= 5 dB and clean, per method: worst recall, worst first100, non-speech "
          "streamed worst / mean")
    for method, rows in bar.items():
        rs, fs, ns_ = zip(*rows)
        print(f"  {method:<8} {min(rs):7.1%} {min(fs):9.1%} {max(ns_):7.1%} / {np.mean(ns_):.1%}")
    print(f"gate CPU: {cpu / (frames * 0.02) * 1000:.2f} ms per audio second "
          f"({frames * 0.02 / cpu:.0f}x real time)")
    print("target met at SNR >= 5 dB" if ok else "target NOT met at SNR >= 5 dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
