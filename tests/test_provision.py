"""talkie setup / firstboot / doctor and install.sh, run as a parent would, into a sandbox root.

Wi-Fi goes through a stand-in `nmcli` first on PATH: it records every call (argv) to a file,
reads the password from the passwd-file the way nmcli does, and fails exactly as
NetworkManager 1.42 does on a wrong password (exit 4, "Secrets were required, but not
provided"). A stand-in `iw` keeps the host's regulatory domain untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from device.config import load
from tests.leak_scan import allow_secret_in

REPO = Path(__file__).resolve().parents[1]
API_KEY = "AIza" "SyD-test-key-0123456789abcdefghijkl"
WIFI_PASSWORD = "correct horse battery"
TOKEN = "history-token-s3cret-value"
assert len(API_KEY) == 39

FAKE_NMCLI = r'''#!/usr/bin/env python3
import json, os, sys
state_path = os.environ["FAKE_NM_STATE"]
state = json.load(open(state_path))
args = sys.argv[1:]
with open(state_path + ".calls", "a") as f:
    f.write(json.dumps(args) + "\n")
def save():
    json.dump(state, open(state_path, "w"))
while args and args[0] in ("-t", "-f", "--wait"):
    args = args[2:] if args[0] in ("-f", "--wait") else args[1:]
    if args and args[0] in ("NAME,UUID,TYPE,DEVICE", "NAME,UUID"):
        args = args[1:]
if args[:3] == ["connection", "show", "--active"]:
    for c in state["profiles"]:
        if c["uuid"] == state["active"]:
            print(f'{c["name"]}:{c["uuid"]}:802-11-wireless:wlan0')
    sys.exit(0)
if args[:2] == ["connection", "show"]:
    for c in state["profiles"]:
        print(f'{c["name"]}:{c["uuid"]}')
    sys.exit(0)
if args[:2] == ["connection", "add"]:
    kv = dict(zip(args[2::2], args[3::2]))
    uuid = "%08d-0000-4000-8000-000000000000" % (len(state["profiles"]) + 1)
    uuid = uuid[:36]
    state["profiles"].append({"name": kv["con-name"], "uuid": uuid, "ssid": kv["ssid"]})
    save()
    print(f"Connection '{kv['con-name']}' ({uuid}) successfully added.")
    sys.exit(0)
if args[:2] == ["connection", "up"]:
    uuid = args[3]
    prof = next(c for c in state["profiles"] if c["uuid"] == uuid)
    psk = None
    if "passwd-file" in args:
        for line in open(args[args.index("passwd-file") + 1]):
            if line.startswith("802-11-wireless-security.psk:"):
                psk = line.split(":", 1)[1].rstrip("\n")
    if prof.get("ssid") == state["ssid"] and psk is not None and psk != state["password"]:
        state["active"] = None
        save()
        print("Error: Connection activation failed: Secrets were required, but not provided.",
              file=sys.stderr)
        print(f"Hint: use 'journalctl -xe NM_CONNECTION={uuid} + NM_DEVICE=wlan0' to get more "
              "details.", file=sys.stderr)
        sys.exit(4)
    state["active"] = uuid
    save()
    print(f"Connection successfully activated (D-Bus active path: "
          f"/org/freedesktop/NetworkManager/ActiveConnection/7)")
    sys.exit(0)
if args[:2] == ["connection", "delete"]:
    state["profiles"] = [c for c in state["profiles"] if c["uuid"] != args[3]]
    save()
    sys.exit(0)
if args[:2] == ["connection", "modify"]:
    for c in state["profiles"]:
        if c["uuid"] == args[3]:
            c["name"] = args[5]
    save()
    sys.exit(0)
if args[:3] == ["networking", "connectivity", "check"]:
    print("full")
    sys.exit(0)
print(f"Error: unexpected call {args}", file=sys.stderr)
sys.exit(2)
'''

FAKE_IW = '#!/bin/sh\necho "$(basename "$0") $*" >> "$FAKE_NM_STATE.iw"\n'


@pytest.fixture
def sandbox(tmp_path: Path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("nmcli", FAKE_NMCLI), ("iw", FAKE_IW), ("rfkill", FAKE_IW)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    state = tmp_path / "nm.json"
    state.write_text(json.dumps({
        "ssid": "Home", "password": WIFI_PASSWORD, "active": "old-uuid-0000",
        "profiles": [{"name": "Neighbours", "uuid": "old-uuid-0000", "ssid": "Neighbours"}]}))
    allow_secret_in(state)  # the fake NetworkManager's own store of the network's password
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_NM_STATE=str(state),
               PYTHONPATH=str(REPO))
    env.pop("GEMINI_API_KEY", None)
    root = tmp_path / "root"
    root.mkdir()
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    for name, value in (("wifi", WIFI_PASSWORD), ("token", TOKEN)):
        (secrets / name).write_text(value + "\n")
        (secrets / name).chmod(0o600)  # as a parent keeps them
    return {"root": root, "env": env, "state": state, "secrets": secrets, "tmp": tmp_path}


def talkie(sb: dict, *args: str, stdin: str = "", module: str = "device.setup") \
        -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], input=stdin, text=True,
                          capture_output=True, env=sb["env"], cwd=REPO, timeout=60)


def calls(sb: dict) -> list[list[str]]:
    path = Path(str(sb["state"]) + ".calls")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def all_files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_setup_writes_every_file_with_its_mode_and_no_secret_leaks(sandbox):
    sb = sandbox
    done = talkie(sb, "setup", "--root", str(sb["root"]), "--yes",
                  "--wifi-ssid", "Home", "--wifi-password-file", str(sb["secrets"] / "wifi"),
                  "--country", "gb", "--api-key-stdin",
                  "--child-name", "Mia", "--child-age", "6", "--child-level", "loves frogs",
                  "--language", "en-GB", "--quiet-hours", "19:30-07:00",
                  "--daily-budget-minutes", "45", "--max-conversation-minutes", "15",
                  "--max-volume", "0.7", "--history-url", "https://h.example.org",
                  "--history-token-file", str(sb["secrets"] / "token"),
                  stdin=API_KEY + "\n")
    assert done.returncode == 0, done.stderr
    assert "Wi-Fi 'Home' connected" in done.stdout

    root = sb["root"]
    cred = root / "etc/talkie/credentials/gemini-api-key"
    assert cred.read_text() == API_KEY + "\n"
    assert stat.S_IMODE(cred.stat().st_mode) == 0o600
    assert stat.S_IMODE(cred.parent.stat().st_mode) == 0o700
    config = root / "etc/talkie/config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    token = root / "etc/talkie/history-token"
    assert token.read_text() == TOKEN + "\n" and stat.S_IMODE(token.stat().st_mode) == 0o640
    if os.geteuid() == 0:
        assert cred.stat().st_uid == 0 and cred.stat().st_gid == 0
    country = root / "etc/modprobe.d/talkie-wifi-country.conf"
    assert "ieee80211_regdom=GB" in country.read_text()
    assert Path(str(sb["state"]) + ".iw").read_text().splitlines() == \
        ["iw reg set GB", "rfkill unblock wifi"]

    cfg = load(config)
    assert (cfg.child.name, cfg.child.age, cfg.child.level, cfg.child.language) == \
        ("Mia", 6, "loves frogs", "en-GB")
    assert (cfg.limits.quiet_hours_start, cfg.limits.quiet_hours_end) == ("19:30", "07:00")
    assert cfg.limits.daily_budget_minutes == 45 and cfg.limits.max_conversation_minutes == 15
    assert cfg.audio.max_volume == 0.7
    assert cfg.sync.url == "https://h.example.org"
    assert cfg.sync.token_file == "/etc/talkie/history-token"

    # The new profile is active under its plain name; the password went only through a file.
    state = json.loads(sb["state"].read_text())
    active = next(c for c in state["profiles"] if c["uuid"] == state["active"])
    assert active["name"] == "talkie: Home"
    argv_text = json.dumps(calls(sb))
    for secret in (API_KEY, WIFI_PASSWORD, TOKEN):
        assert secret not in done.stdout + done.stderr
        assert secret not in argv_text
    leaks = [p for p, data in all_files(root).items()
             if any(s.encode() in data for s in (API_KEY, WIFI_PASSWORD))]
    assert leaks == [cred]
    # The passwd-file nmcli read is gone.
    up = next(c for c in calls(sb) if "up" in c)
    assert not Path(up[up.index("passwd-file") + 1]).exists()

    # Running it again with only a new age keeps everything else (idempotent, merged).
    again = talkie(sb, "setup", "--root", str(root), "--yes", "--child-age", "7")
    assert again.returncode == 0, again.stderr
    cfg = load(config)
    assert (cfg.child.name, cfg.child.age, cfg.limits.daily_budget_minutes) == ("Mia", 7, 45)


def test_wrong_wifi_password_rolls_back_to_the_previous_network(sandbox):
    sb = sandbox
    bad = sb["secrets"] / "bad"
    bad.write_text("not the password\n")
    done = talkie(sb, "setup", "--root", str(sb["root"]), "--yes", "--wifi-ssid", "Home",
                  "--wifi-password-file", str(bad))
    assert done.returncode == 1
    assert "Wi-Fi password is wrong" in done.stderr
    assert "Kept the previous Wi-Fi 'Neighbours'" in done.stderr
    assert "not the password" not in done.stdout + done.stderr
    state = json.loads(sb["state"].read_text())
    assert state["active"] == "old-uuid-0000"
    assert [c["name"] for c in state["profiles"]] == ["Neighbours"]  # the trial profile is gone
    made = calls(sb)
    assert ["connection", "up", "uuid", "old-uuid-0000"] == made[-1][2:] or \
        made[-1][-4:] == ["connection", "up", "uuid", "old-uuid-0000"]
    assert "not the password" not in json.dumps(made)
    assert not (sb["root"] / "etc/talkie/config.toml").exists() or \
        "not the password" not in (sb["root"] / "etc/talkie/config.toml").read_text()


@pytest.mark.parametrize("key, words", [
    ("AIza-too-short", "39 characters"),
    ('"' + API_KEY[:-2] + '"', "quote"),
    (API_KEY[:20] + " " + API_KEY[20:38], "spaces"),
    ("sk-" + "x" * 36, "starts differently"),
])
def test_bad_api_keys_are_refused_without_echoing_them(sandbox, key, words):
    done = talkie(sandbox, "setup", "--root", str(sandbox["root"]), "--yes", "--api-key-stdin",
                  stdin=key + "\n")
    assert done.returncode == 1 and words in done.stderr
    assert key.strip('"') not in done.stderr
    assert not (sandbox["root"] / "etc/talkie/credentials/gemini-api-key").exists()


def test_bad_settings_fail_before_anything_is_written(sandbox):
    done = talkie(sandbox, "setup", "--root", str(sandbox["root"]), "--yes",
                  "--quiet-hours", "7pm-7am")
    assert done.returncode == 1 and "HH:MM-HH:MM" in done.stderr
    done = talkie(sandbox, "setup", "--root", str(sandbox["root"]), "--yes",
                  "--max-volume", "3", "--wifi-ssid", "Home",
                  "--wifi-password-file", str(sandbox["secrets"] / "wifi"))
    assert done.returncode == 1 and "max_volume" in done.stderr and "between" in done.stderr
    assert calls(sandbox) == []  # Wi-Fi untouched: the typo is caught first
    assert not any(sandbox["root"].rglob("*.toml"))


def test_firstboot_applies_the_boot_file_then_removes_it(sandbox):
    sb = sandbox
    boot = sb["tmp"] / "boot-firmware"
    boot.mkdir()
    (boot / "talkie-setup.toml").write_text(f'''
[wifi]
ssid = "Home"
password = "{WIFI_PASSWORD}"
country = "DE"
[gemini]
api_key = "{API_KEY}"
[child]
name = "Ben"
age = 5
[limits]
quiet_hours = "20:00-06:30"
[sync]
url = "https://h.example.org"
token = "{TOKEN}"
''')
    done = talkie(sb, "firstboot", "--boot-dir", str(boot), "--root", str(sb["root"]))
    assert done.returncode == 0, done.stderr
    assert not (boot / "talkie-setup.toml").exists()
    assert not (boot / "talkie-setup.error.txt").exists()
    cfg = load(sb["root"] / "etc/talkie/config.toml")
    assert (cfg.child.name, cfg.limits.quiet_hours_end, cfg.sync.url) == \
        ("Ben", "06:30", "https://h.example.org")
    assert (sb["root"] / "etc/talkie/credentials/gemini-api-key").read_text().strip() == API_KEY
    for secret in (API_KEY, WIFI_PASSWORD, TOKEN):
        assert secret not in done.stdout + done.stderr


def test_firstboot_error_leaves_a_readable_note_and_no_secrets(sandbox):
    sb = sandbox
    boot = sb["tmp"] / "boot"
    boot.mkdir()
    (boot / "talkie-setup.toml").write_text(
        '[wifi]\nssid = "Home"\npassword = "wrong password"\n[child]\nname = "Ben"\n')
    done = talkie(sb, "firstboot", "--boot-dir", str(boot), "--root", str(sb["root"]))
    assert done.returncode == 1
    assert not (boot / "talkie-setup.toml").exists()
    note = (boot / "talkie-setup.error.txt").read_text()
    assert "Wi-Fi password is wrong" in note and "wrong password" not in note
    assert json.loads(sb["state"].read_text())["active"] == "old-uuid-0000"


def test_doctor_reports_each_failure_with_its_fix(sandbox):
    sb = sandbox
    bad = sb["tmp"] / "bad-root"
    (bad / "etc/talkie").mkdir(parents=True)
    (bad / "etc/talkie/config.toml").write_text('[child]\nage = "six"\n')
    done = talkie(sb, "doctor", "--root", str(bad), "--skip", "network,live-api,clock,gpio",
                  module="device.doctor")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    config_line = next(i for i, line in enumerate(lines) if line.startswith("✗ config"))
    assert "child.age" in lines[config_line] and lines[config_line + 1].startswith("  fix:")
    cred_line = next(i for i, line in enumerate(lines) if line.startswith("✗ credential"))
    assert "no API key" in lines[cred_line] and "talkie setup" in lines[cred_line + 1]
    assert any(line.startswith("✓ disk") for line in lines)

    nomic = sb["tmp"] / "nomic-root"
    (nomic / "etc/talkie/credentials").mkdir(parents=True)
    (nomic / "etc/talkie/config.toml").write_text('[audio]\ninput = "no-such-microphone"\n')
    cred = nomic / "etc/talkie/credentials/gemini-api-key"
    cred.write_text(API_KEY + "\n")
    cred.chmod(0o644)
    allow_secret_in(cred)  # readable by all on purpose: doctor must say so
    done = talkie(sb, "doctor", "--root", str(nomic), "--json",
                  "--skip", "network,live-api,clock,gpio,service,audio-output",
                  module="device.doctor")
    assert done.returncode == 1
    report = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert report["config"]["ok"] is True
    assert not report["audio-input"]["ok"] and report["audio-input"]["fix"]
    assert not report["credential"]["ok"] and "chmod 600" in report["credential"]["fix"]
    assert API_KEY not in done.stdout


def test_doctor_check_that_hangs_is_reported_and_the_rest_still_run(tmp_path):
    import device.doctor as doctor

    def hangs(box):
        import time
        time.sleep(5)
        return "never"

    box = doctor.Box(tmp_path, tmp_path / "config.toml")
    slow = doctor.run_one("slow", hangs, 0.2, box)
    assert not slow.ok and "no answer within 0.2 s" in slow.detail
    disk = doctor.run_one("disk", doctor.check_disk, 5, box)
    assert disk.ok


def test_every_shell_script_is_bash_n_and_shellcheck_clean():
    scripts = [p for p in REPO.rglob("*") if p.is_file() and ".git" not in p.parts
               and ".venv" not in p.parts and p.read_bytes()[:2] == b"#!"
               and b"sh" in p.read_bytes().split(b"\n", 1)[0]]
    assert REPO / "provisioning/install.sh" in scripts
    for script in scripts:
        shell = "bash" if b"bash" in script.read_bytes().split(b"\n", 1)[0] else "sh"
        subprocess.run([shell, "-n", str(script)], check=True)
    done = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_install_dry_run_prints_every_action_and_changes_nothing(tmp_path):
    done = subprocess.run(["bash", str(REPO / "provisioning/install.sh"), "--dry-run"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for action in ("apt-get install", "libportaudio2", "useradd --system",
                   "usermod -a -G audio,gpio",
                   "install -d -m 0700 /etc/talkie/credentials", "venv --system-site-packages",
                   "systemctl enable"):
        assert action in done.stdout
    assert not Path("/opt/talkie").exists() or Path("/opt/talkie/bin/python").exists()


def test_install_into_a_root_is_idempotent(tmp_path):
    if not shutil.which("systemctl"):
        pytest.fail("systemctl is needed (apt install systemd)")
    for _ in range(2):
        done = subprocess.run(["bash", str(REPO / "provisioning/install.sh"), "--root",
                               str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    creds = tmp_path / "etc/talkie/credentials"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    assert load(tmp_path / "etc/talkie/config.toml")
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants/talkie-firstboot.service"
    assert wants.is_symlink()  # points at /etc/... as seen from inside the root


# --- --check-key against a real TLS WebSocket server on loopback ------------------------------

@pytest.fixture
def live_server(tmp_path: Path):
    """A loopback wss:// server that answers setup like the Live API (or not, per `mode`)."""
    import asyncio
    import datetime
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from websockets.asyncio.server import serve
    from websockets.http11 import Response
    from websockets.datastructures import Headers
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_pem = tmp_path / "live.pem"
    key_pem = tmp_path / "live.key"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_pem, key_pem)
    info: dict = {"mode": "ok", "keys": []}

    def check_key(conn, request):
        info["keys"].append(request.headers.get("x-goog-api-key"))
        if request.headers.get("x-goog-api-key") != API_KEY:
            return Response(403, "Forbidden", Headers(), b"API key not valid")
        return None

    async def handler(ws):
        await ws.recv()  # the setup message
        if info["mode"] == "silent":
            await ws.wait_closed()  # never answers; the client gives up
            return
        await ws.send(json.dumps({"setupComplete": {}}))
        try:
            await ws.recv()
        except Exception:
            pass

    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def main():
        info["stop"] = asyncio.get_running_loop().create_future()
        async with serve(handler, "127.0.0.1", 0, ssl=ctx, process_request=check_key) as server:
            info["port"] = server.sockets[0].getsockname()[1]
            started.set()
            await info["stop"]

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10)
    info["url"] = f"https://127.0.0.1:{info['port']}"
    info["ca"] = str(cert_pem)
    yield info
    loop.call_soon_threadsafe(info["stop"].set_result, None)
    thread.join(10)
    loop.close()


