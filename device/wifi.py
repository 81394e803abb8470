"""Joining a Wi-Fi network through NetworkManager's `nmcli`, keeping the old one if it fails.

The password never goes into an argv (anyone can read /proc/*/cmdline): the new profile is
added without it, and `nmcli connection up ... passwd-file FILE` reads it from a 0600 file in a
0700 directory on tmpfs (/run), removed right after. NetworkManager stores secrets an agent
supplies for a system-owned profile in its own 0600 keyfile, as `nmcli --ask` does.

What NetworkManager 1.42 prints when activation fails (read from the nmcli binary and nmcli(1)):
exit status 4 "Connection activation failed", with
"Error: Connection activation failed: Secrets were required, but not provided" for a wrong
password (the supplicant's handshake failed, so NM asked for new secrets and got none),
"... The Wi-Fi network could not be found" for an SSID out of range, and exit 3
"Error: Timeout expired (N seconds)" when `--wait` ran out.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from device.config import Secret
from device.errors import TalkieError

log = logging.getLogger(__name__)

PROFILE_PREFIX = "talkie: "
NMCLI_ACTIVATION_FAILED = 4
NMCLI_TIMEOUT = 3
NMCLI_NOT_RUNNING = 8
_COUNTRY = re.compile(r"^[A-Z]{2}$")


class WifiError(TalkieError):
    """Joining the network failed; the message says why and what to do."""


class WrongPasswordError(WifiError):
    """NetworkManager asked for the password again: the one given is wrong."""


@dataclass(frozen=True)
class Connection:
    name: str
    uuid: str
    type: str
    device: str


@dataclass(frozen=True)
class Outcome:
    """What happened: the profile now in use and a sentence for the parent."""
    uuid: str
    message: str


def check_country(code: str) -> str:
    code = code.strip().upper()
    if not _COUNTRY.match(code):
        raise WifiError(f"Wi-Fi country {code!r} is not a two-letter ISO 3166 code; use e.g. "
                        f"GB, US, DE, FR")
    return code


def check_password(password: str) -> None:
    """WPA2/WPA3 personal: 8 to 63 printable ASCII characters, or 64 hex digits."""
    if not password:
        return  # an open network
    if len(password) == 64 and re.fullmatch(r"[0-9A-Fa-f]{64}", password):
        return
    if not 8 <= len(password) <= 63:
        raise WifiError(f"the Wi-Fi password has {len(password)} characters; a WPA password has "
                        f"8 to 63. Check it on the router's label")
    if not all(32 <= ord(c) < 127 for c in password):
        raise WifiError("the Wi-Fi password holds characters a WPA password cannot have "
                        "(only printable ASCII is allowed); check it on the router's label")


class NetworkManager:
    """The few nmcli calls setup needs. `nmcli` is whatever is first on PATH."""

    def __init__(self, nmcli: str | None = None, wait_s: int = 45) -> None:
        found = nmcli or shutil.which("nmcli")
        if not found:
            raise WifiError("nmcli was not found: NetworkManager is needed for Wi-Fi; install "
                            "it with 'sudo apt-get install network-manager'")
        self.nmcli = found
        self.wait_s = wait_s

    def _run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        log.debug("nmcli %s", " ".join(args))
        try:
            done = subprocess.run([self.nmcli, *args], capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise WifiError(f"nmcli {args[0]} did not answer in {timeout:g} s; is NetworkManager "
                            f"running? ('systemctl status NetworkManager')") from None
        if done.returncode == NMCLI_NOT_RUNNING:
            raise WifiError("NetworkManager is not running; start it with "
                            "'sudo systemctl enable --now NetworkManager'")
        return done

    def active_wifi(self) -> Connection | None:
        done = self._run("-t", "-f", "NAME,UUID,TYPE,DEVICE", "connection", "show", "--active")
        if done.returncode != 0:
            return None
        for line in done.stdout.splitlines():
            fields = _split_terse(line)
            if len(fields) == 4 and fields[2] in ("802-11-wireless", "wifi"):
                return Connection(*fields)
        return None

    def profiles_named(self, name: str) -> list[str]:
        done = self._run("-t", "-f", "NAME,UUID", "connection", "show")
        out = []
        for line in done.stdout.splitlines():
            fields = _split_terse(line)
            if len(fields) == 2 and fields[0] == name:
                out.append(fields[1])
        return out

    def add_profile(self, name: str, ssid: str, secured: bool, interface: str = "") -> str:
        args = ["connection", "add", "type", "wifi", "con-name", name, "ssid", ssid,
                "connection.autoconnect", "yes", "connection.autoconnect-priority", "10"]
        if interface:
            args += ["ifname", interface]
        if secured:
            # No psk here: it would be in argv. It comes through passwd-file on activation.
            args += ["wifi-sec.key-mgmt", "wpa-psk"]
        done = self._run(*args)
        m = re.search(r"\(([0-9a-fA-F-]{36})\) successfully added", done.stdout)
        if done.returncode != 0 or not m:
            raise WifiError(f"NetworkManager refused the new Wi-Fi profile: "
                            f"{_first_error(done)}; check the network name")
        return m.group(1)

    def up(self, uuid: str, password: Secret | None) -> None:
        """Activate a profile; WrongPasswordError or WifiError when it does not come up."""
        with _passwd_file(password) as pfile:
            args = ["--wait", str(self.wait_s), "connection", "up", "uuid", uuid]
            if pfile:
                args += ["passwd-file", pfile]
            done = self._run(*args, timeout=self.wait_s + 15)
        if done.returncode == 0:
            return
        text = done.stdout + done.stderr
        if "Secrets were required" in text or "802.1X supplicant" in text:
            raise WrongPasswordError("the Wi-Fi password is wrong (the network refused it)")
        if "could not be found" in text:
            raise WifiError("the Wi-Fi network was not found: check its name (capitals "
                            "count) and that the box is in range")
        if done.returncode == NMCLI_TIMEOUT:
            raise WifiError(f"joining the Wi-Fi network took longer than {self.wait_s} s; move "
                            f"the box closer to the router and try again")
        raise WifiError(f"joining the Wi-Fi network failed: {_first_error(done)}")

    def delete(self, uuid: str) -> None:
        self._run("connection", "delete", "uuid", uuid)

    def connectivity(self) -> str:
        done = self._run("networking", "connectivity", "check", timeout=40)
        return done.stdout.strip() or "unknown"


def set_country(code: str, root: Path) -> str:
    """Set the Wi-Fi regulatory country now and for later boots. A sentence saying how."""
    code = check_country(code)
    # Under a sandbox root, raspi-config would change the running machine: write files instead.
    raspi = shutil.which("raspi-config") if root == Path("/") else None
    if raspi:
        # Raspberry Pi OS: persists it (cfg80211 option + wpa_supplicant) and sets it now.
        subprocess.run([raspi, "nonint", "do_wifi_country", code], capture_output=True,
                       timeout=60, check=False)
        return f"Wi-Fi country {code} set with raspi-config"
    conf = root / "etc/modprobe.d/talkie-wifi-country.conf"
    from device.fileio import atomic_write
    atomic_write(conf, f"# Written by 'talkie setup': the Wi-Fi regulatory domain.\n"
                       f"options cfg80211 ieee80211_regdom={code}\n", mode=0o644)
    iw = shutil.which("iw")
    if iw:
        subprocess.run([iw, "reg", "set", code], capture_output=True, timeout=20, check=False)
    rfkill = shutil.which("rfkill")
    if rfkill:
        # Raspberry Pi OS images keep Wi-Fi soft-blocked until a country is set.
        subprocess.run([rfkill, "unblock", "wifi"], capture_output=True, timeout=20, check=False)
    return f"Wi-Fi country {code} set ({'iw reg set, ' if iw else ''}{conf.name} for next boots)"


def connect(nm: NetworkManager, ssid: str, password: Secret | None, interface: str = "") -> Outcome:
    """Join `ssid`; on any failure go back to the Wi-Fi in use before, and raise."""
    if not ssid or len(ssid.encode()) > 32:
        raise WifiError("the Wi-Fi name (SSID) must be 1 to 32 bytes long")
    check_password(password.reveal() if password else "")
    previous = nm.active_wifi()
    name = PROFILE_PREFIX + ssid
    older = [u for u in nm.profiles_named(name) if not previous or u != previous.uuid]
    uuid = nm.add_profile(name + " (new)", ssid, secured=bool(password), interface=interface)
    try:
        nm.up(uuid, password)
        state = nm.connectivity()
        if state == "none":
            raise WifiError(f"joined '{ssid}' but it reaches nothing (no internet); check the "
                            f"router's connection")
    except WifiError as e:
        nm.delete(uuid)
        if not previous:
            raise
        try:
            nm.up(previous.uuid, None)
        except WifiError as back:
            raise type(e)(f"{e}. The previous Wi-Fi '{previous.name}' did not come back "
                          f"either ({back}); NetworkManager retries it on its own") from None
        raise type(e)(f"{e}. Kept the previous Wi-Fi '{previous.name}'") from None
    # Success: the old talkie profiles for this network go, the new one takes the plain name.
    for old in older:
        nm.delete(old)
    if previous and previous.name == name:
        nm.delete(previous.uuid)
    nm._run("connection", "modify", "uuid", uuid, "connection.id", name)
    note = {"full": "", "portal": " (a login page is in the way: open a browser on this "
                                 "network once)", "limited": " (the internet is not reachable yet)"}
    return Outcome(uuid, f"Wi-Fi '{ssid}' connected{note.get(state, '')}")


class _passwd_file:
    """A 0600 passwd-file in a fresh 0700 directory on tmpfs, removed on exit."""

    def __init__(self, password: Secret | None) -> None:
        self.password = password
        self.dir: str | None = None

    def __enter__(self) -> str | None:
        if not self.password:
            return None
        base = "/run" if os.access("/run", os.W_OK) else None  # RAM, never the SD card
        self.dir = tempfile.mkdtemp(prefix="talkie-wifi-", dir=base)
        path = os.path.join(self.dir, "passwd")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"802-11-wireless-security.psk:{self.password.reveal()}\n")
        return path

    def __exit__(self, *exc: object) -> None:
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def _split_terse(line: str) -> list[str]:
    """nmcli -t fields: ':' separates, '\\:' and '\\\\' are escapes."""
    fields, cur, i = [], [], 0
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line):
            cur.append(line[i + 1])
            i += 2
            continue
        if c == ":":
            fields.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    fields.append("".join(cur))
    return fields


def _first_error(done: subprocess.CompletedProcess[str]) -> str:
    for line in (done.stderr + done.stdout).splitlines():
        if line.startswith("Error:"):
            return line.removeprefix("Error:").strip()
    return f"nmcli exit status {done.returncode}"
