"""Finding PortAudio devices and turning PortAudio's errors into ones a parent can act on.

sounddevice is imported lazily (`sd()`), so the WAV backend works on machines without
libportaudio2.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from pathlib import Path
from types import ModuleType
from typing import Literal

from device.errors import AudioDeviceError

log = logging.getLogger(__name__)

Kind = Literal["input", "output"]
_ROLE = {"input": ("microphone", "input"), "output": ("speaker", "output")}


def sd() -> ModuleType:
    """The sounddevice module, or an AudioDeviceError saying what to install."""
    try:
        import sounddevice
    except OSError as e:   # sounddevice raises OSError when libportaudio is missing
        raise AudioDeviceError(f"PortAudio is not installed ({e}); install it with "
                               f"'apt-get install libportaudio2', or set [audio] backend = "
                               f"\"files\"") from None
    return sounddevice


def find_device(spec: str, kind: Kind) -> int | None:
    """The PortAudio index for a config value: 'default' (None), an index, or part of a name."""
    role, key = _ROLE[kind]
    spec = spec.strip()
    if spec in ("", "default"):
        return None
    devices = list(sd().query_devices())
    usable = [(i, d) for i, d in enumerate(devices) if d[f"max_{key}_channels"] > 0]
    if spec.isdigit():
        i = int(spec)
        if any(j == i for j, _ in usable):
            return i
    else:
        exact = [i for i, d in usable if d["name"] == spec]
        if exact:
            return exact[0]
        part = [i for i, d in usable if spec.lower() in d["name"].lower()]
        if part:
            return part[0]
    listing = ", ".join(f"{i} '{d['name']}'" for i, d in usable) or "none"
    raise AudioDeviceError(
        f"{role} '{spec}' not found; {key} devices here: {listing}. Set [audio] {key} to one "
        f"of these names (a part is enough) or its number, or 'default'; check the device is "
        f"plugged in ('arecord -l' / 'aplay -l').")


def device_label(index: int | None, kind: Kind) -> str:
    try:
        d = sd().query_devices(index, kind) if index is not None else sd().query_devices(kind=kind)
        return f"'{d['name']}'"
    except Exception:  # noqa: BLE001
        return f"#{index}" if index is not None else "'default'"


def holders_of_sound_devices() -> list[str]:
    """'pid (name)' of other processes holding /dev/snd/pcm* open, as far as /proc shows."""
    me = os.getpid()
    out: list[str] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            for fd in (proc / "fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("/dev/snd/pcm"):
                    name = (proc / "comm").read_text().strip()
                    out.append(f"{proc.name} ({name})")
                    break
        except OSError:
            continue
    return out


def translate(exc: BaseException, kind: Kind, label: str, rate: int | None = None) -> AudioDeviceError:
    """A PortAudio error as an AudioDeviceError naming the device and the fix."""
    role, key = _ROLE[kind]
    msg = str(exc)
    low = msg.lower()
    if "busy" in low or "unavailable" in low or "-9985" in low:
        holders = holders_of_sound_devices()
        who = (f"held by {', '.join(holders)}" if holders
               else "held by another program (none found in /proc; try 'fuser -v /dev/snd/*')")
        return AudioDeviceError(f"{role} {label} is busy, {who}; stop that program or give "
                                f"Talkie another device in [audio] {key}")
    if "sample rate" in low or "-9997" in low:
        return AudioDeviceError(f"{role} {label} does not support {rate} Hz ({msg}); set "
                                f"[audio] {key}_rate = 0 to use the device's own rate")
    if "channels" in low or "-9998" in low:
        return AudioDeviceError(f"{role} {label} cannot open that many channels ({msg}); "
                                f"check [audio] input_channels")
    return AudioDeviceError(f"{role} {label} failed: {msg}; check the device is plugged in "
                            f"and [audio] {key} names it")


def backoff_delays(base: float = 0.5, cap: float = 10.0):
    """Full-jitter reconnect delays: uniform(0, min(cap, base * 2**n))."""
    n = 0
    while True:
        yield random.uniform(0, min(cap, base * 2 ** n))
        n += 1


def join_or_abandon(thread: threading.Thread, label: str, timeout: float = 2.0) -> None:
    """Wait for a PortAudio reader or writer thread to end. One that does not (a read or
    write on a dead device that never returns) cannot be cancelled: it is left behind, and
    PortAudio is then not terminated at exit, because Pa_Terminate under a thread still
    inside Pa_ReadStream crashes the process (SIGSEGV after "stopped cleanly", which systemd
    records as a failure)."""
    thread.join(timeout)
    if not thread.is_alive():
        return
    log.warning("the %s thread is stuck in the sound system and is left behind", label)
    import atexit
    atexit.unregister(sd()._exit_handler)
