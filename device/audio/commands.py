"""`talkie audio-devices` and `talkie audio-check`: what a parent runs over SSH when the toy
does not hear or cannot be heard. The lead wires `add_commands` into the CLI."""

from __future__ import annotations

import argparse
import asyncio
import math

import numpy as np

from device.config import AudioConfig, load
from device.errors import TalkieError


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the audio subcommands."""
    p = sub.add_parser("audio-devices", help="list the microphones and speakers PortAudio sees")
    p.set_defaults(func=_devices)
    p = sub.add_parser("audio-check", help="listen for a few seconds, say how loud and whether "
                                           "speech was heard, and play the wake sound")
    p.add_argument("--config", help="config file (default: built-in defaults)")
    p.add_argument("--seconds", type=float, default=3.0, help="how long to listen")
    p.set_defaults(func=_check)


def _devices(args: argparse.Namespace) -> int:
    from device.audio.devices import sd
    try:
        sdm = sd()
        devices = sdm.query_devices()
    except TalkieError as e:
        print(f"error: {e}")
        return 69
    for i, d in enumerate(devices):
        roles = ", ".join(r for r, k in (("mic", "max_input_channels"),
                                        ("speaker", "max_output_channels")) if d[k] > 0)
        print(f"{i:3d}  {d['name']:<40} {roles:<13} {int(d['default_samplerate'])} Hz")
    return 0


def _check(args: argparse.Namespace) -> int:
    cfg = load(args.config).audio
    try:
        return asyncio.run(_listen(cfg, args.seconds))
    except TalkieError as e:
        print(f"error: {e}")
        return 69


async def _listen(cfg: AudioConfig, seconds: float) -> int:
    from device.audio import open_audio
    from device.audio.vad import VadGate, frame_db
    from device.events import SpeechStart
    mic, spk = open_audio(cfg)
    gate = VadGate(cfg)
    levels: list[float] = []
    speech = 0
    async with mic, spk:
        spk.play_earcon("wake")

        async def run() -> None:
            nonlocal speech
            async for frame in mic.frames():
                levels.append(frame_db(frame.pcm))
                speech += sum(isinstance(e, SpeechStart) for e in gate.process(frame))
        try:
            await asyncio.wait_for(run(), seconds)
        except TimeoutError:
            pass
        await spk.drain()
    if not levels:
        print("no audio arrived from the microphone")
        return 1
    lv = np.array(levels)
    print(f"microphone: {len(levels) * 0.02:.1f} s, level median {np.median(lv):.0f} dBFS, "
          f"peak {lv.max():.0f} dBFS; speech heard: {'yes' if speech else 'no'}")
    if lv.max() < -60 or not math.isfinite(lv.max()):
        print("the microphone is silent: check [audio] input and input_channel")
        return 1
    return 0
