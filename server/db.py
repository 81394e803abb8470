"""The server's database: devices, the parent's account, sessions, conversations, messages.

SQLite by default (WAL, one connection per request thread); PostgreSQL when the database is
a postgresql:// URL (psycopg 3), for many boxes. Both run the same SQL: `?` placeholders,
ON CONFLICT upserts, DOUBLE PRECISION times, and day grouping done in Python.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = (
    """
    CREATE TABLE devices (
        id          {serial},
        name        TEXT NOT NULL UNIQUE,
        token_hash  TEXT NOT NULL UNIQUE,
        created_at  DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE parent (
        id             INTEGER PRIMARY KEY CHECK (id = 1),
        password_hash  TEXT NOT NULL
    );
    CREATE TABLE sessions (
        token_hash  TEXT PRIMARY KEY,
        expires_at  DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE conversations (
        uuid        TEXT PRIMARY KEY,
        device_id   INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        title       TEXT NOT NULL DEFAULT '',
        active      INTEGER NOT NULL DEFAULT 1,
        metadata    TEXT NOT NULL DEFAULT '{{}}',
        started_at  DOUBLE PRECISION NOT NULL,
        ended_at    DOUBLE PRECISION
    );
    CREATE INDEX conversations_started ON conversations(started_at);
    CREATE TABLE messages (
        uuid                TEXT PRIMARY KEY,
        conversation_uuid   TEXT NOT NULL REFERENCES conversations(uuid) ON DELETE CASCADE,
        device_id           INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        content             TEXT NOT NULL,
        type                TEXT NOT NULL,
        sender              TEXT NOT NULL,
        processing_time_ms  INTEGER,
        created_at          DOUBLE PRECISION NOT NULL,
        input_tokens        INTEGER,
        output_tokens       INTEGER,
        total_tokens        INTEGER
    );
    CREATE INDEX messages_conversation ON messages(conversation_uuid, created_at);
    """,
)

SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}

try:  # PostgreSQL support is optional: `pip install 'talkie[postgres]'`
    import psycopg
    from psycopg.rows import dict_row
    DB_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)
    INTEGRITY_ERRORS: tuple[type[Exception], ...] = (sqlite3.IntegrityError,
                                                     psycopg.IntegrityError)
except ImportError:  # pragma: no cover - depends on the install
    psycopg = None  # type: ignore[assignment]
    DB_ERRORS = (sqlite3.Error,)
    INTEGRITY_ERRORS = (sqlite3.IntegrityError,)


class ServerConfigError(ValueError):
    """A bad database URL or setting; the message says what to do."""


class Database:
    """One connection to SQLite (a file path or sqlite:///path) or PostgreSQL
    (postgresql://...), with one SQL dialect: `?` placeholders, portable statements."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = url.startswith(("postgres://", "postgresql://"))
        if self.postgres:
            if psycopg is None:
                raise ServerConfigError("a postgresql:// URL needs psycopg: "
                                        "pip install 'psycopg[binary]'")
            try:
                self._con: Any = psycopg.connect(url, autocommit=True, row_factory=dict_row)
            except psycopg.Error as e:
                raise ServerConfigError(f"cannot connect to PostgreSQL ({e.__class__.__name__});"
                                        f" check the URL, the server and the password") from None
        else:
            path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._con = sqlite3.connect(path, isolation_level=None, timeout=30,
                                        check_same_thread=False)
            self._con.row_factory = sqlite3.Row
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=FULL")
            self._con.execute("PRAGMA foreign_keys=ON")

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        if self.postgres:
            sql = sql.replace("?", "%s")
        return self._con.execute(sql, params)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self.postgres:
            with self._con.transaction():
                yield
            return
        self._con.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    def close(self) -> None:
        self._con.close()

    def schema_version(self) -> int:
        if not self.postgres:
            return int(self._con.execute("PRAGMA user_version").fetchone()[0])
        self.execute("CREATE TABLE IF NOT EXISTS schema_version (v INTEGER NOT NULL)")
        row = self.execute("SELECT max(v) AS v FROM schema_version").fetchone()
        return int(row["v"] or 0)

    def migrate(self) -> None:
        version = self.schema_version()
        serial = "BIGSERIAL PRIMARY KEY" if self.postgres else "INTEGER PRIMARY KEY"
        for n in range(version, len(SCHEMA)):
            with self.transaction():
                for stmt in SCHEMA[n].format(serial=serial).split(";\n"):
                    if stmt.strip():
                        self.execute(stmt)
                if self.postgres:
                    self.execute("INSERT INTO schema_version VALUES (?)", (n + 1,))
                else:
                    self.execute(f"PRAGMA user_version={n + 1}")


def open_db(url: str) -> Database:
    """A connection to the server's database, migrated to the newest schema."""
    db = Database(url)
    db.migrate()
    return db


# --- secrets at rest -------------------------------------------------------------------------

def token_hash(token: str) -> str:
    """Device and session tokens carry 256 random bits: a plain SHA-256 is enough at rest."""
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **SCRYPT)
    return f"scrypt${SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r),
                             p=int(p))
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


def add_device(db: Database, name: str) -> str:
    """Register a device; returns its token (shown once, stored only as a hash)."""
    token = "tkd_" + secrets.token_urlsafe(32)
    try:
        db.execute("INSERT INTO devices(name, token_hash, created_at) VALUES (?, ?, ?)",
                   (name, token_hash(token), time.time()))
    except INTEGRITY_ERRORS:
        raise ServerConfigError(f"a device named {name!r} exists; pick another name or "
                                f"remove it first (remove-device {name})") from None
    return token


def remove_device(db: Database, name: str) -> bool:
    return db.execute("DELETE FROM devices WHERE name = ?", (name,)).rowcount > 0


def device_for_token(db: Database, token: str) -> int | None:
    h = token_hash(token)
    row = db.execute("SELECT id, token_hash FROM devices WHERE token_hash = ?", (h,)).fetchone()
    # The lookup is by hash (no timing on the secret itself); compare again in constant time.
    if row is None or not hmac.compare_digest(row["token_hash"], h):
        return None
    return int(row["id"])


def set_password(db: Database, password: str) -> None:
    db.execute("INSERT INTO parent(id, password_hash) VALUES (1, ?) ON CONFLICT(id) DO UPDATE "
               "SET password_hash = excluded.password_hash", (hash_password(password),))
    db.execute("DELETE FROM sessions")  # a new password logs every browser out


def parent_password_ok(db: Database, password: str) -> bool:
    row = db.execute("SELECT password_hash FROM parent WHERE id = 1").fetchone()
    if row is None:
        hash_password(password)  # same work either way: no hint whether an account exists
        return False
    return check_password(password, row["password_hash"])


def new_session(db: Database, lifetime_s: float = 7 * 86400) -> str:
    token = secrets.token_urlsafe(32)
    now = time.time()
    db.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
    db.execute("INSERT INTO sessions VALUES (?, ?)", (token_hash(token), now + lifetime_s))
    return token


def session_valid(db: Database, token: str) -> bool:
    row = db.execute("SELECT expires_at FROM sessions WHERE token_hash = ?",
                     (token_hash(token),)).fetchone()
    return row is not None and row["expires_at"] > time.time()


def end_session(db: Database, token: str) -> None:
    db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash(token),))