def test_check_key_waits_for_setup_complete_then_stores_the_key(sandbox, live_server):
    done = talkie(sandbox, "setup", "--root", str(sandbox["root"]), "--yes", "--api-key-stdin",
                  "--check-key", "--live-base-url", live_server["url"],
                  "--live-ca-file", live_server["ca"], stdin=API_KEY + "\n")
    assert done.returncode == 0, done.stderr
    assert "The Live API accepted the key" in done.stdout
    assert live_server["keys"] == [API_KEY]  # the key travelled in the header, not the output
    assert API_KEY not in done.stdout + done.stderr
    assert (sandbox["root"] / "etc/talkie/credentials/gemini-api-key").exists()


def test_check_key_refused_or_silent_stores_nothing(sandbox, live_server):
    other = "AIza" + "Q" * 35
    done = talkie(sandbox, "setup", "--root", str(sandbox["root"]), "--yes", "--api-key-stdin",
                  "--check-key", "--live-base-url", live_server["url"],
                  "--live-ca-file", live_server["ca"], stdin=other + "\n")
    assert done.returncode == 1
    assert "API key was not stored" in done.stderr and "403" in done.stderr
    assert other not in done.stdout + done.stderr
    live_server["mode"] = "silent"
    done = talkie(sandbox, "setup", "--root", str(sandbox["root"]), "--yes", "--api-key-stdin",
                  "--check-key", "--check-timeout", "2", "--live-base-url", live_server["url"],
                  "--live-ca-file", live_server["ca"], stdin=API_KEY + "\n")
    assert done.returncode == 1 and "no setupComplete" in done.stderr
    assert not (sandbox["root"] / "etc/talkie/credentials/gemini-api-key").exists()


