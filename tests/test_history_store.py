"""History store on real SQLite: durability under kill -9, migrations, retention, full disk."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device.history.store import (
    MIGRATIONS,
    HistoryDB,
    HistoryFullError,
    HistoryStore,
    Usage,
)

WRITER = Path(__file__).with_name("history_writer.py")
ROOT = Path(__file__).resolve().parents[1]


def test_kill9_mid_write_50_times_loses_no_committed_turn(tmp_path: Path) -> None:
    db_path = tmp_path / "history.db"
    committed: set[str] = set()
    rng = random.Random(6)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(50):
        proc = subprocess.Popen([sys.executable, str(WRITER), str(db_path)], env=env,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the writer is up and writing
        assert first.startswith("C ")
        time.sleep(rng.uniform(0.0, 0.08))
        os.kill(proc.pid, signal.SIGKILL)
        out = proc.stdout.read()  # whatever it printed before dying
        proc.wait()
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == "T" and len(parts) == 3:
                committed.update(parts[1:])
        con = sqlite3.connect(db_path)
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
    assert len(committed) > 50, "the writer never got going: the test proved nothing"
    with HistoryDB(db_path) as db:
        stored = {r[0] for r in db._db.execute("SELECT uuid FROM messages")}
        assert db._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        queued = {r[0] for r in db._db.execute("SELECT uuid FROM outbox WHERE kind = 'message'")}
    assert queued == stored, "every stored message is also queued for sync (same transaction)"
    lost = committed - stored
    assert not lost, f"{len(lost)} committed messages lost"
    print(f"kill -9 x50: {len(committed)} committed messages, all present")


def test_turns_read_back_in_the_chat_shape(tmp_path: Path) -> None:
    with HistoryDB(tmp_path / "h.db") as db:
        cid = db.start_conversation(metadata={"child": "Mia"})
        db.add_turn(cid, "why is the sky blue", "Because sunlight scatters!",
                    {"turn_ms": 1234, "first_audio_ms": 420}, Usage(100, 50, 150))
        db.end_conversation(cid)
        conv = db.get_conversation(cid[:8])
    assert conv is not None and not conv.active and conv.ended_at is not None
    assert conv.title == "why is the sky blue" and conv.metadata == {"child": "Mia"}
    child, toy = conv.messages
    assert (child.sender, child.type, child.content) == ("user", "text", "why is the sky blue")
    assert (toy.sender, toy.processing_time_ms, toy.usage.total_tokens) == ("assistant", 1234, 150)
    assert toy.timings["first_audio_ms"] == 420


def test_reopen_keeps_schema_version_and_data(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    with HistoryDB(path) as db:
        assert db.schema_version == len(MIGRATIONS)
        cid = db.start_conversation()
        db.add_turn(cid, "hi", "hello")
    with HistoryDB(path) as db:
        assert db.schema_version == len(MIGRATIONS)
        assert [m.content for m in db.recent_turns(5)] == ["hi", "hello"]
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    con.close()
    with pytest.raises(Exception, match="newer than this software"):
        HistoryDB(path)


def test_retention_deletes_old_conversations_and_their_outbox(tmp_path: Path) -> None:
    with HistoryDB(tmp_path / "h.db") as db:
        now = time.time()
        old = db.start_conversation(started_at=now - 40 * 86400)
        db.add_turn(old, "old", "old answer", created_at=now - 40 * 86400)
        db.end_conversation(old, ended_at=now - 40 * 86400)
        new = db.start_conversation()
        db.add_turn(new, "new", "new answer")
        assert db.prune(30) == 1
        assert [c.uuid for c in db.list_conversations()] == [new]
        assert all(i.payload.get("uuid") != old for i in db.outbox_batch(100))


async def test_a_full_disk_holds_turns_in_memory_and_writes_them_when_space_is_back(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # max_page_count makes SQLite report SQLITE_FULL exactly as on a full SD card (the chaos
    # soak fills a real tmpfs).
    store = await HistoryStore.open(tmp_path / "h.db", max_pages=40)
    cid = await store.start_conversation()
    saved = 0
    while await store.add_turn(cid, f"question {saved} " + "x" * 2000, "y" * 2000) is not None:
        saved += 1
        assert saved < 100, "the tiny database never filled up"
    for i in range(3):
        assert await store.add_turn(cid, f"held {i}", f"answer {i}") is None
    later = await store.start_conversation()  # a new conversation while full gets its id
    await store.add_turn(later, "after", "that")
    await store.end_conversation(cid)
    assert store.held_writes == 7
    full_lines = [r for r in caplog.records if "the disk is full" in r.getMessage()]
    assert len(full_lines) == 1, "said once, not on every turn"
    assert "free space" in full_lines[0].getMessage()
    assert await store.list_conversations()  # reads still work
    # Space comes back (a parent deleted something): everything held is written, in order.
    await store._run(lambda: store._db._db.execute("PRAGMA max_page_count=100000"))
    assert await store.retry_held()
    conv = await store.get_conversation(cid)
    assert conv is not None and not conv.active
    texts = [m.content for m in conv.messages]
    assert texts[-7:] == ["y" * 2000, "held 0", "answer 0", "held 1", "answer 1", "held 2",
                          "answer 2"]
    assert [m.content for m in (await store.get_conversation(later)).messages] == ["after", "that"]
    assert await store.outbox_size() >= 8, "held turns are queued for the server too"
    await store.close()


async def test_a_disk_full_for_too_long_loses_a_turn_with_a_clear_error(tmp_path: Path) -> None:
    store = await HistoryStore.open(tmp_path / "h.db", max_pages=40)
    store.MAX_HELD_WRITES = 3
    cid = await store.start_conversation()
    with pytest.raises(HistoryFullError, match="disk is still full.*this one is lost.*free space"):
        for i in range(200):
            await store.add_turn(cid, "x" * 2000, "y" * 2000)
    assert store.held_writes == 3
    assert await store.list_conversations()
    await store.close()


async def test_store_does_not_block_the_event_loop(tmp_path: Path) -> None:
    store = await HistoryStore.open(tmp_path / "h.db")
    cid = await store.start_conversation()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    t = asyncio.create_task(ticker())
    for i in range(30):
        await store.add_turn(cid, f"q{i}", f"a{i}")
    t.cancel()
    assert ticks > 5  # the loop kept running while 30 fsync'ed commits went through
    assert len(await store.recent_turns(100)) == 60
    await store.close()


async def test_recordings_are_kept_only_when_a_parent_turned_them_on(tmp_path: Path) -> None:
    wav = b"RIFF" + b"\0" * 100
    off = await HistoryStore.open(tmp_path / "off" / "h.db")
    cid = await off.start_conversation()
    assert await off.add_recording(cid, "user", wav) is None
    assert not (tmp_path / "off" / "recordings").exists()
    await off.close()
    on = await HistoryStore.open(tmp_path / "on" / "h.db", recordings=True)
    cid = await on.start_conversation()
    mid = await on.add_recording(cid, "user", wav)
    assert mid is not None
    assert (tmp_path / "on" / "recordings" / f"{mid}.wav").read_bytes() == wav
    conv = await on.get_conversation(cid)
    assert conv is not None and conv.messages[0].type == "audio"
    assert all(i.payload.get("uuid") != mid for i in await on.outbox_batch(100))  # stays home
    await on.close()


def test_live_api_usage_names_are_understood(tmp_path: Path) -> None:
    with HistoryDB(tmp_path / "h.db") as db:
        cid = db.start_conversation()
        db.add_turn(cid, "a", "b", usage={"prompt_token_count": 3, "response_token_count": 4,
                                          "total_token_count": 7})
        assert db.recent_turns(1)[0].usage == Usage(3, 4, 7)


async def test_open_from_config_section(tmp_path: Path) -> None:
    from device.config import loads
    cfg = loads(f'[history]\npath = "{tmp_path / "x" / "h.db"}"\nretention_days = 7\n'
                f'recordings = true\n')
    store = await HistoryStore.open_config(cfg.history)
    assert store.retention_days == 7 and store.recordings
    assert (tmp_path / "x" / "h.db").exists()
    await store.close()
