"""Fuzzing what comes from outside the box's code: the config file a parent writes, WAV and
PCM audio of any shape, and the history server's sync API and login over real HTTP.

Every property is the project's rule for bad input: a clear error of our own kind (naming the
problem), or a correct result; never another exception, a crash, a 500, or a secret in the
message. Bounded (derandomized, a fixed number of examples) so they run in `make test`."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import math
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from device.audio.files import WavMicrophone, read_wav
from device.config import Config, ConfigError, documented_keys, loads
from device.errors import AudioDeviceError
from server import db as sdb
from tests.test_history_sync import Running, start_server

BOUNDED = settings(max_examples=200, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow,
                                          HealthCheck.function_scoped_fixture])

# --- the config loader ----------------------------------------------------------------------

KEYS = sorted(documented_keys())
SECRET = "s3cr3t-T0KEN-never-shown"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


scalars = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(),
                    st.text(max_size=30), st.sampled_from(["", "#ff0000", "19:30", "07:00",
                                                           "25:99", "mock", "tap", "hold",
                                                           "https://x", "http://10.0.0.1"]))
values = st.one_of(scalars, st.lists(scalars, max_size=3),
                   st.dictionaries(st.text(max_size=5), scalars, max_size=2))
#: Real keys with values of any type, a few unknown keys, the sync token set to a secret.
documents = st.tuples(
    st.dictionaries(st.sampled_from(KEYS), values, max_size=6),
    st.dictionaries(st.sampled_from(["child", "live", "nope", "sync"]),
                    st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), values,
                                    max_size=2), max_size=2),
    st.booleans())


def _render(keys: dict[str, Any], extra: dict[str, dict[str, Any]], with_secret: bool) -> str:
    sections: dict[str, dict[str, Any]] = {}
    for dotted, v in keys.items():
        section, name = dotted.split(".")
        sections.setdefault(section, {})[name] = v
    for section, kv in extra.items():
        sections.setdefault(section, {}).update(kv)
    if with_secret:
        sections.setdefault("sync", {})["token"] = SECRET
    return "\n".join(f"[{s}]\n" + "\n".join(f"{k} = {_toml(v)}" for k, v in kv.items())
                     for s, kv in sections.items()) + "\n"


@BOUNDED
@given(documents)
def test_config_loader_gives_a_config_or_one_clear_error(doc) -> None:
    text = _render(*doc)
    try:
        cfg = loads(text, source="fuzz.toml")
    except ConfigError as e:
        msg = str(e)
        assert msg.startswith("fuzz.toml"), msg
        assert "\n" not in msg.strip(), "one line in the journal"
        assert SECRET not in msg, "the sync token leaked into an error"
        return
    assert isinstance(cfg, Config)
    assert SECRET not in repr(cfg)


@BOUNDED
@given(st.text(max_size=300))
def test_config_loader_on_any_text(text) -> None:
    try:
        assert isinstance(loads(text, source="fuzz.toml"), Config)
    except ConfigError as e:
        assert str(e).startswith("fuzz.toml")


@pytest.mark.parametrize("value", ["98765", "1.2345", "[11, 22]", "{a = 31}",
                                   "1979-05-27T07:32:00Z"])
def test_a_mistyped_sync_token_is_not_echoed(value) -> None:
    with pytest.raises(ConfigError) as e:
        loads(f"[sync]\ntoken = {value}\n", source="c.toml")
    assert value not in str(e.value) and "sync.token" in str(e.value)


# --- WAV and PCM inputs of odd sizes --------------------------------------------------------

@st.composite
def wav_files(draw: Any) -> bytes:
    """A RIFF/WAVE file with a random format and a data chunk of any length (often not a
    whole number of frames), sometimes truncated or with a lying header."""
    channels = draw(st.integers(1, 4))
    width = draw(st.integers(1, 4))
    rate = draw(st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000, 96000, 1, 3,
                                 400_000]))
    data = draw(st.binary(max_size=2000))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframesraw(data)  # header says len(data) bytes, however they split in frames
    raw = buf.getvalue()
    cut = draw(st.one_of(st.none(), st.integers(0, len(raw))))
    return raw if cut is None else raw[:cut]


@BOUNDED
@given(wav_files())
def test_any_wav_file_is_mono_16k_or_a_clear_error(tmp_path_factory, raw) -> None:
    path = tmp_path_factory.mktemp("wav") / "in.wav"
    path.write_bytes(raw)
    try:
        x = read_wav(path)
    except AudioDeviceError as e:
        assert str(e).startswith(f"microphone file {path}") and "WAV" in str(e)
        return
    assert x.dtype == np.int16 and x.ndim == 1


@BOUNDED
@given(st.binary(max_size=300))
def test_any_bytes_as_a_wav_file(tmp_path_factory, raw) -> None:
    path = tmp_path_factory.mktemp("wav") / "junk.wav"
    path.write_bytes(raw)
    try:
        read_wav(path)
    except AudioDeviceError:
        pass


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(n=st.integers(0, 3 * 320 + 7))
def test_a_wav_mic_of_any_length_gives_whole_frames(tmp_path_factory, n) -> None:
    """Frames are 20 ms at 16 kHz whatever the file's length: the tail is padded or left."""
    path = tmp_path_factory.mktemp("wav") / "mic.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(np.arange(n, dtype="<i2").tobytes())

    async def frames() -> list[bytes]:
        async with WavMicrophone(path, realtime=False) as mic:
            return [f.pcm async for f in mic.frames()]

    out = asyncio.run(frames())
    assert all(len(f) == 640 for f in out)
    assert len(out) * 320 >= n - 320


