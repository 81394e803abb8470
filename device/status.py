"""The status file the daemon keeps for `talkie status`: `$RUNTIME_DIRECTORY/status.json`
(`/run/talkie/status.json` under systemd).

The daemon owns one `StatusFile` and calls its setters; each rewrites the file atomically
(temp file, fsync, rename, fsync the directory), so a reader never sees half a file. /run is
tmpfs, so a write costs microseconds and is fine on the event loop. Everything that could
carry a secret (error texts) goes through the log Redactor first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from device.fileio import atomic_write

#: How many recent errors the file keeps.
MAX_ERRORS = 10
#: Longest error text kept (characters).
MAX_ERROR_CHARS = 300
STATUS_NAME = "status.json"
DEFAULT_PATH = Path("/run/talkie") / STATUS_NAME


def default_status_path(env: Mapping[str, str] | None = None) -> Path:
    """`$RUNTIME_DIRECTORY/status.json` (first entry if systemd lists several), else
    `/run/talkie/status.json`."""
    env = os.environ if env is None else env
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(runtime) / STATUS_NAME if runtime else DEFAULT_PATH


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat):
    together with the pid it names one process, so a reused pid is not taken for ours."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = raw.rpartition(")")[2].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


@dataclass
class WifiInfo:
    """What the box knows about its Wi-Fi link."""
    ssid: str | None = None
    #: nmcli's 0..100 quality, or None.
    signal_percent: int | None = None
    #: dBm from /proc/net/wireless, or None.
    signal_dbm: float | None = None
    interface: str | None = None
    source: str | None = None


@dataclass
class LiveInfo:
    """Reachability of the Live API, from the session's point of view."""
    last_connect: str | None = None
    last_error: str | None = None
    last_error_at: str | None = None


@dataclass
class Status:
    """The file's content. Times are ISO 8601 UTC strings; `*_s` are seconds."""
    state: str = "booting"
    since: str | None = None
    started: str | None = None
    updated: str | None = None
    uptime_s: float = 0.0
    pid: int = 0
    pid_start_ticks: int | None = None
    last_conversation: str | None = None
    wifi: WifiInfo = field(default_factory=WifiInfo)
    live: LiveInfo = field(default_factory=LiveInfo)
    #: Conversation seconds left today, or None when no budget is set.
    budget_left_s: float | None = None
    errors: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Status:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        wifi = WifiInfo(**{k: v for k, v in (known.pop("wifi", None) or {}).items()
                           if k in WifiInfo.__dataclass_fields__})
        live = LiveInfo(**{k: v for k, v in (known.pop("live", None) or {}).items()
                           if k in LiveInfo.__dataclass_fields__})
        return cls(wifi=wifi, live=live, **known)


