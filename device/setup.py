"""`talkie setup` and `talkie firstboot`: Wi-Fi, the API key and the child's profile, once.

Everything a parent types is either a secret (Wi-Fi password, API key, history token: read
without echo or from a file/stdin, never from argv in the documented path, never printed or
logged) or a setting (written atomically to /etc/talkie/config.toml and checked by the same
loader the daemon uses before it replaces the old file). `--root DIR` writes every file under
DIR instead of /, so tests and image builders can run it unprivileged; Wi-Fi still goes
through the `nmcli` first on PATH.

Files and modes (owner root; group talkie where the daemon must read):
  /etc/talkie/config.toml                      0640 root:talkie
  /etc/talkie/credentials/                     0700 root:root
  /etc/talkie/credentials/gemini-api-key       0600 root:root (systemd LoadCredential=)
  /etc/talkie/history-token                    0640 root:talkie
"""

from __future__ import annotations

import argparse
import getpass
import grp
import logging
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.config import CREDENTIAL_NAME, Config, Secret, loads
from device.errors import ConfigError, LiveError, TalkieError
from device.fileio import atomic_write

log = logging.getLogger(__name__)

BOOT_DIRS = (Path("/boot/firmware"), Path("/boot"))
FIRSTBOOT_NAME = "talkie-setup.toml"
FIRSTBOOT_ERROR_NAME = "talkie-setup.error.txt"
_API_KEY = re.compile(r"AIza[0-9A-Za-z_\-]{35}")
_HHMM = re.compile(r"([01]\d|2[0-3]):[0-5]\d")


class SetupError(TalkieError):
    """Setup cannot go on; the message says what to fix."""


@dataclass(frozen=True)
class Paths:
    """Where setup writes, under a root (`/` on the box, a sandbox in tests)."""
    root: Path = Path("/")

    def at(self, device_path: str) -> Path:
        return self.root / device_path.lstrip("/")

    @property
    def config(self) -> Path:
        return self.at("/etc/talkie/config.toml")

    @property
    def credentials(self) -> Path:
        return self.at("/etc/talkie/credentials")

    @property
    def api_key(self) -> Path:
        return self.credentials / CREDENTIAL_NAME

    HISTORY_TOKEN = "/etc/talkie/history-token"


@dataclass(frozen=True)
class Request:
    """Everything setup may change; None/empty means 'leave as it is'."""
    wifi_ssid: str = ""
    wifi_password: Secret | None = None
    wifi_interface: str = ""
    country: str = ""
    api_key: Secret | None = None
    check_key: bool = False
    check_timeout_s: float = 15.0
    history_token: Secret | None = None
    #: Config changes, section -> key -> value, checked by the config loader before writing.
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)


# --- checks on what the parent typed -------------------------------------------------------

def check_api_key(text: str) -> Secret:
    """A Google API key has 39 characters and starts with AIza. Never echoes it back."""
    text = text.strip()
    if any(c.isspace() for c in text):
        raise SetupError("the API key contains spaces or line breaks; copy it again from "
                         "https://aistudio.google.com/apikey as one word")
    if any(c in text for c in "\"'`"):
        raise SetupError("the API key contains quote marks; paste the key alone, without quotes")
    if not _API_KEY.fullmatch(text):
        raise SetupError(f"that is not a Gemini API key: a key has 39 characters and starts "
                         f"with 'AIza' (this one has {len(text)} characters"
                         f"{'' if text.startswith('AIza') else ' and starts differently'}); "
                         f"copy it again from https://aistudio.google.com/apikey")
    return Secret(text)


def parse_quiet_hours(text: str) -> tuple[str, str]:
    """'19:30-07:00' -> ('19:30', '07:00'); 'off' or '' -> ('', '')."""
    text = text.strip()
    if text.lower() in ("", "off", "none"):
        return "", ""
    parts = [p.strip() for p in text.split("-")]
    if len(parts) != 2 or not all(_HHMM.fullmatch(p) for p in parts) or parts[0] == parts[1]:
        raise SetupError(f"quiet hours {text!r} are not 'HH:MM-HH:MM' (24-hour clock, start "
                         f"and end differ); write e.g. 19:30-07:00, or 'off'")
    return parts[0], parts[1]


