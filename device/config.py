"""Talkie's configuration: one TOML file, turned into frozen dataclasses.

Every key is documented in `provisioning/config.example.toml`. A section is a dataclass; a key
is a field whose `metadata["doc"]` says what it means. The loader walks the dataclasses, so a
new key is one field here and one line in the example file. Unknown keys, wrong types and
out-of-range values are errors that name the key, its line and the fix.

The API key is not in this file: it is a systemd credential (`$CREDENTIALS_DIRECTORY/
gemini-api-key`), or `GEMINI_API_KEY` for development. It is held as a `Secret`, whose repr
and str never show it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.errors import ConfigError, MissingApiKeyError

DEFAULT_PATH = Path("/etc/talkie/config.toml")
CREDENTIAL_NAME = "gemini-api-key"


def _key(default: Any, doc: str, *, choices: tuple[Any, ...] = (), lo: float | None = None,
         hi: float | None = None) -> Any:
    """A config key: its default, what it means, and the values it may take."""
    meta = {"doc": doc, "choices": choices, "lo": lo, "hi": hi}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ChildConfig:
    name: str = _key("friend", "The child's first name, as the toy should say it.")
    age: int = _key(6, "The child's age in years; the toy speaks for this age.", lo=2, hi=14)
    level: str = _key("", "A few words on the child, e.g. 'early reader, loves dinosaurs'.")
    language: str = _key("en-US", "BCP-47 language the toy speaks, e.g. en-US, de-DE, fr-FR.")


@dataclass(frozen=True)
class LiveConfig:
    model: str = _key("gemini-2.5-flash-native-audio-preview-12-2025",
                      "Gemini Live model name, without the 'models/' prefix.")
    voice: str = _key("Leda", "Prebuilt voice name, e.g. Leda, Puck, Kore, Aoede.")
    base_url: str = _key("", "Live API base URL; empty means Google's. "
                             "Set https://127.0.0.1:PORT for a simulator.")
    ca_file: str = _key("", "PEM file to trust for base_url (a simulator's certificate).")
    api_version: str = _key("", "API version path segment (v1, v1beta, v1alpha); empty: the SDK's.")
    simulator: bool = _key(False, "Run the built-in Live API simulator instead of Google's "
                                  "(demos and tests; needs no API key).")
    connect_timeout_s: float = _key(10.0, "Seconds to wait for the connection and setupComplete.",
                                    lo=1, hi=120)
    reply_timeout_s: float = _key(20.0, "Seconds to wait for the first word of a reply (and between "
                                        "its parts) before reconnecting and asking again.",
                                  lo=1, hi=300)
    max_connects_per_minute: int = _key(12, "Most Live API connections opened in any minute, so a "
                                            "fault never becomes a retry storm.", lo=1, hi=600)


@dataclass(frozen=True)
class AudioConfig:
    backend: str = _key("sounddevice", "Where audio goes: 'sounddevice' (PortAudio: ALSA, "
                                       "PulseAudio) or 'files' (WAV in, WAV out).",
                        choices=("sounddevice", "files"))
    input: str = _key("default", "Microphone: PortAudio device name (a part is enough), index, "
                                 "or 'default'. With backend 'files': a WAV path.")
    output: str = _key("default", "Speaker: PortAudio device name, index, or 'default'. "
                                  "With backend 'files': the WAV path to write.")
    input_rate: int = _key(0, "Microphone sample rate in Hz; 0 uses the device's own.", lo=0, hi=192000)
    output_rate: int = _key(0, "Speaker sample rate in Hz; 0 uses the device's own.", lo=0, hi=192000)
    input_channels: int = _key(1, "Channels to open on the microphone (2 for a stereo I2S pair).",
                               lo=1, hi=8)
    input_channel: int = _key(0, "Which channel of the microphone carries the voice (0 = first).",
                              lo=0, hi=7)
    vad_aggressiveness: int = _key(2, "webrtcvad aggressiveness, 0 (lenient) to 3 (strict).",
                                   lo=0, hi=3)
    preroll_ms: int = _key(700, "Audio kept from before speech starts, so no first syllable is "
                                "clipped.", lo=500, hi=2000)
    hangover_ms: int = _key(600, "Silence after speech before the turn is declared over.",
                            lo=100, hi=3000)
    tail_ms: int = _key(300, "Of that silence, only this much is streamed when the turn ends; "
                             "a pause's silence beyond it is held and streamed only if speech "
                             "resumes.", lo=0, hi=3000)
    min_speech_ms: int = _key(120, "Shorter sounds (clicks, bumps) are not speech.", lo=0, hi=2000)
    barge_in: str = _key("button", "How the child interrupts the toy: 'button' (the mic is gated "
                                   "while the toy speaks) or 'voice' (needs echo_canceller).",
                         choices=("button", "voice"))
    echo_canceller: str = _key("none", "Echo canceller between mic and VAD gate: 'none' or "
                                       "'webrtc' (needs the talkie[aec] extra).",
                               choices=("none", "webrtc"))
    echo_delay_ms: int = _key(0, "Speaker-to-mic delay the timestamps do not cover, as a hint "
                                 "to the echo canceller; 0 lets it find the delay.", lo=0, hi=500)
    volume: float = _key(0.8, "Speaker volume, 0.0 to 1.0.", lo=0.0, hi=1.0)
    max_volume: float = _key(1.0, "Parents' cap on the volume, 0.0 to 1.0.", lo=0.0, hi=1.0)
    vad_noise_guard_db: float = _key(4.0, "A frame counts as speech only this many dB above the "
                                          "learned noise floor (steady noise cannot hold the gate "
                                          "open).", lo=0.0, hi=30.0)
    prefill_ms: int = _key(60, "Reply audio buffered before playback starts (jitter buffer).",
                           lo=0, hi=1000)
    output_block_ms: int = _key(10, "Speaker block size; flush() silences within about a block "
                                    "and a stream restart.", lo=5, hi=100)
    output_latency_ms: int = _key(60, "Audio the speaker device holds ahead: more survives a busy "
                                      "CPU without crackling, and adds to every reply's delay "
                                      "(a flush drops it at once).", lo=5, hi=500)


#: LED patterns a state may show (device/gpio/leds.py draws them).
LED_PATTERNS = ("off", "on", "dim", "breathe", "pulse", "blink", "flash", "flicker", "wink")


@dataclass(frozen=True)
class GpioConfig:
    pin_factory: str = _key("auto", "gpiozero pin factory: 'auto' (real pins on a Pi, mock pins "
                                    "elsewhere), 'mock', 'lgpio', 'rpigpio'.",
                            choices=("auto", "mock", "lgpio", "rpigpio", "pigpio", "native"))
    button_pin: int = _key(17, "BCM pin of the big button (wired to ground).", lo=0, hi=27)
    led_pin: int = _key(18, "BCM pin of the status LED (through a resistor to ground).", lo=0, hi=27)
    button_mode: str = _key("tap", "How the big button talks: 'tap' (a press wakes the box or "
                                    "interrupts it) or 'hold' (push-to-talk: hold while speaking).",
                            choices=("tap", "hold"))
    button_bounce_ms: int = _key(30, "Edges closer than this after a press or release are contact "
                                     "bounce and ignored.", lo=0, hi=500)
    long_press_s: float = _key(2.0, "Holding the button this long ends the conversation (tap mode).",
                               lo=0.5, hi=10)
    very_long_press_s: float = _key(8.0, "Holding the button this long makes the box say its status "
                                         "(Wi-Fi, address) for parents (tap mode).", lo=1, hi=30)
    shake_enabled: bool = _key(False, "Wake the box by shaking it (needs a tilt/shake switch).")
    shake_pin: int = _key(27, "BCM pin of the tilt/shake switch (wired to ground).", lo=0, hi=27)
    shake_edges: int = _key(4, "Switch flips (after debouncing) that make a shake.", lo=2, hi=20)
    shake_window_ms: int = _key(1200, "The flips of one shake must fall within this time.",
                                lo=100, hi=5000)
    shake_bounce_ms: int = _key(25, "Flips of the tilt switch closer than this are one flip "
                                    "(contact bounce).", lo=0, hi=500)
    shake_cooldown_s: float = _key(3.0, "After a shake, further shaking is ignored this long.",
                                   lo=0, hi=60)
    volume_control: str = _key("none", "Volume knob: 'none', 'buttons' (up/down buttons) or "
                                       "'encoder' (a rotary encoder).",
                               choices=("none", "buttons", "encoder"))
    volume_up_pin: int = _key(22, "BCM pin of the volume-up button (wired to ground).", lo=0, hi=27)
    volume_down_pin: int = _key(23, "BCM pin of the volume-down button (wired to ground).",
                                lo=0, hi=27)
    encoder_a_pin: int = _key(5, "BCM pin of the rotary encoder's A (CLK) output.", lo=0, hi=27)
    encoder_b_pin: int = _key(6, "BCM pin of the rotary encoder's B (DT) output.", lo=0, hi=27)
    volume_step: float = _key(0.1, "How much one click or detent changes the volume.",
                              lo=0.01, hi=0.5)
    led_kind: str = _key("single", "Status light: 'single' (one LED on led_pin), 'rgb' (an RGB "
                                   "LED on the rgb_*_pin keys), 'leds' (a few LEDs on led_pins, all "
                                   "showing the same pattern, e.g. two eyes) or 'none'.",
                         choices=("single", "rgb", "leds", "none"))
    led_pins: list[int] = _key([], "BCM pins of the LEDs when led_kind = 'leds', e.g. [12, 13].")
    rgb_red_pin: int = _key(24, "BCM pin of the RGB LED's red leg.", lo=0, hi=27)
    rgb_green_pin: int = _key(25, "BCM pin of the RGB LED's green leg.", lo=0, hi=27)
    rgb_blue_pin: int = _key(26, "BCM pin of the RGB LED's blue leg.", lo=0, hi=27)
    led_active_high: bool = _key(True, "True if a high pin lights the LED (LED to ground, or a "
                                       "common-cathode RGB LED); false for common-anode.")
    led_booting: str = _key("dim", "LED pattern while starting.", choices=LED_PATTERNS)
    led_idle: str = _key("breathe", "LED pattern while waiting for the button.",
                         choices=LED_PATTERNS)
    led_connecting: str = _key("blink", "LED pattern while connecting.", choices=LED_PATTERNS)
    led_listening: str = _key("on", "LED pattern while the child may talk.", choices=LED_PATTERNS)
    led_thinking: str = _key("pulse", "LED pattern while waiting for the reply.",
                             choices=LED_PATTERNS)
    led_speaking: str = _key("flicker", "LED pattern while the toy talks.", choices=LED_PATTERNS)
    led_error: str = _key("flash", "LED pattern when something needs a grown-up.",
                          choices=LED_PATTERNS)
    led_offline: str = _key("wink", "LED pattern while the Live API cannot be reached.",
                            choices=LED_PATTERNS)
    led_sleeping: str = _key("off", "LED pattern in quiet hours or with today's budget spent.",
                             choices=LED_PATTERNS)
    color_booting: str = _key("#ffffff", "RGB LED colour while starting, '#rrggbb'.")
    color_idle: str = _key("#0040ff", "RGB LED colour while waiting for the button.")
    color_connecting: str = _key("#00c0ff", "RGB LED colour while connecting.")
    color_listening: str = _key("#00ff40", "RGB LED colour while the child may talk.")
    color_thinking: str = _key("#ffb000", "RGB LED colour while waiting for the reply.")
    color_speaking: str = _key("#c000ff", "RGB LED colour while the toy talks.")
    color_error: str = _key("#ff0000", "RGB LED colour when something needs a grown-up.")
    color_offline: str = _key("#ff4000", "RGB LED colour while the Live API cannot be reached.")
    color_sleeping: str = _key("#100020", "RGB LED colour in quiet hours or with the budget spent.")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("color_") and not re.fullmatch(r"#[0-9a-fA-F]{6}", value):
                raise ConfigError(f"'gpio.{f.name}' is {value!r}; write a colour as '#rrggbb', "
                                  f"e.g. {f.name} = \"#00ff40\"")
        for pin in self.led_pins:
            if not 0 <= pin <= 27:
                raise ConfigError(f"'gpio.led_pins' has {pin!r}; BCM pins are 0 to 27")
        if self.led_kind == "leds" and not self.led_pins:
            raise ConfigError("'gpio.led_kind' is 'leds' but 'gpio.led_pins' is empty; "
                              "list the LEDs' BCM pins, e.g. led_pins = [12, 13]")
        if self.very_long_press_s <= self.long_press_s:
            raise ConfigError(f"'gpio.very_long_press_s' ({self.very_long_press_s}) must be longer "
                              f"than 'gpio.long_press_s' ({self.long_press_s}); e.g. 8.0 and 2.0")


_HHMM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")


@dataclass(frozen=True)
class LimitsConfig:
    quiet_hours_start: str = _key("", "Local time quiet hours begin, 'HH:MM' (e.g. '19:30'); the "
                                      "box then plays a sleepy sound instead of waking. Empty: none.")
    quiet_hours_end: str = _key("", "Local time quiet hours end, 'HH:MM' (e.g. '07:00'); may be "
                                    "earlier than the start (the hours cross midnight).")
    daily_budget_minutes: int = _key(0, "Talk time allowed per day, reset at local midnight; "
                                        "0 means no limit.", lo=0, hi=1440)
    budget_counts: str = _key("conversation", "What the budget counts: 'conversation' (time "
                                               "awake in a conversation) or 'audio' (seconds of "
                                               "the child's speech streamed).",
                              choices=("conversation", "audio"))
    max_conversation_minutes: int = _key(15, "A conversation ends after this long; 0 means no "
                                             "limit.", lo=0, hi=240)
    quiet_timeout_s: float = _key(30.0, "A conversation ends (with a sleepy sound) when nobody "
                                        "has talked for this many seconds while the toy listens.",
                                  lo=3.0, hi=600.0)

    def __post_init__(self) -> None:
        for name in ("quiet_hours_start", "quiet_hours_end"):
            value = getattr(self, name)
            if value and not _HHMM.fullmatch(value):
                raise ConfigError(f"'limits.{name}' is {value!r}; write a 24-hour local time as "
                                  f"\"HH:MM\", e.g. {name} = \"19:30\", or \"\" for no quiet hours")
        if bool(self.quiet_hours_start) != bool(self.quiet_hours_end):
            raise ConfigError("'limits.quiet_hours_start' and 'limits.quiet_hours_end' go together; "
                              "set both (e.g. \"19:30\" and \"07:00\") or leave both empty")
        if self.quiet_hours_start and self.quiet_hours_start == self.quiet_hours_end:
            raise ConfigError(f"'limits.quiet_hours_start' equals 'limits.quiet_hours_end' "
                              f"({self.quiet_hours_start!r}); give the quiet hours a length, or "
                              f"leave both empty")


@dataclass(frozen=True)
class HistoryConfig:
    path: str = _key("/var/lib/talkie/history.db", "SQLite file of conversations and transcripts.")
    retention_days: int = _key(90, "Conversations older than this many days are deleted.",
                               lo=1, hi=3650)
    recordings: bool = _key(False, "Keep audio recordings of the child; off unless a parent "
                                   "turns it on (transcripts are kept either way).")


@dataclass(frozen=True)
class SyncConfig:
    url: str = _key("", "History server base URL (https://...); empty: no server, history "
                        "stays on the box. http:// only to 127.0.0.1 unless allow_http.")
    token_file: str = _key("", "File holding this box's token from 'python -m server "
                               "add-device NAME' (preferred over token).")
    # repr=False: the token never shows in a repr of the config (logs, tracebacks).
    token: str = field(default="", repr=False, metadata={
        "doc": "This box's token, if not in token_file. A secret: prefer token_file.",
        "choices": (), "lo": None, "hi": None})
    ca_file: str = _key("", "PEM file to trust for the server (a self-signed certificate).")
    allow_http: bool = _key(False, "Allow plain http:// to another machine (trusted LAN only).")
    batch_size: int = _key(200, "Changes sent per request.", lo=1, hi=5000)


@dataclass(frozen=True)
class Config:
    child: ChildConfig = field(default_factory=ChildConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    gpio: GpioConfig = field(default_factory=GpioConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)

    def replace(self, **sections: dict[str, Any]) -> Config:
        """A copy with keys of some sections changed: `cfg.replace(live={"simulator": True})`."""
        changes = {name: dataclasses.replace(getattr(self, name), **keys)
                   for name, keys in sections.items()}
        return dataclasses.replace(self, **changes)


class Secret:
    """A string that never shows itself in a log, a repr or an exception."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


