"""The config file: what a parent or the setup script writes, and what the daemon refuses."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from device.config import (Config, ConfigError, MissingApiKeyError, Secret, documented_keys,
                           load, load_api_key, loads, require_api_key)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "provisioning" / "config.example.toml"


def test_example_file_loads_and_documents_every_key():
    cfg = load(EXAMPLE)
    assert cfg == Config(), "the example must show the defaults"
    text = EXAMPLE.read_text()
    data = tomllib.loads(text)
    written = {f"{s}.{k}" for s, keys in data.items() for k in keys}
    assert written == set(documented_keys()), "every key, and only real keys, in the example"
    for key in documented_keys():
        section, name = key.split(".")
        # Each key has a comment line right above it.
        assert re.search(rf"#[^\n]*\n{name} =", text), f"{key} lacks a comment in the example"


def test_unknown_key_names_key_and_line():
    text = "[child]\nname = 'Mia'\nnmae = 'x'\n"
    with pytest.raises(ConfigError) as e:
        loads(text, source="c.toml")
    msg = str(e.value)
    assert "c.toml:3" in msg and "child.nmae" in msg and "known keys" in msg


def test_unknown_section():
    with pytest.raises(ConfigError, match=r"c.toml:1: unknown section 'chlid'"):
        loads("[chlid]\nname = 'x'\n", source="c.toml")


def test_wrong_type_names_key_and_fix():
    with pytest.raises(ConfigError) as e:
        loads("[child]\nage = 'six'\n", source="c.toml")
    assert "c.toml:2" in str(e.value) and "'child.age' must be a whole number" in str(e.value)
    assert "age = 3" in str(e.value)


def test_out_of_range_and_choices():
    with pytest.raises(ConfigError, match="between 2 and 14"):
        loads("[child]\nage = 40\n")
    with pytest.raises(ConfigError, match="use one of 'sounddevice', 'files'"):
        loads("[audio]\nbackend = 'alsa'\n")


def test_int_accepted_for_float_but_not_bool_for_int():
    assert loads("[audio]\nvolume = 1\n").audio.volume == 1.0
    with pytest.raises(ConfigError):
        loads("[child]\nage = true\n")


def test_bad_toml_syntax_is_one_clear_error():
    with pytest.raises(ConfigError, match="not valid TOML"):
        loads("[child\nname=1")


def test_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(ConfigError, match="talkie setup"):
        load(tmp_path / "nope.toml")


def test_api_key_from_credential_first(tmp_path):
    (tmp_path / "gemini-api-key").write_text("cred-key\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path), "GEMINI_API_KEY": "env-key"}
    assert load_api_key(env).reveal() == "cred-key"
    assert load_api_key({"GEMINI_API_KEY": "env-key"}).reveal() == "env-key"
    assert load_api_key({}) is None
    with pytest.raises(MissingApiKeyError, match="GEMINI_API_KEY"):
        require_api_key({})


def test_secret_never_shows_itself():
    s = Secret("AIzaSECRETSECRET")
    assert "SECRET" not in repr(s) and "SECRET" not in str(s) and "SECRET" not in f"{s}"
    assert "SECRET" not in repr([s])


def _talkie(*args, env=None):
    return subprocess.run([sys.executable, "-m", "device", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=env)


@pytest.mark.parametrize("body,needle", [
    ("[child]\ncolour = 'red'\n", "child.colour"),
    ("[live]\nconnect_timeout_s = 'soon'\n", "live.connect_timeout_s"),
])
def test_run_with_bad_config_exits_78_with_one_line(tmp_path, body, needle):
    cfg = tmp_path / "config.toml"
    cfg.write_text(body)
    r = _talkie("run", "--config", str(cfg))
    assert r.returncode == 78
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and str(cfg) in lines[0]


def test_run_against_real_api_without_key_exits_78(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text("[child]\nname = 'Mia'\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    r = _talkie("run", "--config", str(cfg), env=env)
    assert r.returncode == 78
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "GEMINI_API_KEY" in lines[0] and "gemini-api-key" in lines[0]
