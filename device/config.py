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
    preroll_ms: int = _key(600, "Audio kept from before speech starts, so no first syllable is "
                                "clipped.", lo=500, hi=2000)
    hangover_ms: int = _key(600, "Silence after speech before the turn is declared over.",
                            lo=100, hi=3000)
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


@dataclass(frozen=True)
class GpioConfig:
    pin_factory: str = _key("auto", "gpiozero pin factory: 'auto' (real pins on a Pi, mock pins "
                                    "elsewhere), 'mock', 'lgpio', 'rpigpio'.",
                            choices=("auto", "mock", "lgpio", "rpigpio", "pigpio", "native"))
    button_pin: int = _key(17, "BCM pin of the big button (wired to ground).", lo=0, hi=27)
    led_pin: int = _key(18, "BCM pin of the status LED (through a resistor to ground).", lo=0, hi=27)


@dataclass(frozen=True)
class Config:
    child: ChildConfig = field(default_factory=ChildConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    gpio: GpioConfig = field(default_factory=GpioConfig)

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
                                  _at(source, text, where, name))
    return cls(**values)


def _check(key: str, value: Any, hint: Any, meta: Any, at: str) -> Any:
    expected = _type_name(hint)
    ok = _is_instance(value, hint)
    if not ok and hint is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"{at}: '{key}' must be {expected}, not {_type_name(type(value))} "
                          f"({value!r}); write e.g. {key.split('.')[-1]} = {_example(hint)}")
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
