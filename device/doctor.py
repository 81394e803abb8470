"""`talkie doctor`: a checklist of what the box needs, with the fix for each failure.

Every check runs in its own daemon thread with its own time limit, so one that hangs (DNS,
a stuck audio driver, a Live API that never answers) is reported as timed out and the others
still run. One line per check; `--json` for scripts; exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from device.config import CREDENTIAL_NAME, Config, Secret, load
from device.errors import TalkieError

LIVE_HOST = "generativelanguage.googleapis.com"
MIN_FREE_MB = 200


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    detail: str
    fix: str = ""


class Failed(Exception):
    """A check failed: `str(self)` says what, `fix` what to do."""

    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.fix = fix


@dataclass
class Box:
    """What the checks look at: a root (/ or a sandbox) and the config path inside it."""
    root: Path
    config_path: Path
    _cfg: Config | None = None

    @property
    def credential(self) -> Path:
        return self.root / "etc/talkie/credentials" / CREDENTIAL_NAME

    def config(self) -> Config:
        """The config, or the defaults when it is broken (the config check reports that)."""
        if self._cfg is None:
            try:
                self._cfg = load(self.config_path) if self.config_path.exists() else Config()
            except TalkieError:
                self._cfg = Config()
        return self._cfg


# --- the checks ----------------------------------------------------------------------------

def check_config(box: Box) -> str:
    if not box.config_path.exists():
        raise Failed(f"{box.config_path} does not exist", "run: sudo talkie setup")
    try:
        load(box.config_path)
    except TalkieError as e:
        raise Failed(str(e), f"edit {box.config_path} as the message says, or run: "
                             f"sudo talkie setup") from None
    return f"{box.config_path} is valid"


def check_credential(box: Box) -> str:
    path = box.credential
    fix_store = "store the key: sudo talkie setup --api-key-file FILE"
    try:
        st = path.stat()
    except FileNotFoundError:
        raise Failed(f"no API key at {path}", fix_store) from None
    except PermissionError:
        raise Failed(f"{path.parent} is not readable by this user (it is root-only, as it "
                     f"should be)", "run: sudo talkie doctor") from None
    if st.st_mode & 0o077:
        raise Failed(f"{path} is mode {stat.S_IMODE(st.st_mode):04o}: others can read the key",
                     f"sudo chmod 600 {path}")
    if st.st_uid != 0:
        raise Failed(f"{path} is owned by uid {st.st_uid}, not root",
                     f"sudo chown root:root {path}")
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise Failed(f"{path} cannot be read ({e.strerror})",
                     "run talkie doctor with sudo") from None
    if not (text.startswith("AIza") and len(text) == 39):
        raise Failed(f"{path} does not hold a Gemini API key (wrong shape)", fix_store)
    return f"API key stored, mode {stat.S_IMODE(st.st_mode):04o}, owner root"


def _sounddevice():  # type: ignore[no-untyped-def]
    try:
        import sounddevice
    except OSError:
        raise Failed("the PortAudio library is missing",
                     "sudo apt-get install libportaudio2") from None
    return sounddevice


def _find_device(sd, spec: str, kind: str) -> int | None:  # type: ignore[no-untyped-def]
    """PortAudio device index for a config value ('default', an index, or part of a name)."""
    channels = "max_input_channels" if kind == "input" else "max_output_channels"
    devices = sd.query_devices()
    usable = [(i, d) for i, d in enumerate(devices) if d[channels] > 0]
    names = ", ".join(repr(d["name"]) for _, d in usable) or "none"
    if spec == "default":
        if not usable:
            raise Failed(f"no audio {kind} device at all", _audio_fix(kind))
        return None
    if spec.isdigit():
        if int(spec) in (i for i, _ in usable):
            return int(spec)
    else:
        for i, d in usable:
            if spec.lower() in d["name"].lower():
                return i
    raise Failed(f"audio {kind} {spec!r} not found (have: {names})",
                 f"set [audio] {kind} to one of those names, or plug the device in; "
                 f"see docs/hardware.md")


def _audio_fix(kind: str) -> str:
    return (f"plug in a USB {'microphone' if kind == 'input' else 'speaker'} or enable the "
            f"HAT's overlay in /boot/firmware/config.txt (docs/hardware.md); 'arecord -l' / "
            f"'aplay -l' list what the kernel sees")


def check_audio_input(box: Box) -> str:
    audio = box.config().audio
    if audio.backend == "files":
        if not Path(audio.input).exists():
            raise Failed(f"[audio] input file {audio.input} does not exist",
                         "set [audio] input to a WAV file, or backend = \"sounddevice\"")
        return f"reads WAV {audio.input}"
    sd = _sounddevice()
    index = _find_device(sd, audio.input, "input")
    info = sd.query_devices(index, "input")
    rate = int(audio.input_rate or info["default_samplerate"])
    channels = min(audio.input_channels, int(info["max_input_channels"]))
    try:
        import numpy as np
        data = sd.rec(rate, samplerate=rate, channels=channels, dtype="int16",
                      device=index, blocking=True)
    except Exception as e:  # PortAudio's errors come as several types
        raise Failed(f"cannot record from {info['name']!r} ({e})",
                     "stop other programs using the microphone (is talkie running?), or pick "
                     "another [audio] input") from None
    peak = int(np.abs(data.astype(np.int32)).max()) if data.size else 0
    rms = float(np.sqrt(np.mean(data.astype(np.float64) ** 2))) if data.size else 0.0
    level = 20 * np.log10(rms / 32768) if rms > 0 else float("-inf")
    note = " (digital silence: is the mic muted? try alsamixer)" if peak == 0 else ""
    return f"recorded 1 s from {info['name']!r}: level {level:.0f} dBFS{note}"


def check_audio_output(box: Box) -> str:
    audio = box.config().audio
    if audio.backend == "files":
        return f"writes WAV {audio.output}"
    sd = _sounddevice()
    index = _find_device(sd, audio.output, "output")
    info = sd.query_devices(index, "output")
    return f"speaker {info['name']!r}, {int(info['default_samplerate'])} Hz"


def check_gpio(box: Box) -> str:
    if _service_state() == "active":
        return "pins in use by the running talkie service (stop it to test them alone)"
    from gpiozero import LED, Button
    from gpiozero.exc import GPIOPinInUse

    from device.gpio.factory import make_pin_factory  # the daemon's own choice

    g = box.config().gpio
    factory = make_pin_factory(g)
    devices = []
    try:
        devices.append(Button(g.button_pin, pin_factory=factory))
        devices.append(LED(g.led_pin, pin_factory=factory))
    except GPIOPinInUse as e:
        raise Failed(f"a pin is taken ({e})", "another program uses it: find it with "
                     "'sudo lsof /dev/gpiochip*' or change [gpio] button_pin/led_pin") from None
    except Exception as e:
        raise Failed(f"GPIO cannot be opened ({e.__class__.__name__}: {e})",
                     "add the talkie user to group gpio; install python3-lgpio") from None
    finally:
        for d in devices:
            d.close()
        if factory is not None:
            factory.close()
    kind = "mock pins" if factory is not None and not _is_pi() else "pins"
    return f"button GPIO{g.button_pin} and LED GPIO{g.led_pin} free ({kind})"


def _is_pi() -> bool:
    try:
        return "Raspberry Pi" in Path("/proc/device-tree/model").read_text(errors="ignore")
    except OSError:
        return False


def check_network(box: Box) -> str:
    try:
        addrs = socket.getaddrinfo(LIVE_HOST, 443, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise Failed(f"cannot resolve {LIVE_HOST} ({e.strerror})",
                     "check Wi-Fi ('nmcli device status') or run: sudo talkie setup "
                     "--wifi-ssid NAME --wifi-password-stdin") from None
    return f"{LIVE_HOST} resolves to {addrs[0][4][0]}"


def check_clock(box: Box) -> str:
    synced = None
    if shutil.which("timedatectl"):
        done = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                              capture_output=True, text=True, timeout=5, check=False)
        if done.returncode == 0 and done.stdout.strip() in ("yes", "no"):
            synced = done.stdout.strip() == "yes"
    if synced is None:
        synced = Path("/run/systemd/timesync/synchronized").exists()
    if not synced:
        raise Failed("the clock is not synchronized (a Pi has no clock battery; TLS and quiet "
                     "hours need the time)", "connect to the internet and run: sudo "
                     "systemctl enable --now systemd-timesyncd; then wait a minute")
    return "synchronized by NTP"


def check_live(box: Box) -> str:
    from device.config import load_api_key
    from device.livecheck import check_live_sync

    cfg = box.config()
    key: Secret | None = None
    if box.credential.exists():
        try:
            key = Secret(box.credential.read_text(encoding="utf-8").strip())
        except OSError:
            key = None
    key = key or load_api_key()
    if key is None and not cfg.live.simulator:
        raise Failed("no API key to try", "store one: sudo talkie setup --api-key-file FILE")
    try:
        took = check_live_sync(cfg, key, min(cfg.live.connect_timeout_s, 15.0))
    except TalkieError as e:
        raise Failed(str(e), "see the message; 'talkie doctor' lines above show network and "
                             "key state") from None
    return f"setupComplete after {took:.1f} s"


def check_disk(box: Box) -> str:
    target = box.root / "var/lib"
    target = target if target.exists() else box.root
    free_mb = shutil.disk_usage(target).free // (1024 * 1024)
    if free_mb < MIN_FREE_MB:
        raise Failed(f"only {free_mb} MB free on {target}", "free space: sudo journalctl "
                     "--vacuum-size=50M; sudo apt-get clean; lower [history] retention")
    return f"{free_mb} MB free"


def _service_state() -> str:
    if not shutil.which("systemctl"):
        return "unknown"
    done = subprocess.run(["systemctl", "is-active", "talkie"], capture_output=True, text=True,
                          timeout=5, check=False)
    return done.stdout.strip() or "unknown"


def check_service(box: Box) -> str:
    state = _service_state()
    if state != "active":
        raise Failed(f"talkie service is {state}", "sudo systemctl enable --now talkie; "
                     "see why with: journalctl -u talkie -b")
    return "talkie service is active"


#: name, check, time limit in seconds
CHECKS: tuple[tuple[str, Callable[[Box], str], float], ...] = (
    ("config", check_config, 5),
    ("credential", check_credential, 5),
    ("audio-input", check_audio_input, 8),
    ("audio-output", check_audio_output, 5),
    ("gpio", check_gpio, 10),
    ("network", check_network, 8),
    ("clock", check_clock, 6),
    ("live-api", check_live, 20),
    ("disk", check_disk, 5),
    ("service", check_service, 6),
)


def run_one(name: str, fn: Callable[[Box], str], limit: float, box: Box) -> Result:
    """Run one check in a daemon thread, bounded by `limit`; never raises."""
    out: list[Result] = []

    def target() -> None:
        try:
            out.append(Result(name, True, fn(box)))
        except Failed as e:
            out.append(Result(name, False, str(e), e.fix))
        except Exception as e:  # a check that breaks is one failing line, not a crash
            out.append(Result(name, False, f"the check itself failed ({e.__class__.__name__}: "
                                           f"{e})", "report this with 'talkie doctor --json'"))

    t = threading.Thread(target=target, name=f"doctor-{name}", daemon=True)
    t.start()
    t.join(limit)
    if out:
        return out[0]
    return Result(name, False, f"no answer within {limit:g} s", "see the other lines; retry")


def run(box: Box, skip: set[str] = frozenset()) -> list[Result]:  # type: ignore[assignment]
    return [run_one(n, fn, limit, box) for n, fn, limit in CHECKS if n not in skip]


def cmd_doctor(args: argparse.Namespace) -> int:
    root = Path(args.root)
    config = Path(args.config) if args.config else root / "etc/talkie/config.toml"
    skip = {s.strip() for s in (args.skip or "").split(",") if s.strip()}
    unknown = skip - {n for n, _, _ in CHECKS}
    if unknown:
        print(f"talkie doctor: unknown check {sorted(unknown)[0]!r}; checks: "
              + ", ".join(n for n, _, _ in CHECKS), file=sys.stderr)
        return 2
    started = time.monotonic()
    results = []
    for name, fn, limit in CHECKS:
        if name in skip:
            continue
        r = run_one(name, fn, limit, Box(root, config))
        results.append(r)
        if not args.json:
            mark = "✓" if r.ok else "✗"
            line = f"{mark} {r.name:<13} {r.detail}"
            if not r.ok:
                line += f"\n  fix: {r.fix}"
            print(line, flush=True)
    failed = sum(not r.ok for r in results)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [asdict(r) for r in results]}, indent=1))
    else:
        took = time.monotonic() - started
        print(f"{len(results) - failed} passed, {failed} failed ({took:.1f} s)")
    return 1 if failed else 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `doctor`."""
    p = sub.add_parser("doctor", help="check everything the box needs and say how to fix it")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--config", help="config file (default ROOT/etc/talkie/config.toml)")
    p.add_argument("--root", default="/", metavar="DIR", help="look under DIR instead of /")
    p.add_argument("--skip", metavar="NAMES", help="comma-separated checks to leave out: "
                   + ", ".join(n for n, _, _ in CHECKS))
    p.set_defaults(func=cmd_doctor)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="talkie")
    add_commands(parser.add_subparsers(metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
