"""`talkie`: the command line. argv is parsed here and nowhere else.

    talkie run [--config FILE]                       the daemon (systemd runs this)
    talkie simulate --mic IN.wav --out OUT.wav ...   one conversation on WAV files
    talkie demo                                      a spoken demo for a newcomer
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from device import __version__
from device.config import Config, ConfigError, Secret, load, load_api_key, require_api_key
from device.errors import TalkieError

log = logging.getLogger("talkie")

EX_CONFIG = 78  # sysexits.h: the unit's RestartPreventExitStatus


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"talkie: config error: {e}", file=sys.stderr)
        return EX_CONFIG
    except TalkieError as e:
        print(f"talkie: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="talkie", description="Talkie, the voice box.")
    parser.add_argument("--version", action="version", version=f"talkie {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(metavar="COMMAND")

    run = sub.add_parser("run", help="run the box (what systemd starts)")
    run.add_argument("--config", help="config file (default /etc/talkie/config.toml if it "
                                      "exists, else the built-in demo setup)")
    run.set_defaults(func=cmd_run)

    sim = sub.add_parser("simulate", help="one conversation on WAV files, through the same "
                                          "daemon code")
    sim.add_argument("--mic", required=True, help="WAV file the child says (any rate)")
    sim.add_argument("--out", required=True, help="WAV file to write what the toy plays")
    sim.add_argument("--live-url", help="a Live-protocol server (default: the built-in "
                                        "simulator)")
    sim.add_argument("--ca-file", help="PEM certificate to trust for --live-url")
    sim.add_argument("--api-key", help="API key for --live-url (default: the configured one)")
    sim.add_argument("--config", help="config file (default: built-in defaults)")
    sim.add_argument("--json", action="store_true", help="last stdout line: a JSON summary")
    sim.set_defaults(func=cmd_simulate)

    demo = sub.add_parser("demo", help="a short spoken demo: no Pi and no API key needed")
    demo.set_defaults(func=cmd_demo)
    return parser


# --- run -----------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    path = args.config or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.exists() else None)
    cfg = load(path)
    api_key = None if cfg.live.simulator else require_api_key()
    return asyncio.run(_run(cfg, api_key))


async def _run(cfg: Config, api_key: Secret | None) -> int:
    async with _box(cfg, api_key) as daemon:
        await daemon.run()
    return 0


# --- simulate ------------------------------------------------------------------------------

def cmd_simulate(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    cfg = cfg.replace(audio={"backend": "files", "input": args.mic, "output": args.out},
                      gpio={"pin_factory": "mock"})
    if args.live_url:
        cfg = cfg.replace(live={"base_url": args.live_url, "ca_file": args.ca_file or "",
                                "simulator": False})
        api_key = Secret(args.api_key) if args.api_key else load_api_key()
    else:
        cfg = cfg.replace(live={"simulator": True})
        api_key = None
    summary = asyncio.run(_simulate(cfg, api_key, press_at_start=True, echo=not args.json))
    if args.json:
        print(json.dumps(summary))
    return 0 if summary["ok"] else 1


async def _simulate(cfg: Config, api_key: Secret | None, *, press_at_start: bool,
                    echo: bool) -> dict[str, Any]:
    import wave

    with contextlib.closing(wave.open(cfg.audio.input, "rb")) as w:
        mic_seconds = w.getnframes() / w.getframerate()
    on_transcript = _print_turn if echo else None
    async with _box(cfg, api_key, stop_when_mic_ends=True, on_transcript=on_transcript) as daemon:
        if press_at_start:
            _press(daemon)
        try:
            # The WAV is played in real time; the last reply needs a little more.
            async with asyncio.timeout(mic_seconds + 60):
                summary = await daemon.run()
        except TimeoutError:
            daemon.summary.errors.append("simulation timed out waiting for a reply")
            summary = daemon.summary
    return summary.as_json()


def _print_turn(child: str, toy: str) -> None:
    print(f"  child: {child or '(speech)'}")
    print(f"  toy:   {toy or '(audio)'}")


def _press(daemon: Any) -> None:
    """Press and release the mock button, at pin level."""
    pin = daemon.button_pin
    pin.drive_low()
    pin.drive_high()


# --- demo ----------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="talkie-demo-") as tmp:
        mic = Path(tmp) / "child.wav"
        out = Path(tmp) / "toy.wav"
        said = "Hello Talkie! Can you tell me a story about a dragon?"
        how = _make_utterance(said, mic)
        print(f"Talkie demo: the built-in Live simulator, a simulated button press, and a "
              f"child's voice from {how}.")
        print(f"  (child says: \"{said}\")")
        cfg = Config().replace(audio={"backend": "files", "input": str(mic), "output": str(out)},
                               gpio={"pin_factory": "mock"}, live={"simulator": True})
        summary = asyncio.run(_simulate(cfg, None, press_at_start=True, echo=True))
        lat = summary["latency_ms"]["speech_end_to_sound"]
        print(f"Done: {summary['turns']} turn(s), {summary['reply_audio_s']:.1f} s of reply, "
              f"{summary['uploaded_audio_s']:.1f} of {summary['mic_audio_s']:.1f} s of mic "
              f"audio sent" + (f", reply sounding {lat[0]:.0f} ms after the child stopped"
                               if lat else "") + ".")
        for err in summary["errors"]:
            print(f"  problem: {err}")
        return 0 if summary["ok"] else 1


def _make_utterance(text: str, path: Path) -> str:
    """Write the child's words to a WAV with espeak-ng, or a hum of speech length without it."""
    espeak = shutil.which("espeak-ng")
    if espeak:
        subprocess.run([espeak, "-v", "en-us+f4", "-p", "70", "-w", str(path), text],
                       check=True, capture_output=True, timeout=30)
        _pad_with_silence(path, before_s=0.5, after_s=1.0)
        return "espeak-ng"
    import numpy as np
    import wave
    rate = 16_000
    t = np.arange(int(rate * 2.0)) / rate
    voice = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    pcm = np.concatenate([np.zeros(rate // 2), voice, np.zeros(rate)])
    with contextlib.closing(wave.open(str(path), "wb")) as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((pcm * 32767).astype("<i2").tobytes())
    return "a tone (install espeak-ng for a real voice)"


def _pad_with_silence(path: Path, before_s: float, after_s: float) -> None:
    import wave
    with contextlib.closing(wave.open(str(path), "rb")) as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    pad = lambda s: b"\0" * (int(params.framerate * s) * params.sampwidth * params.nchannels)  # noqa: E731
    with contextlib.closing(wave.open(str(path), "wb")) as w:
        w.setparams(params)
        w.writeframes(pad(before_s) + frames + pad(after_s))


# --- assembling the box --------------------------------------------------------------------

DEFAULT_CONFIG = Path("/etc/talkie/config.toml")


@contextlib.asynccontextmanager
async def _box(cfg: Config, api_key: Secret | None, **daemon_args: Any) -> AsyncIterator[Any]:
    """Open everything the daemon needs (simulator, audio, pins) and close it all after."""
    from device.audio import open_audio
    from device.audio.vad import VadGate
    from device.buttons import ButtonEvents, pin_factory
    from device.daemon import Daemon

    async with contextlib.AsyncExitStack() as stack:
        if cfg.live.simulator:
            from device.live.simulator import Simulator
            sim = await stack.enter_async_context(Simulator())
            cfg = cfg.replace(live={"base_url": sim.base_url, "ca_file": str(sim.ca_file)})
        # google-genai takes most of a second to import: do it now, not on the first press.
        await asyncio.to_thread(__import__, "google.genai")
        mic, speaker = open_audio(cfg.audio)
        mic = await stack.enter_async_context(mic)
        speaker = await stack.enter_async_context(speaker)
        factory = pin_factory(cfg.gpio)
        buttons = ButtonEvents(cfg.gpio, factory)
        stack.callback(buttons.close)
        daemon = Daemon(cfg, api_key, mic=mic, speaker=speaker, gate=VadGate(cfg.audio),
                        buttons=buttons, **daemon_args)
        daemon.button_pin = buttons.button.pin
        yield daemon