def test_interactive_setup_on_a_terminal_never_shows_the_secrets(sandbox):
    """A parent at a terminal: typed names echo, the password and the key do not."""
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal, as over SSH
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "device.setup", "setup",
                                   "--root", str(sandbox["root"])], sandbox["env"])
    seen = b""

    def expect(text: bytes, answer: str) -> None:
        nonlocal seen
        deadline = time.monotonic() + 30
        while text not in seen:
            assert time.monotonic() < deadline, f"no prompt {text!r}; got {seen[-300:]!r}"
            if select.select([fd], [], [], 1)[0]:
                seen += os.read(fd, 4096)
        seen = seen.replace(text, b"<" + text + b">", 1)
        os.write(fd, answer.encode() + b"\r")

    expect(b"Wi-Fi name", "Home")
    expect(b"Wi-Fi password", WIFI_PASSWORD)
    expect(b"Wi-Fi country", "GB")
    expect(b"Gemini API key", API_KEY)
    expect(b"first name", "Mia")
    expect(b"age", "6")
    deadline = time.monotonic() + 60
    while True:
        try:
            chunk = os.read(fd, 4096) if select.select([fd], [], [], 1)[0] else b""
        except OSError:  # the child closed the terminal
            break
        seen += chunk
        if b"Done." in seen or time.monotonic() > deadline:
            break
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen.decode(errors="replace")
    assert b"Mia" in seen  # input() echoes
    assert WIFI_PASSWORD.encode() not in seen and API_KEY.encode() not in seen
    assert load(sandbox["root"] / "etc/talkie/config.toml").child.name == "Mia"
    cred = sandbox["root"] / "etc/talkie/credentials/gemini-api-key"
    assert cred.read_text().strip() == API_KEY