# --- writing -------------------------------------------------------------------------------

def render_toml(data: dict[str, dict[str, Any]]) -> str:
    """The config as TOML: sections of scalars (and lists of scalars), in a stable order."""
    lines = ["# Talkie configuration, written by 'talkie setup'. Every key is explained in",
             "# provisioning/config.example.toml. Edit, then: sudo systemctl restart talkie",
             ""]
    for section, keys in data.items():
        if not keys:
            continue
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in keys.items()]
        lines.append("")
    return "\n".join(lines)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        out = v.replace("\\", "\\\\").replace('"', '\\"')
        out = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in out)
        return f'"{out}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise SetupError(f"cannot write {type(v).__name__} to the config")


def merged_config(paths: Paths, settings: dict[str, dict[str, Any]]) -> tuple[str, Config]:
    """Existing config plus the changes, as text, checked by the daemon's own loader."""
    data: dict[str, dict[str, Any]] = {}
    if paths.config.exists():
        try:
            data = tomllib.loads(paths.config.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise SetupError(f"{paths.config} is not valid TOML ({e}); fix or remove it, then "
                             f"run setup again") from None
    for section, keys in settings.items():
        data.setdefault(section, {}).update(keys)
    text = render_toml(data)
    try:
        cfg = loads(text, source=str(paths.config))
    except ConfigError as e:
        raise SetupError(str(e)) from None
    return text, cfg


def _chown(path: Path, group: str | None) -> None:
    """root:group when we are root (a sandbox run by a user keeps the user's files)."""
    if os.geteuid() != 0:
        return
    gid = 0
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            log.warning("group %s does not exist yet (install.sh creates it); %s stays "
                        "root:root", group, path)
    os.chown(path, 0, gid)


def _ensure_dir(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)


def write_config(paths: Paths, settings: dict[str, dict[str, Any]]) -> Config:
    text, cfg = merged_config(paths, settings)
    _ensure_dir(paths.config.parent, 0o755)
    atomic_write(paths.config, text, mode=0o640)
    _chown(paths.config, "talkie")
    return cfg


def store_api_key(paths: Paths, key: Secret) -> Path:
    _ensure_dir(paths.credentials, 0o700)
    _chown(paths.credentials, None)
    atomic_write(paths.api_key, key.reveal() + "\n", mode=0o600)
    _chown(paths.api_key, None)
    return paths.api_key


def store_history_token(paths: Paths, token: Secret) -> str:
    target = paths.at(Paths.HISTORY_TOKEN)
    atomic_write(target, token.reveal() + "\n", mode=0o640)
    _chown(target, "talkie")
    return Paths.HISTORY_TOKEN


# --- doing it ------------------------------------------------------------------------------

def apply(req: Request, paths: Paths, say: Any = print) -> Config:
    """Carry out a setup request in a safe order; the config is written last."""
    settings = {s: dict(k) for s, k in req.settings.items()}
    if req.history_token is not None:
        settings.setdefault("sync", {})["token_file"] = Paths.HISTORY_TOKEN
    # Check the settings before touching anything, so a typo fails in a second.
    merged_config(paths, settings)
    if req.history_token is not None:
        store_history_token(paths, req.history_token)
        say(f"History server token stored in {Paths.HISTORY_TOKEN} (mode 0640)")

    if req.country:
        from device.wifi import set_country
        say(set_country(req.country, paths.root))
    if req.wifi_ssid:
        from device.wifi import NetworkManager, connect
        say(f"Joining Wi-Fi '{req.wifi_ssid}' (this can take up to a minute)...")
        outcome = connect(NetworkManager(), req.wifi_ssid, req.wifi_password, req.wifi_interface)
        say(outcome.message)

    if req.api_key is not None:
        if req.check_key:
            say("Checking the API key with the Live API...")
            from device.livecheck import check_live_sync
            cfg_now = merged_config(paths, settings)[1]
            try:
                took = check_live_sync(cfg_now, req.api_key, req.check_timeout_s)
            except LiveError as e:
                raise SetupError(f"the API key was not stored: {e}") from None
            say(f"The Live API accepted the key ({took:.1f} s)")
        where = store_api_key(paths, req.api_key)
        say(f"API key stored in {where} (mode 0600, root only)")

    cfg = write_config(paths, settings)
    say(f"Settings written to {paths.config}")
    return cfg


# --- reading what the parent typed --------------------------------------------------------

def _read_secret_file(path: str, what: str) -> str:
    try:
        if path == "-":
            return sys.stdin.readline().rstrip("\r\n")
        with open(path, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    except OSError as e:
        raise SetupError(f"cannot read the {what} file {path} ({e.strerror}); "
                         f"check the path") from None


def request_from_args(args: argparse.Namespace) -> Request:
    """Turn flags (and, on a terminal, questions) into a Request."""
    interactive = sys.stdin.isatty() and not args.yes and not args.non_interactive
    stdin_used = sum(bool(x) for x in (args.wifi_password_stdin, args.api_key_stdin,
                                       args.history_token_stdin))
    if stdin_used > 1:
        raise SetupError("only one of --wifi-password-stdin, --api-key-stdin and "
                         "--history-token-stdin can read stdin; use a file for the others")

    ssid = args.wifi_ssid or ""
    wifi_password: Secret | None = None
    if args.wifi_password_file or args.wifi_password_stdin:
        wifi_password = Secret(_read_secret_file(args.wifi_password_file or "-", "Wi-Fi password"))
    elif args.wifi_password is not None:
        wifi_password = Secret(args.wifi_password)
    country = args.country or ""
    api_key: Secret | None = None
    if args.api_key_file or args.api_key_stdin:
        api_key = check_api_key(_read_secret_file(args.api_key_file or "-", "API key"))
    token: Secret | None = None
    if args.history_token_file or args.history_token_stdin:
        token = Secret(_read_secret_file(args.history_token_file or "-", "history token"))

    child: dict[str, Any] = {}
    for key in ("name", "age", "level", "language"):
        value = getattr(args, f"child_{key}" if key != "language" else "language")
        if value is not None:
            child[key] = value

    if interactive:
        print("Talkie setup. Press Enter to skip a question and keep what is set now.")
        if not ssid:
            ssid = input("Wi-Fi name (empty: keep the current Wi-Fi): ").strip()
        if ssid and wifi_password is None:
            wifi_password = Secret(getpass.getpass("Wi-Fi password (not shown; empty for an "
                                                   "open network): "))
        if ssid and not country:
            country = input("Wi-Fi country, two letters (e.g. GB, US, DE): ").strip()
        if api_key is None:
            typed = getpass.getpass("Gemini API key (not shown; empty: keep the stored one): ")
            api_key = check_api_key(typed) if typed else None
        for key, question in (("name", "Child's first name"), ("age", "Child's age")):
            if key not in child:
                answer = input(f"{question}: ").strip()
                if answer:
                    child[key] = answer
    if ssid and wifi_password is None:
        wifi_password = Secret("")
    if "age" in child:
        try:
            child["age"] = int(child["age"])
        except ValueError:
            raise SetupError(f"age {child['age']!r} is not a whole number; write e.g. 6") from None

    settings: dict[str, dict[str, Any]] = {}
    if child:
        settings["child"] = child
    limits: dict[str, Any] = {}
    if args.quiet_hours is not None:
        limits["quiet_hours_start"], limits["quiet_hours_end"] = parse_quiet_hours(args.quiet_hours)
    if args.daily_budget_minutes is not None:
        limits["daily_budget_minutes"] = args.daily_budget_minutes
    if args.max_conversation_minutes is not None:
        limits["max_conversation_minutes"] = args.max_conversation_minutes
    if limits:
        settings["limits"] = limits
    if args.max_volume is not None:
        settings["audio"] = {"max_volume": args.max_volume}
    if args.history_url is not None:
        settings.setdefault("sync", {})["url"] = args.history_url
    if args.live_base_url is not None:
        settings.setdefault("live", {})["base_url"] = args.live_base_url
    if args.live_ca_file is not None:
        settings.setdefault("live", {})["ca_file"] = args.live_ca_file
    return Request(wifi_ssid=ssid, wifi_password=wifi_password, wifi_interface=args.wifi_interface,
                   country=country, api_key=api_key, check_key=args.check_key,
                   check_timeout_s=args.check_timeout, history_token=token, settings=settings)


def cmd_setup(args: argparse.Namespace) -> int:
    paths = Paths(Path(args.root))
    if paths.root == Path("/") and os.geteuid() != 0:
        print("talkie setup writes to /etc and changes Wi-Fi: run it with sudo "
              "(or --root DIR to write into a folder)", file=sys.stderr)
        return 77
    try:
        req = request_from_args(args)
        if req.wifi_ssid and not req.country and not args.yes:
            print("note: no --country given; the Wi-Fi country stays as it is", file=sys.stderr)
        apply(req, paths)
    except TalkieError as e:
        print(f"talkie setup: {e}", file=sys.stderr)
        return 1
    print("Done. Check everything with: sudo talkie doctor")
    return 0


# --- first boot: talkie-setup.toml on the boot partition -----------------------------------

def request_from_file(data: dict[str, Any]) -> Request:
    """The boot-partition file's sections: [wifi], [gemini], [child], [limits], [audio], [sync]."""
    known = {"wifi", "gemini", "child", "limits", "audio", "sync"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SetupError(f"unknown section [{unknown[0]}]; known: {', '.join(sorted(known))}")
    wifi, gemini = data.get("wifi", {}), data.get("gemini", {})
    settings: dict[str, dict[str, Any]] = {}
    if data.get("child"):
        settings["child"] = dict(data["child"])
    limits = dict(data.get("limits", {}))
    if "quiet_hours" in limits:
        limits["quiet_hours_start"], limits["quiet_hours_end"] = parse_quiet_hours(
            str(limits.pop("quiet_hours")))
    if limits:
        settings["limits"] = limits
    if data.get("audio"):
        settings["audio"] = dict(data["audio"])
    sync = dict(data.get("sync", {}))
    token = sync.pop("token", None)
    if sync:
        settings["sync"] = sync
    key = gemini.get("api_key", "")
    return Request(
        wifi_ssid=str(wifi.get("ssid", "")),
        wifi_password=Secret(str(wifi.get("password", ""))) if wifi.get("ssid") else None,
        country=str(wifi.get("country", "")),
        api_key=check_api_key(str(key)) if key else None,
        history_token=Secret(str(token)) if token else None,
        settings=settings)


def remove_file(path: Path) -> None:
    """Overwrite, then delete. On flash the old blocks may survive: see docs/provisioning.md."""
    try:
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        pass
    path.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def firstboot(boot_dirs: tuple[Path, ...], paths: Paths, say: Any = print) -> int:
    """Apply the first boot-partition setup file found, remove it, leave an error file if bad."""
    for boot in boot_dirs:
        source = boot / FIRSTBOOT_NAME
        if source.exists():
            break
    else:
        say("no talkie-setup.toml on the boot partition: nothing to do")
        return 0
    error_file = source.parent / FIRSTBOOT_ERROR_NAME
    try:
        try:
            data = tomllib.loads(source.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise SetupError(f"{FIRSTBOOT_NAME} is not valid TOML ({e}); compare it with "
                             f"provisioning/talkie-setup.example.toml") from None
        apply(request_from_file(data), paths, say)
    except (TalkieError, OSError) as e:
        message = str(e) if isinstance(e, TalkieError) else f"{e.__class__.__name__}: {e.strerror}"
        remove_file(source)
        say(f"first-boot setup failed: {message}")
        _write_note(error_file,
                    "Talkie could not finish its setup from talkie-setup.toml.\r\n\r\n"
                    f"What went wrong: {message}\r\n\r\n"
                    "The file was deleted anyway, because it held passwords. Write a "
                    "corrected talkie-setup.toml onto this card and start the box again.\r\n",
                    say)
        return 1
    remove_file(source)
    if error_file.exists():
        error_file.unlink()
    say(f"first-boot setup applied; {source} removed")
    return 0


def _write_note(path: Path, text: str, say: Any) -> None:
    """Write-then-rename without chmod: the boot partition is FAT, which has no modes."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        say(f"could not write {path} ({e.strerror}); the reason is in this log only")


def cmd_firstboot(args: argparse.Namespace) -> int:
    boots = tuple(Path(b) for b in args.boot_dir) if args.boot_dir else BOOT_DIRS
    return firstboot(boots, Paths(Path(args.root)))


# --- CLI -----------------------------------------------------------------------------------

def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `setup` and `firstboot`."""
    p = sub.add_parser("setup", help="set up Wi-Fi, the API key and the child's profile",
                       description="Asks what it needs on a terminal; every answer can also be "
                                   "given by a flag. Secrets are read from files or stdin, "
                                   "never echoed.")
    p.add_argument("--wifi-ssid", help="Wi-Fi network name")
    p.add_argument("--wifi-password-file", metavar="FILE", help="file holding the Wi-Fi password")
    p.add_argument("--wifi-password-stdin", action="store_true",
                   help="read the Wi-Fi password from the first line of stdin")
    p.add_argument("--wifi-password", help=argparse.SUPPRESS)  # visible in ps: not recommended
    p.add_argument("--wifi-interface", default="", help="Wi-Fi device, e.g. wlan0 (default: any)")
    p.add_argument("--country", help="Wi-Fi regulatory country, two letters (GB, US, DE...)")
    p.add_argument("--api-key-file", metavar="FILE", help="file holding the Gemini API key")
    p.add_argument("--api-key-stdin", action="store_true",
                   help="read the Gemini API key from the first line of stdin")
    p.add_argument("--check-key", action="store_true",
                   help="connect to the Live API and wait for setupComplete before storing the key")
    p.add_argument("--check-timeout", type=float, default=15.0, metavar="S",
                   help="seconds --check-key waits (default 15)")
    p.add_argument("--live-base-url", help="Live API base URL to write to [live] base_url "
                                           "(a simulator); empty for Google's")
    p.add_argument("--live-ca-file", metavar="PEM", help="certificate to trust for "
                                                        "--live-base-url ([live] ca_file)")
    p.add_argument("--child-name")
    p.add_argument("--child-age", type=int)
    p.add_argument("--child-level", help="a few words on the child, e.g. 'early reader'")
    p.add_argument("--language", help="BCP-47 language, e.g. en-US, de-DE")
    p.add_argument("--quiet-hours", metavar="HH:MM-HH:MM", help="e.g. 19:30-07:00, or 'off'")
    p.add_argument("--daily-budget-minutes", type=int, metavar="N", help="0: no limit")
    p.add_argument("--max-conversation-minutes", type=int, metavar="N", help="0: no limit")
    p.add_argument("--max-volume", type=float, metavar="0..1", help="volume cap, 0.0 to 1.0")
    p.add_argument("--history-url", metavar="URL", help="history server; '' to turn sync off")
    p.add_argument("--history-token-file", metavar="FILE", help="file holding its token")
    p.add_argument("--history-token-stdin", action="store_true")
    p.add_argument("--root", default="/", metavar="DIR", help="write under DIR instead of /")
    p.add_argument("--yes", "-y", action="store_true", help="ask nothing; use the flags only")
    p.add_argument("--non-interactive", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_setup)

    f = sub.add_parser("firstboot", help="apply talkie-setup.toml from the boot partition "
                                         "once, then delete it (run by talkie-firstboot.service)")
    f.add_argument("--boot-dir", action="append", metavar="DIR",
                   help="where to look (default /boot/firmware, then /boot)")
    f.add_argument("--root", default="/", metavar="DIR", help="write under DIR instead of /")
    f.set_defaults(func=cmd_firstboot)


def main(argv: list[str] | None = None) -> int:
    """`python -m device.setup setup|firstboot ...`: works before the full CLI is wired."""
    parser = argparse.ArgumentParser(prog="talkie")
    add_commands(parser.add_subparsers(metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
