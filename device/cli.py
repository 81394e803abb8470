"""`talkie`: the command line. argv is parsed here and nowhere else.

    talkie run [--config FILE] [--events FILE]       the daemon (systemd runs this)
    talkie simulate --mic IN.wav --out OUT.wav ...   one conversation on WAV files (or on
                                                     PortAudio through PulseAudio: --audio pulse)
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
import time
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
    from device.logs import setup_logging
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
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
    run.add_argument("--events", metavar="FILE",
                     help="play a timed script of pin events (as in simulate) on mock pins, "
                          "to try the box without a button (needs [gpio] pin_factory = \"mock\")")
    run.set_defaults(func=cmd_run)

    sim = sub.add_parser("simulate", help="one conversation on WAV files, through the same "
                                          "daemon code")
    sim.add_argument("--mic", required=True, help="WAV file the child says (any rate)")
    sim.add_argument("--out", required=True, help="WAV file to write what the toy plays")
    sim.add_argument("--audio", choices=("files", "pulse"), default="files",
                     help="'files' (default): the WAV backend; 'pulse': real PortAudio through a "
                          "private PulseAudio server, --mic spoken into its microphone in real "
                          "time, its speaker recorded into --out (48 kHz)")
    sim.add_argument("--live-url", help="a Live-protocol server (default: the built-in "
                                        "simulator)")
    sim.add_argument("--ca-file", help="PEM certificate to trust for --live-url")
    sim.add_argument("--api-key", help="API key for --live-url (default: the configured one)")
    sim.add_argument("--config", help="config file (default: built-in defaults)")
    sim.add_argument("--json", action="store_true", help="last stdout line: a JSON summary")
    sim.add_argument("--fault", action="append", default=[], metavar="NAME",
                     help="make the built-in simulator misbehave: NAME[@CONN|*][:TURN][+SECONDS],"
                          " e.g. goaway, close-1011-mid-reply, tcp-drop@*:2, slow-setup+3; "
                          "repeatable (see docs/faults.md)")
    sim.add_argument("--events", metavar="FILE",
                     help="a timed script of pin events (press, release, shake) instead of one "
                          "press at start (see docs/wiring.md)")
    sim.add_argument("--state-dir", metavar="DIR",
                     help="keep history and the resumption handle here (default: a fresh "
                          "temporary directory)")
    sim.set_defaults(func=cmd_simulate)

    demo = sub.add_parser("demo", help="a short spoken demo: no Pi and no API key needed")
    demo.set_defaults(func=cmd_demo)

    from device import doctor, setup, status_cli
    from device.audio import commands as audio_commands
    from device.history import cli as history_cli
    for module in (setup, doctor, status_cli, history_cli, audio_commands):
        module.add_commands(sub)
    return parser


# --- run -----------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    import faulthandler
    from device.logs import LogContext, setup_logging
    from device.malloc import limit_arenas

    limit_arenas()  # before any thread starts: RSS stays flat over weeks of reconnects
    # journald under systemd, stderr otherwise; every secret read later is redacted from it,
    # and every record carries the box's state and conversation once known
    context = LogContext()
    redactor = setup_logging(logging.DEBUG if args.verbose else logging.INFO, context=context)
    faulthandler.enable()  # a hard crash still leaves a Python stack in the journal
    path = args.config or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.exists() else None)
    cfg = load(path)
    api_key = None if cfg.live.simulator else require_api_key()
    if api_key is not None:
        redactor.add(api_key)
    for secret in precheck_run(cfg):
        redactor.add(secret)
    steps = None
    if args.events:
        from device.gpio.script import load as load_script
        if cfg.gpio.pin_factory != "mock":
            raise ConfigError(f"--events drives mock pins, but [gpio] pin_factory is "
                              f"{cfg.gpio.pin_factory!r}; set pin_factory = \"mock\" in the "
                              f"config to use a script")
        steps = load_script(args.events)
    return asyncio.run(_run(cfg, api_key, redactor, context=context, steps=steps))


def precheck_run(cfg: Config) -> list[Secret]:
    """Fail at start, with the fix, on what would otherwise fail later (after READY, on the
    first press, or in the sync task): files the config names, the sync token. Returns the
    secrets found (the sync token) for the log redactor."""
    from device.history.sync import check_url, load_token

    def need_file(key: str, value: str, what: str) -> None:
        if value and not Path(value).is_file():
            raise ConfigError(f"'{key}' is {value!r}, which does not exist; {what}")

    if not cfg.live.simulator:
        need_file("live.ca_file", cfg.live.ca_file,
                  "copy the server's PEM certificate there or set ca_file = \"\"")
    if cfg.audio.backend == "files":
        need_file("audio.input", cfg.audio.input, "give a WAV file for backend 'files'")
    secrets: list[Secret] = []
    if cfg.sync.url:
        check_url(cfg.sync.url, cfg.sync.allow_http)
        need_file("sync.ca_file", cfg.sync.ca_file,
                  "copy the history server's PEM certificate there or set ca_file = \"\"")
        token = load_token(cfg.sync.token, cfg.sync.token_file)
        if not token:
            raise ConfigError("[sync] has a url but no token; set token_file to the file holding "
                              "the token from 'python -m server add-device NAME' (or remove url)")
        secrets.append(token)
    return secrets


#: Test-only: with this set to N seconds, SIGUSR2 blocks the event loop for N s (a stall the
#: watchdog must notice). Never set in the unit; without it SIGUSR2 keeps its default action.
TEST_STALL_ENV = "TALKIE_TEST_STALL_S"


def _arm_test_stall(loop: asyncio.AbstractEventLoop, env: Any = None) -> float | None:
    """Install the SIGUSR2 stall hook when `TALKIE_TEST_STALL_S` asks for it; return its
    length, or None (the normal case: nothing installed)."""
    import os
    import signal
    raw = (os.environ if env is None else env).get(TEST_STALL_ENV, "")
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 60:
        log.warning("%s=%r ignored: give seconds between 0 and 60", TEST_STALL_ENV, raw)
        return None

    def stall() -> None:
        log.warning("test hook: blocking the event loop for %.1f s", seconds,
                    extra={"TALKIE_EVENT": "test_stall"})
        time.sleep(seconds)  # deliberately synchronous: this IS the fault under test

    loop.add_signal_handler(signal.SIGUSR2, stall)
    log.warning("test hook armed: SIGUSR2 blocks the event loop (%s is set; never set it on "
                "a real box)", TEST_STALL_ENV, extra={"TALKIE_EVENT": "test_hook"})
    return seconds


async def _run(cfg: Config, api_key: Secret | None, redactor: Any, *, context: Any = None,
               steps: list[Any] | None = None) -> int:
    """The daemon under systemd: READY once audio and pins are up, STATUS on every state,
    watchdog pings while healthy, STOPPING and a clean exit on SIGTERM."""
    import gc
    import signal
    from device.daemon import AudioFault, ConversationOpened
    from device.history.sync import client_from_config
    from device.live.session import LinkDown, LinkUp
    from device.notify import Notifier, watchdog_task
    from device.status import StatusFile, wifi_task

    notifier = Notifier()
    status = StatusFile(redact=redactor,
                        on_error=lambda e: log.warning("cannot write the status file: %s", e))
    status.write()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _arm_test_stall(loop)
    last_frame = [time.monotonic()]
    last_error = [""]
    ready: list[bool] = []
    audio_fault = [False]

    def healthy() -> bool:
        # Frames flowing, or a mic fault the daemon shows (LED, earcon) and is reopening: a
        # restart cannot fix an unplugged mic, and StartLimitBurst restarts end in a dead unit.
        # A read that hangs unnoticed still stops the pings.
        return audio_fault[0] or time.monotonic() - last_frame[0] < 10.0

    def on_event(ev: Any) -> None:
        match ev:
            case ConversationOpened() if context is not None:
                context.session = ev.conversation_id
            case LinkUp():
                status.live_connected()
            case LinkDown():
                status.live_failed(ev.reason)
                if ev.final:
                    last_error[0] = redactor(str(ev.reason))
            case AudioFault(error=str() as error):
                status.add_error(error)
                last_error[0] = redactor(error)
                audio_fault[0] = True
            case AudioFault():
                audio_fault[0] = False

    try:
        from device.status import local_address, spoken_status

        async with _box(cfg, api_key, on_frame=lambda: last_frame.__setitem__(0, time.monotonic()),
                        on_status_request=lambda: spoken_status(status.status, local_address())
                        ) as daemon:
            # A full garbage collection walks the ~90k objects the imports made with the GIL
            # held (38-200 ms measured on a busy x86, slower on a Pi), while the speaker thread
            # must write every 10 ms into a 60 ms device buffer: a click. They live as long as
            # the daemon, so take them out of the collector's way.
            gc.freeze()
            limits = daemon.limits

            def on_state(state: Any) -> None:
                if context is not None:
                    context.state = str(state)
                    if not state.awake:
                        context.session = None
                status.set_state(state)
                # `systemctl status talkie` shows this line: say why for error and offline
                why = f": {last_error[0]}" if str(state) in ("error", "offline") \
                    and last_error[0] else ""
                if stop.is_set():
                    pass  # systemd already heard STOPPING=1; the flush's last state is noise
                elif ready:
                    notifier.status(f"{state}{why}"[:200])
                else:
                    # The daemon's first state: its tasks run on open audio and pins.
                    ready.append(True)
                    notifier.ready(f"{state}{why}"[:200])
                    log.info("ready", extra={"TALKIE_EVENT": "ready"})
                if not state.awake and limits is not None:
                    status.set_budget_left(limits.budget_left())
                if state in ("idle", "sleeping"):
                    status.conversation_ended()

            daemon.add_state_listener(on_state)
            daemon.add_event_listener(on_event)
            sync = client_from_config(daemon.history, cfg.sync)
            pins = None
            if steps is not None:
                from device.gpio.script import script_pins
                pins = script_pins(cfg.gpio, daemon.gpio.factory)
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(daemon.run(), name="daemon"),
                    tg.create_task(watchdog_task(notifier, health=healthy)),
                    tg.create_task(wifi_task(status)),
                    tg.create_task(daemon.history.run_retention()),
                ]
                if sync is not None:
                    tasks.append(tg.create_task(sync.run(), name="sync"))
                if pins is not None:
                    from device.gpio.script import play
                    assert steps is not None
                    tasks.append(tg.create_task(play(steps, pins), name="events"))
                await stop.wait()
                log.info("stopping", extra={"TALKIE_EVENT": "stopping"})
                notifier.stopping()
                await daemon.flush()  # the open conversation and its history, then the rest
                for task in tasks:
                    task.cancel()
    finally:
        status.remove()
        notifier.close()
    log.info("stopped cleanly", extra={"TALKIE_EVENT": "stopped"})
    return 0


# --- simulate ------------------------------------------------------------------------------

def cmd_simulate(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    cfg = cfg.replace(audio={"backend": "files", "input": args.mic, "output": args.out},
                      gpio={"pin_factory": "mock"})
    pulse = (args.mic, args.out) if args.audio == "pulse" else None
    if args.fault and args.live_url:
        raise ConfigError("--fault needs the built-in simulator; drop --live-url")
    from device.live.simulator import FaultPlan
    for spec in args.fault:
        try:
            FaultPlan.parse(spec)
        except ValueError as e:
            raise ConfigError(f"--fault: {e}") from None
    steps = None
    if args.events:
        from device.gpio.script import load as load_script
        steps = load_script(args.events)
    if args.live_url:
        cfg = cfg.replace(live={"base_url": args.live_url, "ca_file": args.ca_file or "",
                                "simulator": False})
        api_key = Secret(args.api_key) if args.api_key else load_api_key()
    else:
        cfg = cfg.replace(live={"simulator": True})
        api_key = None
    with tempfile.TemporaryDirectory(prefix="talkie-sim-") as tmp:
        state = Path(args.state_dir or tmp)
        cfg = cfg.replace(history={"path": str(state / "history.db")})
        summary = asyncio.run(_simulate(cfg, api_key, state=state, faults=tuple(args.fault),
                                        steps=steps, echo=not args.json, pulse=pulse))
    if args.json:
        print(json.dumps(summary))
    return 0 if summary["ok"] else 1


async def _simulate(cfg: Config, api_key: Secret | None, *, state: Path,
                    faults: tuple[str, ...] = (), steps: list[Any] | None = None,
                    echo: bool, pulse: tuple[str, str] | None = None) -> dict[str, Any]:
    """One conversation; `pulse` = (mic WAV, out WAV) puts it on PortAudio through a private
    PulseAudio server instead of the WAV backend (`--audio pulse`)."""
    import wave

    try:
        with contextlib.closing(wave.open(cfg.audio.input, "rb")) as w:
            mic_seconds = w.getnframes() / w.getframerate()
    except (OSError, EOFError, wave.Error) as e:
        raise ConfigError(f"--mic {cfg.audio.input}: not a readable WAV file ({e}); "
                          f"give a 16-bit PCM WAV") from None
    on_transcript = _print_turn if echo else None
    async with contextlib.AsyncExitStack() as stack:
        devices = None
        if pulse is not None:
            from device.audio.pulse_harness import PulseSimulation
            devices = await stack.enter_async_context(PulseSimulation(*pulse))
            cfg = cfg.replace(audio=devices.audio_config())
        daemon = await stack.enter_async_context(_box(
            cfg, api_key, state=state, faults=faults, stop_when_mic_ends=True,
            on_transcript=on_transcript, wrap_mic=devices and devices.microphone))
        if devices is not None:
            devices.begin()   # the child speaks from now on, and the speaker is recorded
        script = None
        if steps is None:
            _press(daemon)
        else:
            from device.gpio.script import play_on
            script = asyncio.create_task(play_on(daemon.gpio, steps))
        try:
            # The WAV is played in real time; the last reply needs a little more.
            async with asyncio.timeout(mic_seconds + 60 + sum(_fault_delays(faults))):
                summary = await daemon.run()
        except TimeoutError:
            daemon.summary.errors.append("simulation timed out waiting for a reply")
            summary = daemon.summary
        finally:
            if script is not None:
                script.cancel()
                await asyncio.gather(script, return_exceptions=True)
    return summary.as_json()


def _fault_delays(faults: tuple[str, ...]) -> list[float]:
    from device.live.simulator import FaultPlan
    return [FaultPlan.parse(f).delay_s for f in faults]


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
        cfg = cfg.replace(history={"path": str(Path(tmp) / "history.db")})
        summary = asyncio.run(_simulate(cfg, None, state=Path(tmp), echo=True))
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


def state_dir(cfg: Config) -> Path:
    """Where the box keeps small state (resumption handle, today's budget): systemd's
    StateDirectory, else next to the history database."""
    import os
    env = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(env) if env else Path(cfg.history.path).parent


@contextlib.asynccontextmanager
async def _box(cfg: Config, api_key: Secret | None, *, state: Path | None = None,
               faults: tuple[str, ...] = (), on_audio_state: Any = None,
               limits_clock: Any = None, wrap_mic: Any = None,
               **daemon_args: Any) -> AsyncIterator[Any]:
    """Open everything the daemon needs (simulator, audio, pins, history) and close it after.

    `limits_clock` is the wall clock the parents' limits read (tests move it). `wrap_mic(mic)`
    may replace the microphone (simulate --audio pulse ends it with its WAV)."""
    from device.audio.factory import open_audio, open_gate
    from device.daemon import AudioFault, Daemon
    from device.gpio.factory import Gpio
    from device.history.store import HistoryStore
    from device.limits import Limits
    from device.live.continuity import HandleStore

    async with contextlib.AsyncExitStack() as stack:
        # The LED first, so the child sees the box starting while the rest opens.
        gpio = Gpio(cfg)
        stack.callback(gpio.close)
        gpio.set_state("booting")
        if cfg.live.simulator:
            from device.live.simulator import Simulator
            sim = await stack.enter_async_context(Simulator(faults=faults))
            cfg = cfg.replace(live={"base_url": sim.base_url, "ca_file": str(sim.ca_file)})
        # google-genai takes most of a second to import: do it now, not on the first press.
        await asyncio.to_thread(__import__, "google.genai")
        holder: list[Any] = []

        def audio_state(state: str, error: Any) -> None:
            if holder:
                holder[0].post(AudioFault(None if state == "ok" else str(error)))
            if on_audio_state is not None:
                on_audio_state(state, error)

        mic, speaker = open_audio(cfg.audio, on_state=audio_state)
        gate = open_gate(cfg.audio, mic, speaker)
        if wrap_mic is not None:
            mic = wrap_mic(mic)
        mic = await stack.enter_async_context(mic)
        speaker = await stack.enter_async_context(speaker)
        where = state or state_dir(cfg)
        await asyncio.to_thread(where.mkdir, parents=True, exist_ok=True)
        history = await HistoryStore.open_config(cfg.history)
        stack.push_async_callback(history.close)
        daemon = Daemon(cfg, api_key, mic=mic, speaker=speaker, gate=gate,
                        buttons=gpio, history=history,
                        limits=Limits.from_config(cfg, state_dir=where, clock=limits_clock),
                        handles=HandleStore(where / "resumption.json"), **daemon_args)
        holder.append(daemon)
        daemon.add_state_listener(lambda state: gpio.set_state(str(state)))
        daemon.gpio = gpio
        daemon.history = history
        assert gpio.button is not None
        daemon.button_pin = gpio.button.pin
        try:
            yield daemon
        finally:
            await daemon.flush()