def test_firstboot_unit_passes_systemd_analyze_verify(tmp_path):
    unit = (REPO / "systemd/talkie-firstboot.service").read_text()
    assert "ConditionPathExists=|/boot/firmware/talkie-setup.toml" in unit
    assert "Before=talkie.service" in unit
    # verify checks that ExecStart exists: point it at this Python instead of /opt/talkie's.
    copy = tmp_path / "talkie-firstboot.service"
    copy.write_text(unit.replace("/opt/talkie/bin/python", sys.executable))
    done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                          text=True, timeout=60)
    problems = [line for line in done.stderr.splitlines() if "talkie-firstboot" in line]
    assert done.returncode == 0 and not problems, done.stderr


def test_doctor_live_check_passes_against_a_live_protocol_server(sandbox, live_server):
    root = sandbox["tmp"] / "good-root"
    (root / "etc/talkie/credentials").mkdir(parents=True)
    (root / "etc/talkie/config.toml").write_text(
        f'[live]\nbase_url = "{live_server["url"]}"\nca_file = "{live_server["ca"]}"\n')
    cred = root / "etc/talkie/credentials/gemini-api-key"
    cred.write_text(API_KEY + "\n")
    cred.chmod(0o600)
    done = talkie(sandbox, "doctor", "--root", str(root), "--skip",
                  "credential,audio-input,audio-output,gpio,network,clock,disk,service",
                  module="device.doctor")
    assert done.returncode == 0, done.stdout
    assert "✓ live-api" in done.stdout and "setupComplete after" in done.stdout
    assert live_server["keys"] == [API_KEY] and API_KEY not in done.stdout
