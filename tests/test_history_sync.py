"""Sync and server on loopback: outage then catch-up, idempotent batches, bad requests, auth."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.config import Secret
from device.errors import ConfigError
from device.history.store import HistoryStore, Usage
from device.history.sync import SyncClient, SyncSettings, check_url
from server import db as sdb
from server import openapi
from server.app import Settings, TalkieServer, redact
from tests.history_pg import cluster, new_database

ROOT = Path(__file__).resolve().parents[1]


class Running:
    def __init__(self, server: TalkieServer) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def start_server(db: Path | str, port: int = 0, **kw: object) -> Running:
    return Running(TalkieServer(Settings(db=str(db), host="127.0.0.1", port=port, **kw)))


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with cluster() as base:
        yield base


@pytest.fixture(params=["sqlite", "postgresql"])
def server_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The server's database URL: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "server.db")
    return new_database(request.getfixturevalue("postgres"))


@pytest.fixture
def server(server_db: str) -> Iterator[tuple[Running, str, str]]:
    db_path = server_db
    con = sdb.open_db(str(db_path))
    token = sdb.add_device(con, "box-1")
    con.close()
    run = start_server(db_path)
    yield run, token, db_path
    run.stop()


def counts(db_path: Path | str) -> tuple[int, int]:
    con = sdb.open_db(str(db_path))
    try:
        return (con.execute("SELECT count(*) AS n FROM conversations").fetchone()["n"],
                con.execute("SELECT count(*) AS n FROM messages").fetchone()["n"])
    finally:
        con.close()


def post(port: int, body: bytes, token: str | None, ctype: str = "application/json",
         length: int | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    headers = {"Content-Type": ctype, "Content-Length": str(len(body) if length is None else length)}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("POST", "/api/v1/sync", body=body, headers=headers)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered before taking the whole body; read that answer
    resp = conn.getresponse()
    data = json.loads(resp.read() or b"{}")
    conn.close()
    return resp.status, data


def batch(n: int, conv: str = "c0000000-0000-4000-8000-000000000000") -> bytes:
    return json.dumps({
        "conversations": [{"uuid": conv, "title": "dinosaurs", "active": False, "metadata": {},
                           "started_at": 1.7e9, "ended_at": 1.7e9 + 60}],
        "messages": [{"uuid": f"m{i:07d}-0000-4000-8000-000000000000", "conversation_uuid": conv,
                      "content": f"words {i}", "type": "text",
                      "sender": "user" if i % 2 == 0 else "assistant",
                      "processing_time_ms": 800, "created_at": 1.7e9 + i,
                      "usage": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}}
                     for i in range(n)]}).encode()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def test_server_down_then_up_every_message_arrives_exactly_once(tmp_path: Path,
                                                                      server_db: str) -> None:
    db_path = server_db
    con = sdb.open_db(str(db_path))
    token = sdb.add_device(con, "box-1")
    con.close()
    port = free_port()
    store = await HistoryStore.open(tmp_path / "box.db")
    client = SyncClient(store, SyncSettings(url=f"http://127.0.0.1:{port}", token=Secret(token),
                                            batch_size=7, backoff_base_s=0.05,
                                            backoff_cap_s=0.3, idle_poll_s=0.2))
    task = asyncio.create_task(client.run())
    expected: set[str] = set()
    conv_ids = []
    for c in range(3):  # the box keeps talking while the server is away
        cid = await store.start_conversation()
        conv_ids.append(cid)
        for i in range(10):
            t = await store.add_turn(cid, f"child {c}.{i}", f"toy {c}.{i}", {"turn_ms": 700},
                                     Usage(5, 7, 12))
            expected |= {t.user_uuid, t.assistant_uuid}
        await store.end_conversation(cid)
    await asyncio.sleep(0.5)
    assert client.failures >= 2, "the client should have been failing while the server was down"
    assert await store.outbox_size() > 0
    run = await asyncio.to_thread(start_server, db_path, port)
    try:
        async with asyncio.timeout(20):
            while await store.outbox_size():
                await asyncio.sleep(0.05)
        # More turns after catching up go through too.
        t = await store.add_turn(conv_ids[0], "one more", "sure")
        expected |= {t.user_uuid, t.assistant_uuid}
        async with asyncio.timeout(10):
            while await store.outbox_size():
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.to_thread(run.stop)
        await store.close()
    con = sdb.open_db(db_path)
    rows = [r["uuid"] for r in con.execute("SELECT uuid FROM messages").fetchall()]
    ended = con.execute("SELECT count(*) AS n FROM conversations WHERE ended_at IS NOT NULL"
                        ).fetchone()["n"]
    con.close()
    assert sorted(rows) == sorted(expected)  # all there, none twice
    assert ended == 3
    assert counts(db_path) == (3, 62)


def test_same_batch_twice_stores_once(server: tuple[Running, str, str]) -> None:
    run, token, db_path = server
    body = batch(20)
    assert post(run.port, body, token) == (200, {"conversations": 1, "messages": 20})
    assert post(run.port, body, token) == (200, {"conversations": 1, "messages": 20})
    assert counts(db_path) == (1, 20)


@pytest.mark.parametrize("case", ["wrong token", "no token", "malformed JSON", "wrong shape",
                                  "10 MB body", "not JSON type"])
def test_bad_requests_get_clear_4xx_and_change_nothing(server: tuple[Running, str, str],
                                                       case: str) -> None:
    run, token, db_path = server
    assert post(run.port, batch(2, "c1111111-0000-4000-8000-000000000000"), token)[0] == 200
    before = counts(db_path)
    status, data = {
        "wrong token": lambda: post(run.port, batch(3), "tkd_" + "x" * 43),
        "no token": lambda: post(run.port, batch(3), None),
        "malformed JSON": lambda: post(run.port, b'{"messages": [', token),
        "wrong shape": lambda: post(run.port, json.dumps({"messages": [{"uuid": 1}]}).encode(),
                                    token),
        "10 MB body": lambda: post(run.port, b"{" + b" " * (10 << 20) + b"}", token),
        "not JSON type": lambda: post(run.port, batch(3), token, ctype="text/plain"),
    }[case]()
    want = {"wrong token": 401, "no token": 401, "malformed JSON": 400, "wrong shape": 400,
            "10 MB body": 413, "not JSON type": 415}[case]
    assert status == want
    assert isinstance(data.get("error"), str) and len(data["error"]) > 10
    assert counts(db_path) == before
    # The server still serves after each refusal.
    assert post(run.port, batch(1, "c2222222-0000-4000-8000-000000000000"), token)[0] == 200


def test_a_device_cannot_overwrite_another_devices_messages(server: tuple[Running, str, str]) -> None:
    run, token, db_path = server
    con = sdb.open_db(str(db_path))
    other = sdb.add_device(con, "box-2")
    con.close()
    assert post(run.port, batch(2), token)[0] == 200
    forged = batch(2).replace(b"words 0", b"forged")
    assert post(run.port, forged, other)[0] == 200
    con = sdb.open_db(db_path)
    assert con.execute("SELECT count(*) AS n FROM messages WHERE content = 'forged'"
                       ).fetchone()["n"] == 0
    con.close()


def test_tokens_and_password_are_hashed_at_rest(tmp_path: Path) -> None:
    db_path = tmp_path / "s.db"
    con = sdb.open_db(str(db_path))
    token = sdb.add_device(con, "box")
    sdb.set_password(con, "correct horse battery")
    con.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("s.db*"))
    assert token.encode() not in raw and b"correct horse" not in raw
    con = sdb.open_db(str(db_path))
    assert sdb.parent_password_ok(con, "correct horse battery")
    assert not sdb.parent_password_ok(con, "wrong")
    assert sdb.device_for_token(con, token) is not None
    assert sdb.device_for_token(con, token + "x") is None


def test_login_is_rate_limited(server: tuple[Running, str, str]) -> None:
    run, _, db_path = server
    con = sdb.open_db(str(db_path))
    sdb.set_password(con, "a good password")
    con.close()

    def login(pw: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=10)
        body = f"password={pw}".encode()
        conn.request("POST", "/login", body=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        status = conn.getresponse().status
        conn.close()
        return status

    assert [login("nope") for _ in range(5)] == [401] * 5
    assert login("a good password") == 429  # even the right one waits out the window


def test_plain_http_off_loopback_is_refused(tmp_path: Path) -> None:
    with pytest.raises(sdb.ServerConfigError, match="--tls-cert.*--behind-proxy"):
        TalkieServer(Settings(db=str(tmp_path / "s.db"), host="0.0.0.0", port=0))
    with pytest.raises(ConfigError, match="unencrypted; use https"):
        check_url("http://192.0.2.7:8750")
    assert check_url("https://h.example/") == "https://h.example/api/v1/sync"
    with pytest.raises(sdb.ServerConfigError, match="cannot connect to PostgreSQL"):
        sdb.open_db("postgresql://u@127.0.0.1:1/db")


def test_openapi_is_served_and_matches_the_file_in_the_repo(server: tuple[Running, str, str]) -> None:
    run, _, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=10)
    conn.request("GET", "/openapi.json")
    served = conn.getresponse().read().decode()
    conn.close()
    assert json.loads(served)["paths"]["/api/v1/sync"]["post"]["responses"]["413"]
    assert served == (ROOT / "server" / "openapi.json").read_text() == openapi.text(), \
        "regenerate: python -m server openapi > server/openapi.json"


def test_add_device_cli_prints_token_once(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    out = subprocess.run([sys.executable, "-m", "server", "--db", str(db), "add-device", "box"],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    token = out.stdout.strip()
    assert token.startswith("tkd_") and "not shown again" in out.stderr
    con = sdb.open_db(str(db))
    assert sdb.device_for_token(con, token) is not None
    again = subprocess.run([sys.executable, "-m", "server", "--db", str(db), "add-device", "box"],
                           capture_output=True, text=True, cwd=ROOT, check=False)
    assert again.returncode == 2 and "exists" in again.stderr


async def test_wrong_token_backs_off_and_never_logs_the_token(server: tuple[Running, str, str],
                                                              tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    run, _, db_path = server
    secret = "tkd_" + "s3cr3t" * 7
    store = await HistoryStore.open(tmp_path / "box.db")
    cid = await store.start_conversation()
    await store.add_turn(cid, "hello", "hi there")
    client = SyncClient(store, SyncSettings(url=f"http://127.0.0.1:{run.port}",
                                            token=Secret(secret), backoff_base_s=0.02,
                                            backoff_cap_s=0.1))
    caplog.set_level("DEBUG")
    task = asyncio.create_task(client.run())
    # Two refusals, however long a loaded server takes to check a token (a fixed 0.6 s was
    # flaky with four workers and PostgreSQL): the backoff is 0.02-0.1 s.
    async with asyncio.timeout(20):
        while client.failures < 2:
            await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert client.failures >= 2 and await store.outbox_size() == 3  # kept for later
    await store.close()
    assert "HTTP 401" in caplog.text and "add-device" in caplog.text
    assert secret not in caplog.text and "s3cr3t" not in repr(client.settings)
    assert counts(db_path) == (0, 0)


async def test_toy_greeting_without_child_words_stores_one_message(tmp_path: Path) -> None:
    store = await HistoryStore.open(tmp_path / "box.db")
    cid = await store.start_conversation()
    turn = await store.add_turn(cid, "", "Hello! What shall we talk about?")
    conv = await store.get_conversation(cid)
    assert conv is not None and [m.sender for m in conv.messages] == ["assistant"]
    assert turn.user_uuid == ""
    await store.close()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_sync_over_tls_trusts_only_the_given_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    db_path = tmp_path / "server.db"
    con = sdb.open_db(str(db_path))
    token = sdb.add_device(con, "box")
    con.close()
    run = Running(TalkieServer(Settings(db=str(db_path), host="127.0.0.1", port=0,
                                        tls_cert=str(cert), tls_key=str(key))))
    assert run.server.url.startswith("https://")
    store = await HistoryStore.open(tmp_path / "box.db")
    try:
        cid = await store.start_conversation()
        await store.add_turn(cid, "secure?", "yes")
        untrusting = SyncClient(store, SyncSettings(url=run.server.url, token=Secret(token)))
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusting.sync_once()
        assert await store.outbox_size() == 3
        trusting = SyncClient(store, SyncSettings(url=run.server.url, token=Secret(token),
                                                  ca_file=str(cert)))
        assert await trusting.sync_once() == 3
        assert counts(db_path) == (1, 2)
    finally:
        await store.close()
        await asyncio.to_thread(run.stop)


def test_database_password_is_not_logged() -> None:
    assert redact("postgresql://talkie:hunter2@db.example/talkie") == \
        "postgresql://talkie:***@db.example/talkie"
    assert redact("/var/lib/talkie-server/history.db") == "/var/lib/talkie-server/history.db"


def test_server_retention_deletes_old_conversations_with_their_messages(server_db: str) -> None:
    con = sdb.open_db(server_db)
    device = sdb.device_for_token(con, sdb.add_device(con, "box"))
    assert device is not None
    old = json.loads(batch(4, "c3333333-0000-4000-8000-000000000000"))
    new = json.loads(batch(2, "c4444444-0000-4000-8000-000000000000").replace(b"m0", b"n0"))
    old["conversations"][0]["started_at"] = 1.0  # 1970: far past any retention
    new["conversations"][0]["started_at"] = time.time()
    sdb.upsert_batch(con, device, old)
    sdb.upsert_batch(con, device, new)
    assert sdb.prune(con, 30) == 1
    con.close()
    assert counts(server_db) == (1, 2)


def test_behind_proxy_refuses_what_the_proxy_marks_as_plain_http(tmp_path: Path) -> None:
    run = start_server(tmp_path / "s.db", behind_proxy=True)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=10)
        conn.request("GET", "/login", headers={"X-Forwarded-Proto": "http"})
        resp = conn.getresponse()
        assert resp.status == 403 and "use https" in json.loads(resp.read())["error"]
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=10)
        conn.request("GET", "/login", headers={"X-Forwarded-Proto": "https"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert run.server.cookie_secure  # session cookies only over the proxy's TLS
        conn.close()
    finally:
        run.stop()
