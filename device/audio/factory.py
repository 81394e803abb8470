"""Choose the audio backend the config asks for."""

from __future__ import annotations

from typing import Any

from device.audio.backend import FRAME_MS, Microphone, Speaker
from device.audio.capture import StateCallback
from device.audio.vad import VadGate
from device.config import AudioConfig


#: The speaker's writer rests after this long with nothing to play (device/audio/playback.py).
REST_AFTER_S = 0.5


def open_audio(cfg: AudioConfig, *, on_state: StateCallback | None = None,
               realtime: bool = True) -> tuple[Microphone, Speaker]:
    """An unopened (microphone, speaker) pair for `cfg.backend`; enter each with `async with`.

    `on_state(state, error)` is called when a device fails ('error') and when it is back ('ok'),
    so the daemon can show `error` meanwhile. Raises AudioDeviceError if a named device does
    not exist (with the list of those that do).
    """
    block_ms, prefill_ms = cfg.output_block_ms, cfg.prefill_ms
    if cfg.backend == "files":
        from device.audio.files import WavMicrophone, WavSpeaker
        channel = cfg.input_channel if cfg.input_channels > 1 else None
        mic = WavMicrophone(cfg.input, channel=channel, realtime=realtime)
        spk = WavSpeaker(cfg.output, rate=cfg.output_rate or 24_000, volume=cfg.volume,
                         max_volume=cfg.max_volume, prefill_ms=prefill_ms)
        return mic, spk
    from device.audio.capture import SoundDeviceMicrophone
    from device.audio.playback import SoundDeviceSpeaker
    mic = SoundDeviceMicrophone(cfg.input, rate=cfg.input_rate, channels=cfg.input_channels,
                                channel=cfg.input_channel, on_state=on_state)
    # The writer rests when idle; `open_gate` turns that off when a canceller runs.
    spk = SoundDeviceSpeaker(cfg.output, rate=cfg.output_rate, volume=cfg.volume,
                             max_volume=cfg.max_volume, prefill_ms=prefill_ms,
                             block_ms=block_ms, latency_ms=cfg.output_latency_ms,
                             on_state=on_state, rest_after_s=REST_AFTER_S)
    return mic, spk


def open_gate(cfg: AudioConfig, mic: Any, speaker: Any) -> VadGate:
    """The VAD gate for `cfg`, with the echo canceller in front of it when one is configured
    and installed: the speaker then records what it plays as the canceller's reference (and
    never rests: the canceller needs every played sample on a steady clock), and with
    `barge_in = "voice"` the gate listens for the child over the toy's voice. Call before the
    devices open. What runs decides, not what was asked for: without the package, nothing
    changes."""
    from device.audio.bargein import BargeInDetector
    from device.audio.echo import FarEndBuffer, make_echo_canceller, voice_barge_in
    canceller = make_echo_canceller(cfg)
    if canceller is None:
        return VadGate(cfg)
    far = FarEndBuffer()
    speaker.feed_reference(far)
    if hasattr(speaker, "rest_after_s"):
        speaker.rest_after_s = None
    barge = BargeInDetector() if voice_barge_in(cfg, canceller) else None
    if barge is not None and hasattr(mic, "block_ms"):
        # Voice barge-in waits on the read: 20 ms reads hear "stop" 20 ms sooner than 40 ms
        # ones (bench/voice_bargein.py), for about 0.005 CPU s per s more.
        mic.block_ms = FRAME_MS
    return VadGate(cfg, echo=canceller, far=far, barge=barge)