# --- the sync upsert -------------------------------------------------------------------------

@dataclass(frozen=True)
class SyncResult:
    conversations: int
    messages: int


class BadBatch(ValueError):
    """The batch is not what the API describes; nothing was stored."""


def _check_item(item: Any, fields: dict[str, tuple[type, ...]], where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise BadBatch(f"{where} must be an object")
    for name, types in fields.items():
        if name not in item:
            raise BadBatch(f"{where}.{name} is missing")
        if not isinstance(item[name], types) or (isinstance(item[name], bool) and bool not in types):
            raise BadBatch(f"{where}.{name} has the wrong type")
    return item


_NUM = (int, float)
_CONV = {"uuid": (str,), "title": (str,), "active": (bool,), "metadata": (dict,),
         "started_at": _NUM, "ended_at": (int, float, type(None))}
_MSG = {"uuid": (str,), "conversation_uuid": (str,), "content": (str,), "type": (str,),
        "sender": (str,), "processing_time_ms": (int, type(None)), "created_at": _NUM,
        "usage": (dict,)}


def upsert_batch(db: Database, device_id: int, body: Any) -> SyncResult:
    """Store a batch idempotently, keyed by uuid: sending it twice stores it once.

    Validated whole before anything is written; written in one transaction.
    """
    if not isinstance(body, dict):
        raise BadBatch("the body must be a JSON object with 'conversations' and 'messages'")
    convs = body.get("conversations", [])
    msgs = body.get("messages", [])
    if not isinstance(convs, list) or not isinstance(msgs, list):
        raise BadBatch("'conversations' and 'messages' must be lists")
    convs = [_check_item(c, _CONV, f"conversations[{i}]") for i, c in enumerate(convs)]
    msgs = [_check_item(m, _MSG, f"messages[{i}]") for i, m in enumerate(msgs)]
    for i, m in enumerate(msgs):
        if m["type"] not in ("text", "image", "audio"):
            raise BadBatch(f"messages[{i}].type must be text, image or audio")
        if m["sender"] not in ("user", "assistant", "system"):
            raise BadBatch(f"messages[{i}].sender must be user, assistant or system")
        for k in ("input_tokens", "output_tokens", "total_tokens"):
            v = m["usage"].get(k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                raise BadBatch(f"messages[{i}].usage.{k} must be a whole number or null")
    with db.transaction():
        for c in convs:
            # WHERE device_id = excluded.device_id: a device can only change its own rows.
            db.execute(
                "INSERT INTO conversations(uuid, device_id, title, active, metadata, started_at, "
                "ended_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(uuid) DO UPDATE SET "
                "title = excluded.title, active = excluded.active, metadata = excluded.metadata, "
                "ended_at = excluded.ended_at WHERE conversations.device_id = excluded.device_id",
                (c["uuid"], device_id, c["title"], int(c["active"]), json.dumps(c["metadata"]),
                 float(c["started_at"]), None if c["ended_at"] is None else float(c["ended_at"])))
        for m in msgs:
            # A message may arrive before its conversation (a retry after retention, an old
            # outbox): keep it under a placeholder the conversation's own upsert fills in.
            db.execute("INSERT INTO conversations(uuid, device_id, started_at) VALUES (?, ?, ?) "
                       "ON CONFLICT(uuid) DO NOTHING", (m["conversation_uuid"], device_id,
                                                        float(m["created_at"])))
            owner = db.execute("SELECT device_id FROM conversations WHERE uuid = ?",
                               (m["conversation_uuid"],)).fetchone()
            if owner is None or owner["device_id"] != device_id:
                continue  # another device's conversation: not this device's to add to
            u = m["usage"]
            db.execute(
                "INSERT INTO messages(uuid, conversation_uuid, device_id, content, type, sender, "
                "processing_time_ms, created_at, input_tokens, output_tokens, total_tokens) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(uuid) DO UPDATE SET content = excluded.content "
                "WHERE messages.device_id = excluded.device_id",
                (m["uuid"], m["conversation_uuid"], device_id, m["content"], m["type"],
                 m["sender"], m["processing_time_ms"], float(m["created_at"]),
                 u.get("input_tokens"), u.get("output_tokens"), u.get("total_tokens")))
    return SyncResult(len(convs), len(msgs))


def prune(db: Database, retention_days: float) -> int:
    cutoff = time.time() - retention_days * 86400
    return db.execute("DELETE FROM conversations WHERE started_at < ?", (cutoff,)).rowcount


# --- reads for the parents' page ---------------------------------------------------------------

def days(db: Database, tz_offset_s: int = 0) -> list[dict[str, Any]]:
    """Conversations grouped by day (newest first), with message and token counts."""
    rows = db.execute(
        "SELECT c.uuid, c.title, c.started_at, c.ended_at, d.name AS device, "
        "count(m.uuid) AS n, coalesce(sum(m.total_tokens), 0) AS tokens "
        "FROM conversations c JOIN devices d ON d.id = c.device_id "
        "LEFT JOIN messages m ON m.conversation_uuid = c.uuid "
        "GROUP BY c.uuid, c.title, c.started_at, c.ended_at, d.name "
        "ORDER BY c.started_at DESC LIMIT 1000").fetchall()
    out: list[dict[str, Any]] = []
    for r in rows:
        r = dict(r)
        r["n"], r["tokens"] = int(r["n"]), int(r["tokens"])
        day = dt.datetime.fromtimestamp(r["started_at"] + tz_offset_s,
                                        dt.UTC).strftime("%Y-%m-%d")
        if not out or out[-1]["day"] != day:
            out.append({"day": day, "conversations": [], "tokens": 0, "messages": 0})
        out[-1]["conversations"].append(r)
        out[-1]["tokens"] += r["tokens"]
        out[-1]["messages"] += r["n"]
    return out


def transcript(db: Database, conversation_uuid: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    c = db.execute("SELECT c.*, d.name AS device FROM conversations c JOIN devices d "
                   "ON d.id = c.device_id WHERE uuid = ?", (conversation_uuid,)).fetchone()
    if c is None:
        return None
    msgs = db.execute("SELECT * FROM messages WHERE conversation_uuid = ? ORDER BY created_at, "
                      "uuid", (conversation_uuid,)).fetchall()
    return dict(c), [dict(m) for m in msgs]
