"""A change the history server refuses for good must not block every turn behind it.

Against the real server on loopback with a small `--max-body`: one turn too big for it is
found by halving batches, set aside on the box with the reason, and sent again at the next
start (when a server with room takes it)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from device.config import Secret
from device.history.store import MIGRATIONS, HistoryDB, HistoryStore
from device.history.sync import SyncClient, SyncSettings
from server import db as sdb
from tests.test_history_sync import counts, start_server

BIG = "a very long story about a dragon " * 200  # ~6.6 KB: over the server's 4 KB limit


async def _sync_all(client: SyncClient, rounds: int = 100) -> int:
    """Run the client's sync until nothing is queued; returns the requests' count."""
    for n in range(rounds):
        if await client.store.outbox_size() == 0:
            return n
        await client.sync_once()
    raise AssertionError(f"the outbox did not empty in {rounds} rounds")


async def test_a_refused_change_is_set_aside_and_the_rest_syncs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server_db = tmp_path / "server.db"
    con = sdb.open_db(str(server_db))
    token = sdb.add_device(con, "box-1")
    con.close()
    run = start_server(server_db, max_body=4000)
    store = await HistoryStore.open(tmp_path / "box" / "history.db")
    try:
        cid = await store.start_conversation()
        for i in range(6):
            await store.add_turn(cid, f"question {i}", f"answer {i}")
        big = await store.add_turn(cid, BIG, "what a story")
        for i in range(6, 12):
            await store.add_turn(cid, f"question {i}", f"answer {i}")
        await store.end_conversation(cid)
        client = SyncClient(store, SyncSettings(
            url=f"http://127.0.0.1:{run.port}", token=Secret(token), batch_size=50))
        caplog.set_level(logging.INFO)
        requests = await _sync_all(client)
        # 26 messages, one refused: halving finds it in a few requests, not one per change.
        assert counts(server_db) == (1, 25)
        assert requests <= 12, requests
        assert client.refused == 1
        refused = await store._run(store._db.outbox_refused)
        assert [(kind, uuid) for _, kind, uuid, _ in refused] == [("message", big.user_uuid)]
        assert "413" in refused[0][3] and "over the limit of 4000" in refused[0][3]
        line = next(r.getMessage() for r in caplog.records if "refused one message" in r.getMessage())
        assert big.user_uuid in line and "sent again at the next start" in line
        assert "dragon" not in caplog.text, "the child's words are not logged"
    finally:
        await store.close()
        run.stop()

    # The next start queues it again; a server with room (a larger --max-body) stores it.
    run = start_server(server_db, max_body=1 << 20)
    caplog.clear()
    store = await HistoryStore.open(tmp_path / "box" / "history.db")
    try:
        assert "1 changes the server refused before are queued again" in caplog.text
        assert await store.outbox_size() == 1
        client = SyncClient(store, SyncSettings(
            url=f"http://127.0.0.1:{run.port}", token=Secret(token)))
        await _sync_all(client)
        assert counts(server_db) == (1, 26)
        assert await store._run(store._db.outbox_refused) == []
    finally:
        await store.close()
        run.stop()


async def test_a_wrong_token_is_not_taken_for_a_bad_change(tmp_path: Path) -> None:
    """401 is about the box's token, not the batch: nothing is set aside, the sync backs off."""
    server_db = tmp_path / "server.db"
    sdb.open_db(str(server_db)).close()
    run = start_server(server_db)
    store = await HistoryStore.open(tmp_path / "history.db")
    try:
        cid = await store.start_conversation()
        await store.add_turn(cid, "hello", "hi")
        client = SyncClient(store, SyncSettings(
            url=f"http://127.0.0.1:{run.port}", token=Secret("not-a-real-token")))
        from device.history.sync import SyncRejected
        with pytest.raises(SyncRejected, match="401"):
            await client.sync_once()
        assert await store._run(store._db.outbox_refused) == []
        assert await store.outbox_size() == 3
    finally:
        await store.close()
        run.stop()


def test_an_old_history_gains_the_refused_column_and_keeps_its_queue(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    con = sqlite3.connect(path)
    con.executescript(MIGRATIONS[0] + "\nPRAGMA user_version=1;")
    con.execute("INSERT INTO outbox(kind, uuid) VALUES ('conversation', 'c-1')")
    con.commit()
    con.close()
    with HistoryDB(path) as db:
        assert db.schema_version == len(MIGRATIONS) >= 2
        assert db.outbox_size() == 1
        assert db.outbox_refused() == []
