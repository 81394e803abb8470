#!/bin/bash
# Install Talkie on Raspberry Pi OS (Bookworm, Trixie) or Debian 12/13, from this checkout.
#
#   sudo provisioning/install.sh            install or update (safe to run again)
#   provisioning/install.sh --dry-run       print each action, change nothing
#   provisioning/install.sh --root DIR      write files under DIR (tests, image builds): no apt,
#                                           no user, no venv; units enabled with systemctl --root
#
# What it does: apt packages; a `talkie` system user in groups audio and gpio (gpio created
# if the OS has none, as plain Debian); a venv in /opt/talkie (with the system's site packages,
# so Debian's python3-lgpio and python3-systemd are used as they are); /etc/talkie (0755) and
# /etc/talkie/credentials (0700 root); the systemd units, enabled.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DRY_RUN=0
ROOT=""
PREFIX=/opt/talkie

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --root) ROOT=${2:?--root needs a directory}; shift ;;
        --root=*) ROOT=${1#--root=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -n "$ROOT" ]; then
    ROOT=$(cd "$ROOT" && pwd)
fi

say() { printf '==> %s\n' "$*"; }

# run CMD...: print it; run it unless --dry-run.
run() {
    printf '    %s\n' "$*"
    if [ "$DRY_RUN" -eq 0 ]; then
        "$@"
    fi
}

if [ "$DRY_RUN" -eq 0 ] && [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run it as root: sudo $0 (or --dry-run to see what it would do)" >&2
    exit 77
fi

# --- apt ---------------------------------------------------------------------------------
APT_PACKAGES=(python3 python3-venv python3-dev python3-systemd libportaudio2 libsystemd-dev
              pkg-config gcc network-manager iw alsa-utils)
# Present on Raspberry Pi OS and newer Debian only; optional elsewhere.
OPTIONAL_PACKAGES=(python3-lgpio espeak-ng)

apt_has() { apt-cache show "$1" >/dev/null 2>&1; }

install_packages() {
    say "System packages"
    local pkgs=("${APT_PACKAGES[@]}") p
    for p in "${OPTIONAL_PACKAGES[@]}"; do
        if apt_has "$p"; then
            pkgs+=("$p")
        else
            printf '    (skipping %s: not in this release'"'"'s archive)\n' "$p"
        fi
    done
    run apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
}

# --- user ----------------------------------------------------------------------------------
create_user() {
    say "The talkie system user (groups audio, gpio)"
    if ! getent group gpio >/dev/null; then
        run groupadd --system gpio
    fi
    if ! getent group audio >/dev/null; then
        run groupadd --system audio
    fi
    if ! id talkie >/dev/null 2>&1; then
        run useradd --system --user-group --home-dir /var/lib/talkie --no-create-home \
            --shell /usr/sbin/nologin --comment "Talkie voice box" talkie
    fi
    run usermod -a -G audio,gpio talkie
}

# --- files ---------------------------------------------------------------------------------
install_files() {
    say "Configuration directories"
    run install -d -m 0755 "$ROOT/etc/talkie"
    run install -d -m 0700 "$ROOT/etc/talkie/credentials"
    if [ -z "$ROOT" ] && [ "$(id -u)" -eq 0 ]; then
        run chown root:root "$ROOT/etc/talkie/credentials"
    fi
    if [ ! -e "$ROOT/etc/talkie/config.toml" ]; then
        run install -m 0640 "$SRC/provisioning/config.example.toml" "$ROOT/etc/talkie/config.toml"
        if getent group talkie >/dev/null && [ -z "$ROOT" ]; then
            run chgrp talkie "$ROOT/etc/talkie/config.toml"
        fi
    else
        printf '    (keeping the existing %s)\n' "$ROOT/etc/talkie/config.toml"
    fi
}

install_venv() {
    say "Python environment in $PREFIX"
    if [ ! -x "$PREFIX/bin/python" ]; then
        run python3 -m venv --system-site-packages "$PREFIX"
    fi
    run "$PREFIX/bin/python" -m pip install -q --upgrade pip
    # [aec]: the WebRTC echo canceller for voice barge-in (aarch64 wheels; off unless configured)
    run "$PREFIX/bin/python" -m pip install -q --upgrade "${SRC}[aec]"
    run install -d -m 0755 "$PREFIX/share/docs"
    local doc
    for doc in "$SRC"/docs/*.md; do
        [ -e "$doc" ] && run install -m 0644 "$doc" "$PREFIX/share/docs/"
    done
    return 0
}

install_units() {
    say "systemd units"
    local unit units=()
    run install -d -m 0755 "$ROOT/etc/systemd/system"
    for unit in "$SRC"/systemd/*.service; do
        [ -e "$unit" ] || continue
        run install -m 0644 "$unit" "$ROOT/etc/systemd/system/"
        units+=("$(basename "$unit")")
    done
    if [ "${#units[@]}" -eq 0 ]; then
        echo "    (no unit files in $SRC/systemd)"
        return 0
    fi
    if [ -n "$ROOT" ]; then
        run systemctl --root="$ROOT" enable "${units[@]}"
    else
        run systemctl daemon-reload
        run systemctl enable "${units[@]}"
    fi
}

if [ -z "$ROOT" ]; then
    install_packages
    create_user
else
    say "Under --root $ROOT: apt, the user and the venv are left out"
fi
install_files
if [ -z "$ROOT" ]; then
    install_venv
fi
install_units

say "Done. Next: sudo $PREFIX/bin/talkie setup   (then: sudo $PREFIX/bin/talkie doctor)"