# --- the history server's sync API and login, over HTTP on loopback -------------------------

@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, str]]:
    db = tmp_path_factory.mktemp("fuzzsrv") / "server.db"
    con = sdb.open_db(str(db))
    token = sdb.add_device(con, "fuzz-box")
    sdb.set_password(con, "parents-only-password")
    con.close()
    # Login fuzzing needs many tries: the rate limit has its own test (test_history_sync).
    run = start_server(db, max_body=64 * 1024, login_attempts=10**6)
    yield run, token
    run.stop()


def _request(port: int, method: str, path: str, body: bytes,
             headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        try:
            conn.request(method, path, body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered before the whole body was read
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


ids = st.one_of(st.uuids().map(str), st.text(max_size=12))
numbers = st.one_of(st.integers(-(2**70), 2**70), st.floats(), st.none(), st.text(max_size=5),
                    st.booleans())
json_any = st.recursive(st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=10)),
                        lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3)), max_leaves=10)
conversation = st.fixed_dictionaries(
    {"uuid": ids},
    optional={"title": st.text(max_size=20), "active": st.one_of(st.booleans(), numbers),
              "metadata": json_any, "started_at": numbers, "ended_at": numbers})
message = st.fixed_dictionaries(
    {"uuid": ids, "conversation_uuid": ids},
    optional={"content": st.one_of(st.text(max_size=40), numbers),
              "type": st.sampled_from(["text", "image", "audio", "video", ""]),
              "sender": st.sampled_from(["user", "assistant", "system", "dog"]),
              "processing_time_ms": numbers, "created_at": numbers,
              "usage": st.one_of(json_any, st.fixed_dictionaries({}, optional={
                  "input_tokens": numbers, "output_tokens": numbers,
                  "total_tokens": numbers}))})
batches = st.one_of(
    st.fixed_dictionaries({"conversations": st.lists(conversation, max_size=3),
                           "messages": st.lists(message, max_size=4)}),
    json_any)


def _json_error(status: int, body: bytes) -> None:
    assert status < 500, (status, body[:300])
    if status >= 400:
        err = json.loads(body).get("error", "")
        assert isinstance(err, str) and err, body


