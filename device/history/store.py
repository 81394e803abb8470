"""The box's history: conversations and messages in SQLite, written as turns complete.

Shape follows the earlier web product's ChatSession / ChatMessage rows: a conversation has a
uuid, title, active flag, metadata (JSON), start and end; a message has a uuid, its
conversation, content, type (text/image/audio), sender (user/assistant/system), processing
time in ms, creation time and token usage.

Durability: WAL with `synchronous=FULL`. NORMAL never corrupts the file, but after a power cut
the last commits in the WAL may roll back; FULL fsyncs the WAL on every commit, so a turn whose
write returned survives power loss (as far as the SD card honours fsync). A turn is written
once every few seconds at most, so the cost of one fsync per turn is nothing.

`HistoryDB` is the synchronous store (one connection, one thread: the CLI, tests, and the
writer thread use it). `HistoryStore` is the daemon's asyncio facade: every call runs on one
dedicated writer thread, so the event loop never blocks on the disk.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import errno
import json
import logging
import sqlite3
import time
import uuid as uuidlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

from device.config import HistoryConfig
from device.errors import TalkieError
from device.fileio import atomic_write

log = logging.getLogger(__name__)

T = TypeVar("T")

MESSAGE_TYPES = ("text", "image", "audio")
SENDERS = ("user", "assistant", "system")


class HistoryError(TalkieError, OSError):
    """The history could not be read or written. The daemon logs it and keeps talking."""


class HistoryFullError(HistoryError):
    """The disk (or the database's size cap) is full; this turn was not saved."""


# Each entry moves the schema from version i to i+1. Never edit an entry once released:
# append a new one. Applied in one transaction each, so a crash leaves the old version.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE conversations (
        id          INTEGER PRIMARY KEY,
        uuid        TEXT NOT NULL UNIQUE,
        title       TEXT NOT NULL DEFAULT '',
        active      INTEGER NOT NULL DEFAULT 1,
        metadata    TEXT NOT NULL DEFAULT '{}',
        started_at  REAL NOT NULL,
        ended_at    REAL
    );
    CREATE INDEX conversations_started ON conversations(started_at);
    CREATE TABLE messages (
        id                  INTEGER PRIMARY KEY,
        uuid                TEXT NOT NULL UNIQUE,
        conversation_id     INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        content             TEXT NOT NULL,
        type                TEXT NOT NULL CHECK (type IN ('text', 'image', 'audio')),
        sender              TEXT NOT NULL CHECK (sender IN ('user', 'assistant', 'system')),
        processing_time_ms  INTEGER,
        created_at          REAL NOT NULL,
        input_tokens        INTEGER,
        output_tokens       INTEGER,
        total_tokens        INTEGER,
        timings             TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX messages_conversation ON messages(conversation_id, id);
    CREATE INDEX messages_created ON messages(created_at);
    -- What the sync client still has to send. A row is (re)queued in the same transaction as
    -- the change; REPLACE gives it a new seq, so acknowledging an older send keeps it queued.
    CREATE TABLE outbox (
        seq   INTEGER PRIMARY KEY AUTOINCREMENT,
        kind  TEXT NOT NULL CHECK (kind IN ('conversation', 'message')),
        uuid  TEXT NOT NULL,
        UNIQUE (kind, uuid)
    );
    """,
    # A change the server refused for good (400/413/422) is set aside with the reason, so it
    # no longer blocks the changes behind it; it is queued again at the next start.
    """
    ALTER TABLE outbox ADD COLUMN refused TEXT
    """,
)


@dataclass(frozen=True)
class Usage:
    """Token usage of one turn, as the Live API reports it."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> Usage:
        """From the Live API's usage_metadata names or ours."""
        def pick(*names: str) -> int | None:
            for n in names:
                if isinstance(m.get(n), int):
                    return int(m[n])
            return None
        return cls(pick("input_tokens", "prompt_token_count", "promptTokenCount"),
                   pick("output_tokens", "response_token_count", "responseTokenCount"),
                   pick("total_tokens", "total_token_count", "totalTokenCount"))


@dataclass(frozen=True)
class Message:
    uuid: str
    conversation_uuid: str
    content: str
    type: str
    sender: str
    processing_time_ms: int | None
    created_at: float
    usage: Usage
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Conversation:
    uuid: str
    title: str
    active: bool
    metadata: dict[str, Any]
    started_at: float
    ended_at: float | None
    message_count: int = 0
    messages: tuple[Message, ...] = ()


@dataclass(frozen=True)
class Turn:
    """One completed exchange: what the child said and what the toy answered."""

    conversation_uuid: str
    user_uuid: str
    assistant_uuid: str
    child_text: str
    toy_text: str
    created_at: float


@dataclass(frozen=True)
class OutboxItem:
    seq: int
    kind: str
    payload: dict[str, Any]


def _translate(e: sqlite3.Error, path: Path) -> HistoryError:
    """One boundary where SQLite's errors become ours, with the fix in the message."""
    code = getattr(e, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "disk is full" in str(e) or (
            isinstance(e, OSError) and e.errno == errno.ENOSPC):
        return HistoryFullError(f"history {path}: the disk is full, this turn was not saved; "
                                f"free space on the SD card or lower [history] retention_days")
    return HistoryError(f"history {path}: {e.__class__.__name__}: {e}; if this repeats, "
                        f"move the file aside and restart (a new history is created)")


class HistoryDB:
    """The synchronous store. Use from one thread only (the writer thread, or the CLI)."""

    def __init__(self, path: str | Path, *, max_pages: int | None = None) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            if max_pages is not None:  # tests: a tiny "disk" that fills like a real one
                self._db.execute(f"PRAGMA max_page_count={int(max_pages)}")
            self._migrate()
        except HistoryError:
            raise
        except sqlite3.Error as e:
            raise _translate(e, self.path) from None
        except OSError as e:
            raise HistoryError(f"history {self.path}: cannot open ({e.strerror}); check that "
                               f"the directory exists and is writable") from None

    # --- plumbing ---------------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        version = self.schema_version
        if version > len(MIGRATIONS):
            raise HistoryError(f"history {self.path}: schema version {version} is newer than "
                               f"this software ({len(MIGRATIONS)}); update Talkie")
        for n in range(version, len(MIGRATIONS)):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in MIGRATIONS[n].split(";\n"):
                    if stmt.strip():
                        self._db.execute(stmt)
                self._db.execute(f"PRAGMA user_version={n + 1}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            log.info("history schema migrated to version %d", n + 1)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn in one IMMEDIATE transaction; commit (fsync) before returning."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            return result
        except sqlite3.Error as e:
            raise _translate(e, self.path) from None

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._db)
        except sqlite3.Error as e:
            raise _translate(e, self.path) from None

    # --- writes -----------------------------------------------------------------------------

    def start_conversation(self, title: str = "", metadata: Mapping[str, Any] | None = None,
                           *, started_at: float | None = None, conversation_uuid: str | None = None) -> str:
        """Open a conversation; returns its uuid."""
        cid = conversation_uuid or str(uuidlib.uuid4())
        meta = json.dumps(dict(metadata or {}))
        ts = time.time() if started_at is None else started_at

        def tx(db: sqlite3.Connection) -> str:
            db.execute("INSERT INTO conversations(uuid, title, active, metadata, started_at) "
                       "VALUES (?, ?, 1, ?, ?)", (cid, title, meta, ts))
            db.execute("INSERT OR REPLACE INTO outbox(kind, uuid) VALUES ('conversation', ?)", (cid,))
            return cid
        return self._write(tx)

    def add_turn(self, conversation_uuid: str, child_text: str, toy_text: str,
                 timings: Mapping[str, float] | None = None,
                 usage: Usage | Mapping[str, Any] | None = None,
                 *, created_at: float | None = None) -> Turn:
        """Save one completed turn (child's words, toy's answer) in one durable transaction.

        `timings` are milliseconds by name (e.g. first_audio_ms, turn_ms); the assistant
        message's processing time is `timings['processing_ms']` if given, else `turn_ms`.
        """
        if not isinstance(usage, Usage):
            usage = Usage.from_mapping(usage or {})
        timings = {k: float(v) for k, v in (timings or {}).items()}
        processing = timings.get("processing_ms", timings.get("turn_ms"))
        ts = time.time() if created_at is None else created_at
        # An empty side is not stored; its uuid in the Turn is then "".
        user_id = str(uuidlib.uuid4()) if child_text else ""
        toy_id = str(uuidlib.uuid4()) if toy_text or not child_text else ""

        def tx(db: sqlite3.Connection) -> Turn:
            row = db.execute("SELECT id FROM conversations WHERE uuid = ?",
                             (conversation_uuid,)).fetchone()
            if row is None:
                raise HistoryError(f"history: no conversation {conversation_uuid}; call "
                                   f"start_conversation first")
            for mid, content, sender, ms, u, t, at in (
                    (user_id, child_text, "user", None, Usage(), {}, ts),
                    (toy_id, toy_text, "assistant", processing, usage, timings, ts + 1e-6)):
                if not mid:
                    continue  # nothing said on that side (e.g. the toy's greeting)
                db.execute(
                    "INSERT INTO messages(uuid, conversation_id, content, type, sender, "
                    "processing_time_ms, created_at, input_tokens, output_tokens, total_tokens, "
                    "timings) VALUES (?, ?, ?, 'text', ?, ?, ?, ?, ?, ?, ?)",
                    (mid, row[0], content, sender, None if ms is None else int(ms), at,
                     u.input_tokens, u.output_tokens, u.total_tokens, json.dumps(t)))
                db.execute("INSERT OR REPLACE INTO outbox(kind, uuid) VALUES ('message', ?)", (mid,))
            if not db.execute("SELECT title FROM conversations WHERE id = ?", (row[0],)).fetchone()[0]:
                # The child's first words name the conversation in lists, as the web app did.
                title = " ".join(child_text.split())[:60]
                db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, row[0]))
                db.execute("INSERT OR REPLACE INTO outbox(kind, uuid) VALUES ('conversation', ?)",
                           (conversation_uuid,))
            return Turn(conversation_uuid, user_id, toy_id, child_text, toy_text, ts)
        return self._write(tx)

    @property
    def recordings_dir(self) -> Path:
        return self.path.parent / "recordings"

    def add_recording(self, conversation_uuid: str, sender: str, wav: bytes) -> str:
        """Keep a recording as an 'audio' message (content: the file name); returns its uuid.

        Only HistoryStore decides whether recordings are allowed; this just stores.
        """
        if sender not in SENDERS:
            raise ValueError(f"sender must be one of {SENDERS}")
        mid = str(uuidlib.uuid4())
        name = f"{mid}.wav"
        try:
            atomic_write(self.recordings_dir / name, wav, mode=0o600)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise HistoryFullError("history: the disk is full, the recording was not "
                                       "saved; free space or turn [history] recordings off") from None
            raise HistoryError(f"history: cannot write a recording ({e.strerror})") from None

        def tx(db: sqlite3.Connection) -> str:
            row = db.execute("SELECT id FROM conversations WHERE uuid = ?",
                             (conversation_uuid,)).fetchone()
            if row is None:
                raise HistoryError(f"history: no conversation {conversation_uuid}")
            db.execute("INSERT INTO messages(uuid, conversation_id, content, type, sender, "
                       "created_at) VALUES (?, ?, ?, 'audio', ?, ?)",
                       (mid, row[0], name, sender, time.time()))
            # Recordings stay on the box: they are not queued for the server.
            return mid
        try:
            return self._write(tx)
        except BaseException:
            (self.recordings_dir / name).unlink(missing_ok=True)
            raise

    def end_conversation(self, conversation_uuid: str, *, ended_at: float | None = None) -> None:
        ts = time.time() if ended_at is None else ended_at

        def tx(db: sqlite3.Connection) -> None:
            db.execute("UPDATE conversations SET active = 0, ended_at = ? WHERE uuid = ?",
                       (ts, conversation_uuid))
            db.execute("INSERT OR REPLACE INTO outbox(kind, uuid) VALUES ('conversation', ?)",
                       (conversation_uuid,))
        self._write(tx)

    def prune(self, retention_days: float, *, now: float | None = None) -> int:
        """Delete conversations that started more than retention_days ago; returns how many."""
        cutoff = (time.time() if now is None else now) - retention_days * 86400

        def tx(db: sqlite3.Connection) -> int:
            old = [r[0] for r in db.execute(
                "SELECT uuid FROM conversations WHERE started_at < ? AND active = 0 "
                "OR started_at < ? - 86400", (cutoff, cutoff))]
            for cid in old:
                for (name,) in db.execute(
                        "SELECT m.content FROM messages m JOIN conversations c ON c.id = "
                        "m.conversation_id WHERE c.uuid = ? AND m.type = 'audio'", (cid,)).fetchall():
                    (self.recordings_dir / Path(name).name).unlink(missing_ok=True)
                db.execute("DELETE FROM outbox WHERE kind = 'message' AND uuid IN (SELECT m.uuid "
                           "FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                           "WHERE c.uuid = ?)", (cid,))
                db.execute("DELETE FROM outbox WHERE kind = 'conversation' AND uuid = ?", (cid,))
                db.execute("DELETE FROM conversations WHERE uuid = ?", (cid,))
            return len(old)
        n = self._write(tx)
        if n:
            log.info("history retention: deleted %d conversations older than %g days", n,
                     retention_days)
        return n

    # --- reads ------------------------------------------------------------------------------

    def list_conversations(self, limit: int = 50, offset: int = 0) -> list[Conversation]:
        """Newest first, without messages."""
        def q(db: sqlite3.Connection) -> list[Conversation]:
            rows = db.execute(
                "SELECT c.*, (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS n "
                "FROM conversations c ORDER BY c.started_at DESC, c.id DESC LIMIT ? OFFSET ?",
                (limit, offset)).fetchall()
            return [_conversation(r, r["n"]) for r in rows]
        return self._read(q)

    def get_conversation(self, conversation_uuid: str) -> Conversation | None:
        """A conversation with all its messages; a unique uuid prefix is enough."""
        def q(db: sqlite3.Connection) -> Conversation | None:
            rows = db.execute("SELECT * FROM conversations WHERE uuid LIKE ? || '%' LIMIT 2",
                              (conversation_uuid,)).fetchall()
            if len(rows) != 1:
                return None
            msgs = tuple(_message(m, rows[0]["uuid"]) for m in db.execute(
                "SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (rows[0]["id"],)))
            return _conversation(rows[0], len(msgs), msgs)
        return self._read(q)

    def recent_turns(self, n: int) -> list[Message]:
        """The last n messages (child's and toy's) across conversations, oldest first, for a
        recap in the system instruction."""
        def q(db: sqlite3.Connection) -> list[Message]:
            rows = db.execute(
                "SELECT m.*, c.uuid AS cuuid FROM messages m JOIN conversations c "
                "ON c.id = m.conversation_id ORDER BY m.id DESC LIMIT ?", (n,)).fetchall()
            return [_message(r, r["cuuid"]) for r in reversed(rows)]
        return self._read(q)

    def turn_exists(self, message_uuid: str) -> bool:
        return self._read(lambda db: db.execute(
            "SELECT 1 FROM messages WHERE uuid = ?", (message_uuid,)).fetchone() is not None)

    # --- the sync outbox --------------------------------------------------------------------

    def outbox_batch(self, limit: int) -> list[OutboxItem]:
        """The oldest queued changes, each with the row as it is now."""
        def q(db: sqlite3.Connection) -> list[OutboxItem]:
            out: list[OutboxItem] = []
            for seq, kind, uid in db.execute(
                    "SELECT seq, kind, uuid FROM outbox WHERE refused IS NULL ORDER BY seq LIMIT ?",
                    (limit,)).fetchall():
                if kind == "conversation":
                    r = db.execute("SELECT * FROM conversations WHERE uuid = ?", (uid,)).fetchone()
                    payload = None if r is None else _conversation_payload(_conversation(r))
                else:
                    r = db.execute("SELECT m.*, c.uuid AS cuuid FROM messages m JOIN conversations "
                                   "c ON c.id = m.conversation_id WHERE m.uuid = ?", (uid,)).fetchone()
                    payload = None if r is None else _message_payload(_message(r, r["cuuid"]))
                if payload is not None:  # deleted by retention since: nothing to send
                    out.append(OutboxItem(seq, kind, payload))
                else:
                    out.append(OutboxItem(seq, kind, {}))
            return out
        return self._read(q)

    def outbox_ack(self, seqs: list[int]) -> None:
        """Forget changes the server has stored."""
        def tx(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
        self._write(tx)

    def outbox_refuse(self, seq: int, reason: str) -> None:
        """Set a change aside that the server refused for good; `outbox_requeue` takes it back."""
        def tx(db: sqlite3.Connection) -> None:
            db.execute("UPDATE outbox SET refused = ? WHERE seq = ?", (reason[:500], seq))
        self._write(tx)

    def outbox_requeue(self) -> int:
        """Queue every set-aside change again (at start: a newer server may take them)."""
        def tx(db: sqlite3.Connection) -> int:
            return db.execute("UPDATE outbox SET refused = NULL WHERE refused IS NOT NULL"
                              ).rowcount
        return self._write(tx)

    def outbox_size(self) -> int:
        """Changes waiting to be sent (not counting those set aside as refused)."""
        return self._read(lambda db: db.execute(
            "SELECT count(*) FROM outbox WHERE refused IS NULL").fetchone()[0])

    def outbox_refused(self) -> list[tuple[int, str, str, str]]:
        """(seq, kind, uuid, reason) of the changes set aside."""
        return [tuple(r) for r in self._read(lambda db: db.execute(
            "SELECT seq, kind, uuid, refused FROM outbox WHERE refused IS NOT NULL "
            "ORDER BY seq").fetchall())]


def _conversation(r: sqlite3.Row, n: int = 0, msgs: tuple[Message, ...] = ()) -> Conversation:
    return Conversation(r["uuid"], r["title"], bool(r["active"]), json.loads(r["metadata"]),
                        r["started_at"], r["ended_at"], n, msgs)


def _message(r: sqlite3.Row, conversation_uuid: str) -> Message:
    return Message(r["uuid"], conversation_uuid, r["content"], r["type"], r["sender"],
                   r["processing_time_ms"], r["created_at"],
                   Usage(r["input_tokens"], r["output_tokens"], r["total_tokens"]),
                   json.loads(r["timings"]))


def _conversation_payload(c: Conversation) -> dict[str, Any]:
    return {"uuid": c.uuid, "title": c.title, "active": c.active, "metadata": c.metadata,
            "started_at": c.started_at, "ended_at": c.ended_at}


def _message_payload(m: Message) -> dict[str, Any]:
    return {"uuid": m.uuid, "conversation_uuid": m.conversation_uuid, "content": m.content,
            "type": m.type, "sender": m.sender, "processing_time_ms": m.processing_time_ms,
            "created_at": m.created_at,
            "usage": {"input_tokens": m.usage.input_tokens, "output_tokens": m.usage.output_tokens,
                      "total_tokens": m.usage.total_tokens}}


class HistoryStore:
    """The daemon's history: every call runs on one writer thread; the loop never waits on disk.

    Open with `store = await HistoryStore.open(path)`; close with `await store.close()`.
    Write errors raise HistoryError after logging once; the daemon catches HistoryError around
    a save and keeps talking. A write the full disk refuses is kept in memory (up to
    `MAX_HELD_WRITES`, in order) and written as soon as there is space again: before the next
    write, and every `HELD_RETRY_S` from `run_retention`; it then returns None instead of
    raising, so the toy keeps talking and no turn is lost to a disk that filled up for a while.
    """

    #: Writes kept in memory while the disk is full (a turn is a few KB at most).
    MAX_HELD_WRITES = 500
    #: How often `run_retention` retries held writes.
    HELD_RETRY_S = 20.0

    def __init__(self, db: HistoryDB, executor: concurrent.futures.ThreadPoolExecutor,
                 retention_days: float, recordings: bool = False) -> None:
        self._db = db
        self._executor = executor
        self.retention_days = retention_days
        self.recordings = recordings
        self.changed = asyncio.Event()  # set on every write; the sync client waits on it
        # Only the writer thread touches this queue.
        self._held: collections.deque[Callable[[], Any]] = collections.deque()

    @classmethod
    async def open(cls, path: str | Path, *, retention_days: float = 90,
                   recordings: bool = False, max_pages: int | None = None) -> HistoryStore:
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="history")
        loop = asyncio.get_running_loop()
        try:
            db = await loop.run_in_executor(executor, lambda: HistoryDB(path, max_pages=max_pages))
        except BaseException:
            executor.shutdown(wait=False)
            raise
        store = cls(db, executor, retention_days, recordings)
        if retention_days > 0:
            await store.prune()
        try:
            requeued = await store._run(db.outbox_requeue)
        except HistoryError:
            requeued = 0  # a full disk: they stay set aside until the next start
        if requeued:
            log.info("history sync: %d changes the server refused before are queued again",
                     requeued)
        return store

    @classmethod
    async def open_config(cls, history: HistoryConfig) -> HistoryStore:
        """Open from the config's [history] section (path, retention_days, recordings)."""
        return await cls.open(history.path, retention_days=history.retention_days,
                              recordings=history.recordings)

    async def _run(self, fn: Callable[[], T], *, write: bool = False) -> T:
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._executor, fn)
        except HistoryError as e:
            log.error("%s", e)
            raise
        if write:
            self.changed.set()
        return result

    async def _write(self, fn: Callable[[], T]) -> T | None:
        """A write that waits in memory if the disk is full (None then); see the class doc."""
        loop = asyncio.get_running_loop()
        held_before = len(self._held)
        try:
            result, wrote = await loop.run_in_executor(self._executor, self._write_or_hold, fn)
        except HistoryError as e:
            log.error("%s", e)
            raise
        if wrote:
            self.changed.set()
            if held_before:
                log.info("history: the disk has space again; %d held writes saved", held_before,
                         extra={"TALKIE_EVENT": "history_ok"})
        elif held_before == 0:
            log.error("history %s: the disk is full; the toy keeps talking and keeps new turns "
                      "in memory (up to %d writes) until there is space: free space on the SD "
                      "card or lower [history] retention_days", self._db.path,
                      self.MAX_HELD_WRITES, extra={"TALKIE_EVENT": "history_full"})
        return result

    def _write_or_hold(self, fn: Callable[[], T]) -> tuple[T | None, bool]:
        """On the writer thread: held writes first, in order; then fn, or hold it too."""
        wrote = self._flush_held()
        if not self._held:
            try:
                return fn(), True
            except HistoryFullError:
                pass
        if len(self._held) >= self.MAX_HELD_WRITES:
            raise HistoryFullError(f"history {self._db.path}: the disk is still full and "
                                   f"{len(self._held)} writes wait in memory; this one is lost: "
                                   f"free space on the SD card or lower [history] "
                                   f"retention_days")
        self._held.append(fn)
        return None, wrote

    def _flush_held(self) -> bool:
        wrote = False
        while self._held:
            try:
                self._held[0]()
            except HistoryFullError:
                return wrote
            except HistoryError as e:  # not space: it will never succeed, so do not block on it
                log.error("history: a held write failed and is dropped: %s", e)
            self._held.popleft()
            wrote = True
        return wrote

    @property
    def held_writes(self) -> int:
        """Writes waiting in memory for disk space."""
        return len(self._held)

    async def retry_held(self) -> bool:
        """Try the held writes now; True once none is left."""
        if not self._held:
            return True
        n = len(self._held)
        wrote = await self._run(self._flush_held)
        if wrote:
            self.changed.set()
            log.info("history: the disk has space again; %d held writes saved",
                     n - len(self._held), extra={"TALKIE_EVENT": "history_ok"})
        return not self._held

    async def close(self) -> None:
        if self._held and not await self.retry_held():
            log.error("history %s: the disk is still full; %d writes held in memory are lost",
                      self._db.path, len(self._held))
        await asyncio.get_running_loop().run_in_executor(self._executor, self._db.close)
        self._executor.shutdown(wait=True)

    async def start_conversation(self, title: str = "",
                                 metadata: Mapping[str, Any] | None = None) -> str:
        """Open a conversation; its uuid is returned even if the disk is full (held)."""
        cid, ts = str(uuidlib.uuid4()), time.time()
        await self._write(lambda: self._db.start_conversation(
            title, metadata, started_at=ts, conversation_uuid=cid))
        return cid

    async def add_turn(self, conversation_uuid: str, child_text: str, toy_text: str,
                       timings: Mapping[str, float] | None = None,
                       usage: Usage | Mapping[str, Any] | None = None) -> Turn | None:
        """Save one turn; None if the disk is full and it waits in memory."""
        ts = time.time()
        return await self._write(lambda: self._db.add_turn(
            conversation_uuid, child_text, toy_text, timings, usage, created_at=ts))

    async def add_recording(self, conversation_uuid: str, sender: str, wav: bytes) -> str | None:
        """Keep a WAV recording only if a parent turned [history] recordings on; else None."""
        if not self.recordings:
            return None
        return await self._run(lambda: self._db.add_recording(conversation_uuid, sender, wav),
                               write=True)

    async def end_conversation(self, conversation_uuid: str) -> None:
        ts = time.time()
        await self._write(lambda: self._db.end_conversation(conversation_uuid, ended_at=ts))

    async def prune(self) -> int:
        return await self._run(lambda: self._db.prune(self.retention_days))

    async def run_retention(self, every_s: float = 6 * 3600) -> None:
        """A TaskGroup task: apply retention now and then, and write held writes once the
        disk has space; a failure is logged, not raised."""
        last_prune = -every_s
        while True:
            if time.monotonic() - last_prune >= every_s:
                last_prune = time.monotonic()
                try:
                    await self.prune()
                except HistoryError:
                    pass  # already logged by _run; try again next time
            if self._held:
                with contextlib.suppress(HistoryError):
                    await self.retry_held()
            await asyncio.sleep(min(every_s, self.HELD_RETRY_S))

    async def recent_turns(self, n: int) -> list[Message]:
        return await self._run(lambda: self._db.recent_turns(n))

    async def list_conversations(self, limit: int = 50, offset: int = 0) -> list[Conversation]:
        return await self._run(lambda: self._db.list_conversations(limit, offset))

    async def get_conversation(self, conversation_uuid: str) -> Conversation | None:
        return await self._run(lambda: self._db.get_conversation(conversation_uuid))

    async def outbox_batch(self, limit: int) -> list[OutboxItem]:
        return await self._run(lambda: self._db.outbox_batch(limit))

    async def outbox_ack(self, seqs: list[int]) -> None:
        await self._run(lambda: self._db.outbox_ack(seqs))

    async def outbox_size(self) -> int:
        return await self._run(self._db.outbox_size)

    async def outbox_refuse(self, seq: int, reason: str) -> None:
        await self._run(lambda: self._db.outbox_refuse(seq, reason))