class StatusFile:
    """The daemon's side: holds the status and rewrites the file on every change.

    `redact` is applied to every error text (pass the log Redactor). Write failures are
    reported through `on_error` (once per distinct cause), never raised: a full /run must not
    stop the toy."""

    def __init__(self, path: Path | None = None, *, redact: Callable[[str], str] = lambda s: s,
                 on_error: Callable[[OSError], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path or default_status_path()
        self._redact = redact
        self._on_error = on_error
        self._clock = clock
        self._t0 = time.monotonic()
        now = clock()
        pid = os.getpid()
        self.status = Status(since=_iso(now), started=_iso(now), pid=pid,
                             pid_start_ticks=process_start_ticks(pid))
        self._last_error_kind: str | None = None

    def write(self) -> None:
        """Write the file now (the setters call this)."""
        s = self.status
        s.updated = _iso(self._clock())
        s.uptime_s = round(time.monotonic() - self._t0, 1)
        data = json.dumps(asdict(s), indent=1, sort_keys=True).encode() + b"\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, data)  # 0644: readable by a parent despite UMask=0077
        except OSError as e:
            kind = f"{type(e).__name__}:{e.errno}"
            if kind != self._last_error_kind and self._on_error:
                self._on_error(e)
            self._last_error_kind = kind
        else:
            self._last_error_kind = None

    def set_state(self, state: str) -> None:
        state = str(state)  # a State enum or a plain string
        if state != self.status.state:
            self.status.state = state
            self.status.since = _iso(self._clock())
        self.write()

    def conversation_ended(self, at: float | None = None) -> None:
        self.status.last_conversation = _iso(at if at is not None else self._clock())
        self.write()

    def live_connected(self, at: float | None = None) -> None:
        self.status.live.last_connect = _iso(at if at is not None else self._clock())
        self.write()

    def live_failed(self, error: BaseException | str) -> None:
        text = self._clip(str(error) if isinstance(error, str) else
                          f"{type(error).__name__}: {error}")
        self.status.live.last_error = text
        self.status.live.last_error_at = _iso(self._clock())
        self.write()

    def set_budget_left(self, seconds: float | None) -> None:
        self.status.budget_left_s = None if seconds is None else round(seconds, 1)
        self.write()

    def set_wifi(self, wifi: WifiInfo) -> None:
        if wifi != self.status.wifi:
            self.status.wifi = wifi
            self.write()

    def add_error(self, error: BaseException | str) -> None:
        """Append to the bounded list of recent errors (newest last)."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.status.errors.append({"at": _iso(self._clock()) or "", "message": self._clip(text)})
        del self.status.errors[:-MAX_ERRORS]
        self.write()

    def remove(self) -> None:
        """Delete the file at a clean exit, so `talkie status` says "not running"."""
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _clip(self, text: str) -> str:
        text = self._redact(" ".join(text.split()))
        return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 1] + "…"


# --- Wi-Fi ------------------------------------------------------------------------------

def parse_nmcli_wifi(out: str) -> WifiInfo | None:
    """Parse `nmcli -t -f ACTIVE,SSID,SIGNAL,DEVICE device wifi list --rescan no`."""
    for line in out.splitlines():
        # -t escapes ':' in values as '\:'.
        parts = [p.replace("\0", ":") for p in line.replace("\\:", "\0").split(":")]
        if len(parts) >= 3 and parts[0] == "yes":
            signal = int(parts[2]) if parts[2].isdigit() else None
            iface = parts[3] if len(parts) > 3 and parts[3] else None
            return WifiInfo(ssid=parts[1] or None, signal_percent=signal, interface=iface,
                            source="nmcli")
    return None


def parse_proc_wireless(text: str) -> WifiInfo | None:
    """Parse /proc/net/wireless: the first interface's link level in dBm (no SSID there)."""
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        cols = rest.split()
        if len(cols) >= 3:
            try:
                level = float(cols[2].rstrip("."))
            except ValueError:
                continue
            return WifiInfo(interface=name.strip(), signal_dbm=level, source="/proc/net/wireless")
    return None


async def read_wifi(nmcli: str = "nmcli", proc: Path = Path("/proc/net/wireless"),
                    timeout: float = 5.0) -> WifiInfo:
    """Ask nmcli without blocking the loop; fall back to /proc/net/wireless; empty if neither."""
    with contextlib.suppress(OSError, asyncio.TimeoutError):
        p = await asyncio.create_subprocess_exec(
            nmcli, "-t", "-f", "ACTIVE,SSID,SIGNAL,DEVICE", "device", "wifi", "list",
            "--rescan", "no", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, stdin=asyncio.subprocess.DEVNULL)
        try:
            async with asyncio.timeout(timeout):  # not wait_for: 3.11's can swallow a cancel
                out, _ = await p.communicate()
        except (TimeoutError, asyncio.CancelledError):
            # a hung nmcli, or the daemon stopping: leave no child process behind
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await p.wait()
            raise
        if p.returncode == 0:
            info = parse_nmcli_wifi(out.decode(errors="replace"))
            if info:
                return info
    with contextlib.suppress(OSError):
        info = parse_proc_wireless(proc.read_text())
        if info:
            return info
    return WifiInfo()


async def wifi_task(status: StatusFile, every: float = 30.0) -> None:
    """Refresh the Wi-Fi fields every `every` seconds until cancelled."""
    while True:
        status.set_wifi(await read_wifi())
        await asyncio.sleep(every)


# --- said aloud ------------------------------------------------------------------------

def local_address() -> str | None:
    """The box's IPv4 address on its default route, or None when it has no network.

    A UDP socket "connected" to a public address only asks the kernel for the route: nothing
    is sent and nothing listens."""
    import socket
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))   # TEST-NET-1: never really reached
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("0.") else address


def spoken_status(status: Status, address: str | None) -> str:
    """What the box says on a very long press, for a parent standing next to it: short
    sentences espeak-ng reads well, the most useful first."""
    said = [f"Talkie is {status.state}."]
    wifi = status.wifi
    if wifi.ssid:
        signal = f", signal {wifi.signal_percent} percent" if wifi.signal_percent is not None \
            else ""
        said.append(f"Wi-Fi {wifi.ssid}{signal}.")
    else:
        said.append("No Wi-Fi network.")
    said.append(f"Address {address.replace('.', ' dot ')}." if address else "No address.")
    live = status.live
    if live.last_error and (not live.last_connect or (live.last_error_at or "") > live.last_connect):
        said.append(f"The Live API failed: {live.last_error}.")
    elif live.last_connect:
        said.append("The Live API answered.")
    if status.budget_left_s is not None:
        said.append(f"{round(status.budget_left_s / 60)} minutes of talk left today.")
    if status.errors:
        said.append(f"Last problem: {status.errors[-1]['message']}.")
    return " ".join(said)


# --- reading ----------------------------------------------------------------------------

@dataclass
class StatusReport:
    """What `talkie status` shows: the file's content and whether its writer still runs."""
    path: Path
    running: bool
    reason: str
    status: Status | None


def _alive(pid: int, start_ticks: int | None) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by the talkie user
    if start_ticks is not None:
        now = process_start_ticks(pid)
        if now is not None and now != start_ticks:
            return False  # the pid was reused by another process
    return True


def read_status(path: Path | None = None) -> StatusReport:
    """Read the status file and check that the daemon that wrote it is alive."""
    path = path or default_status_path()
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return StatusReport(path, False, f"no status file at {path}", None)
    except OSError as e:
        return StatusReport(path, False, f"cannot read {path}: {e.strerror}", None)
    try:
        status = Status.from_dict(json.loads(raw))
    except (ValueError, TypeError) as e:
        return StatusReport(path, False, f"{path} is not a valid status file ({e})", None)
    if not _alive(status.pid, status.pid_start_ticks):
        return StatusReport(path, False,
                            f"the daemon that wrote {path} (pid {status.pid}) has exited",
                            status)
    return StatusReport(path, True, "running", status)