@BOUNDED
@given(batch=batches)
def test_sync_api_answers_any_json_batch_with_2xx_or_a_clear_4xx(live_server, batch) -> None:
    run, token = live_server
    body = json.dumps(batch, allow_nan=False).encode() if _finite(batch) else b"{}"
    status, out, _ = _request(run.port, "POST", "/api/v1/sync", body, {
        "Authorization": f"Bearer {token}", "Content-Type": "application/json",
        "Content-Length": str(len(body))})
    _json_error(status, out)
    assert status in (200, 400), (status, out[:300])
    if status == 200:
        counts = json.loads(out)
        assert set(counts) == {"conversations", "messages"}


@BOUNDED
@given(body=st.binary(max_size=300),
       ctype=st.sampled_from(["application/json", "text/plain", "application/json; charset=x",
                              ""]),
       length=st.one_of(st.none(), st.sampled_from(["-1", "abc", "99999999", "0", "1e3"])),
       auth=st.one_of(st.none(), st.just("good"), st.text(max_size=30)))
def test_sync_api_survives_any_bytes_and_headers(live_server, body, ctype, length, auth) -> None:
    run, token = live_server
    headers = {"Content-Type": ctype, "Content-Length": length or str(len(body))}
    if auth == "good":
        headers["Authorization"] = f"Bearer {token}"
    elif auth is not None:
        assume(auth.isascii() and auth.isprintable())
        headers["Authorization"] = auth
    status, out, _ = _request(run.port, "POST", "/api/v1/sync", body, headers)
    _json_error(status, out)
    if auth != "good":
        assert status in (400, 401, 411, 413), status
    assert token.encode() not in out


@settings(max_examples=60, deadline=None, derandomize=True,  # scrypt makes each try ~0.1 s
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(form=st.dictionaries(st.sampled_from(["password", "user", "next", ""]),
                            st.text(max_size=40), max_size=3),
       raw=st.one_of(st.none(), st.binary(max_size=100)))
def test_login_answers_any_form_without_a_500_or_a_session(live_server, form, raw) -> None:
    run, _ = live_server
    body = raw if raw is not None else urlencode(form).encode()
    status, out, headers = _request(run.port, "POST", "/login", body, {
        "Content-Type": "application/x-www-form-urlencoded", "Content-Length": str(len(body))})
    assert status in (401, 400, 413, 411), (status, out[:200])
    assert "set-cookie" not in headers or "Max-Age=0" in headers["set-cookie"]


def test_a_wav_file_cut_mid_frame_reads_its_whole_frames(tmp_path: Path) -> None:
    """Found by the WAV fuzzer: a data chunk ending mid-frame raised numpy's ValueError."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(3)
        w.setframerate(16_000)
        w.writeframes(b"\x00\x10\x00" * 2 * 100)
    path = tmp_path / "cut.wav"
    path.write_bytes(buf.getvalue()[:-4])  # the last frame is 6 bytes: 2 of it remain
    assert len(read_wav(path)) == 99


def test_a_wav_chunk_longer_than_the_file_is_a_clear_error(tmp_path: Path) -> None:
    """Found by atheris (tests/atheris_targets.py wav): Python's wave module raises a bare
    RuntimeError when a chunk's size points past the end of the file."""
    path = tmp_path / "bad.wav"
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVELIST\xff\xff\xff\x00abcd")
    with pytest.raises(AudioDeviceError, match="is not a PCM WAV file"):
        read_wav(path)


def test_login_with_the_right_password_still_works_after_the_fuzzing(live_server) -> None:
    run, _ = live_server
    body = urlencode({"password": "parents-only-password"}).encode()
    status, _, headers = _request(run.port, "POST", "/login", body, {
        "Content-Type": "application/x-www-form-urlencoded", "Content-Length": str(len(body))})
    assert status == 303 and "set-cookie" in headers


def _finite(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, list):
        return all(_finite(x) for x in v)
    if isinstance(v, dict):
        return all(_finite(x) for x in v.values())
    return True