# --- loading -------------------------------------------------------------------------------

def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and check a config file. No path: the defaults (the embedded demo setup)."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file; copy provisioning/config.example.toml "
                          f"there or run 'talkie setup'") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.__class__.__name__}); "
                          f"check its permissions and that it is UTF-8 text") from None
    return loads(text, source=str(path))


def loads(text: str, source: str = "<config>") -> Config:
    """Check TOML text and turn it into a Config."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML ({e}); fix the syntax there") from None
    return _build(Config, data, source, text, ())


def _build(cls: type, data: dict[str, Any], source: str, text: str, where: tuple[str, ...]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = ".".join((*where, unknown[0]))
        known = ", ".join(fields)
        kind = "section" if not where else "key"
        raise ConfigError(f"{_at(source, text, where, unknown[0])}: unknown {kind} '{key}'; "
                          f"known {kind}s here: {known}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        f, hint = fields[name], hints[name]
        dotted = ".".join((*where, name))
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{_at(source, text, where, name)}: '{dotted}' must be a "
                                  f"[{dotted}] section, not a value")
            values[name] = _build(hint, value, source, text, (*where, name))
        else:
            values[name] = _check(dotted, value, hint, f.metadata,
                                  _at(source, text, where, name), secret=not f.repr)
    try:
        return cls(**values)
    except ConfigError as e:  # a check across keys (__post_init__): say which file
        raise ConfigError(f"{source}: {e}") from None


def _check(key: str, value: Any, hint: Any, meta: Any, at: str, secret: bool = False) -> Any:
    expected = _type_name(hint)
    ok = _is_instance(value, hint)
    if not ok and hint is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        shown = "hidden" if secret else repr(value)  # a mistyped token is still a token
        raise ConfigError(f"{at}: '{key}' must be {expected}, not {_type_name(type(value))} "
                          f"({shown}); write e.g. {key.split('.')[-1]} = {_example(hint)}")
    choices = meta.get("choices") or ()
    if choices and value not in choices:
        raise ConfigError(f"{at}: '{key}' is {value!r}; use one of "
                          + ", ".join(repr(c) for c in choices))
    lo, hi = meta.get("lo"), meta.get("hi")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{at}: '{key}' is {value!r}; it must be between {lo} and {hi}")
    return value


def _is_instance(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_is_instance(value, h) for h in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(item is Any or _is_instance(v, item) for v in value)
    if hint is float:
        return isinstance(value, float)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    names = {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
             list: "a list", dict: "a table"}
    if typing.get_origin(hint) is list:
        return "a list"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _example(hint: Any) -> str:
    return {str: '"text"', int: "3", float: "0.5", bool: "true"}.get(hint, "[]")


def _at(source: str, text: str, where: tuple[str, ...], key: str) -> str:
    """`file:line` of a key, found by scanning its section; TOML parsers do not keep lines."""
    section = ".".join(where)
    current = ""
    header = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]")
    for n, line in enumerate(text.splitlines(), 1):
        if m := header.match(line):
            current = m.group(1)
            if not where and current == key:
                return f"{source}:{n}"
            continue
        if current == section and re.match(rf"^\s*{re.escape(key)}\s*=", line):
            return f"{source}:{n}"
    return source


# --- the API key ---------------------------------------------------------------------------

def load_api_key(environ: typing.Mapping[str, str] | None = None) -> Secret | None:
    """The Gemini API key: the systemd credential first, then GEMINI_API_KEY. None if neither."""
    env = os.environ if environ is None else environ
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / CREDENTIAL_NAME
        try:
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            value = ""
        except OSError as e:
            raise MissingApiKeyError(f"credential '{CREDENTIAL_NAME}' in $CREDENTIALS_DIRECTORY "
                                     f"cannot be read ({e.strerror}); re-run 'talkie setup'") from None
        if value:
            return Secret(value)
    value = env.get("GEMINI_API_KEY", "").strip()
    return Secret(value) if value else None


def require_api_key(environ: typing.Mapping[str, str] | None = None) -> Secret:
    """The API key, or a MissingApiKeyError that says where to put one."""
    key = load_api_key(environ)
    if key is None:
        raise MissingApiKeyError(
            f"no Gemini API key: systemd credential '{CREDENTIAL_NAME}' "
            f"(LoadCredential=, put there by 'talkie setup') or GEMINI_API_KEY is not set; "
            f"run 'talkie setup --api-key-file FILE', or set [live] simulator = true for a demo")
    return key


def documented_keys(cls: type = Config, prefix: str = "") -> dict[str, str]:
    """Every key as 'section.key' -> its doc; the example file is checked against this."""
    out: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(documented_keys(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = f.metadata.get("doc", "")
    return out
