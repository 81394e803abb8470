"""Coverage-guided fuzz targets (atheris, libFuzzer) for the parsers that take outside bytes.

    python tests/atheris_targets.py config -runs=20000      # or wav, sync_batch
    python tests/atheris_targets.py wav -max_total_time=600  # longer, by hand

tests/test_fuzz_atheris.py runs each for a bounded number of runs in `make test`. A target
that raises anything but the module's own clear error is a crash: libFuzzer prints the input
and exits non-zero."""

from __future__ import annotations

import json
import os
import sys
import tempfile

import atheris
# Third-party libraries are imported first, uninstrumented: coverage of our code is what
# guides the fuzzer, and instrumenting numpy takes most of a minute.
import asyncio  # noqa: F401
import contextlib
import ssl  # noqa: F401
import subprocess  # noqa: F401

import numpy  # noqa: F401
import soxr  # noqa: F401

with contextlib.suppress(ImportError):
    import psycopg  # noqa: F401  (server.db's PostgreSQL driver, when installed)

with atheris.instrument_imports():
    from device.audio.files import read_wav
    from device.config import ConfigError, loads
    from device.errors import AudioDeviceError
    from server import db as sdb

WORK = tempfile.mkdtemp(prefix="talkie-atheris-")


def config(data: bytes) -> None:
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))
    try:
        loads(text, source="fuzz.toml")
    except ConfigError:
        pass


def wav(data: bytes) -> None:
    path = os.path.join(WORK, "in.wav")
    with open(path, "wb") as f:
        f.write(b"RIFF" + data if not data.startswith(b"RIFF") else data)
    try:
        x = read_wav(path)
    except AudioDeviceError:
        return
    assert x.dtype.name == "int16" and x.ndim == 1


_DB: dict[str, object] = {}
_FIELDS = {"conversations": ("uuid", "title", "active", "metadata", "started_at", "ended_at"),
           "messages": ("uuid", "conversation_uuid", "content", "type", "sender",
                        "processing_time_ms", "created_at", "usage")}
_WORDS = ("text", "audio", "image", "user", "assistant", "system", "c-1", "m-1", "")


def _value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> object:
    kind = fdp.ConsumeIntInRange(0, 8 if depth < 2 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeIntInRange(-(2**40), 2**40)
    if kind == 3:
        return fdp.ConsumeRegularFloat()
    if kind == 4:
        return _WORDS[fdp.ConsumeIntInRange(0, len(_WORDS) - 1)]
    if kind == 5:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 20))
    if kind == 6:
        return [_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if kind == 7:
        return {"input_tokens": _value(fdp, depth + 1), "output_tokens": _value(fdp, depth + 1)}
    return {fdp.ConsumeUnicodeNoSurrogates(4): _value(fdp, depth + 1)
            for _ in range(fdp.ConsumeIntInRange(0, 2))}


def sync_batch(data: bytes) -> None:
    """The server's validation and upsert of one sync body (SQLite, one device): objects
    shaped like the API's, with values of any type."""
    if not _DB:
        db = sdb.open_db(os.path.join(WORK, "server.db"))
        sdb.add_device(db, "box")
        _DB["db"] = db
        _DB["device"] = db.execute("SELECT id FROM devices").fetchone()["id"]
    fdp = atheris.FuzzedDataProvider(data)
    body: object = {
        key: [{f: _value(fdp) for f in fields if fdp.ConsumeIntInRange(0, 7)}
              for _ in range(fdp.ConsumeIntInRange(0, 3))]
        for key, fields in _FIELDS.items() if fdp.ConsumeIntInRange(0, 15)}
    if fdp.ConsumeIntInRange(0, 31) == 0:
        body = _value(fdp)
    try:
        sdb.upsert_batch(_DB["db"], _DB["device"], json.loads(json.dumps(body)))
    except sdb.BadBatch:
        pass


TARGETS = {"config": config, "wav": wav, "sync_batch": sync_batch}

if __name__ == "__main__":
    name = sys.argv[1]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], TARGETS[name])
    atheris.Fuzz()
