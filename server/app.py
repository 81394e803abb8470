"""The HTTP side: the sync API for boxes and the parents' pages, on the stdlib's threaded server.

One process, no framework: the API is one POST and the pages are three GETs, so http.server
is enough and keeps the server a `pip install` with no dependencies.

TLS: the server serves HTTPS itself (--tls-cert/--tls-key), or sits behind a TLS proxy
(--behind-proxy), or listens on loopback only. Anything else is refused at start.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from server import db as sdb
from server import openapi, pages

log = logging.getLogger(__name__)

COOKIE = "talkie_session"


@dataclass(frozen=True)
class Settings:
    db: str = "talkie-server.db"
    host: str = "127.0.0.1"
    port: int = 8750
    behind_proxy: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    retention_days: float = 365.0
    max_body: int = 1 << 20
    login_attempts: int = 5          # failed logins per client ...
    login_window_s: float = 300.0    # ... in this window, then 429


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoginLimiter:
    """Failed logins per client address in a sliding window."""

    def __init__(self, attempts: int, window_s: float) -> None:
        self.attempts, self.window_s = attempts, window_s
        self._fails: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float:
        with self._lock:
            q = self._fails.get(client)
            now = time.monotonic()
            while q and q[0] < now - self.window_s:
                q.popleft()
            if q is not None and len(q) >= self.attempts:
                return q[0] + self.window_s - now
            return 0.0

    def failed(self, client: str) -> None:
        with self._lock:
            self._fails.setdefault(client, collections.deque()).append(time.monotonic())

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._fails.pop(client, None)


class TalkieServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, settings: Settings) -> None:
        tls = bool(settings.tls_cert)
        if not (tls or settings.behind_proxy or is_loopback(settings.host)):
            raise sdb.ServerConfigError(
                f"refusing to serve plain HTTP on {settings.host}: give --tls-cert and "
                f"--tls-key, or --behind-proxy if a TLS proxy forwards to this port, or "
                f"listen on 127.0.0.1")
        if tls != bool(settings.tls_key):
            raise sdb.ServerConfigError("--tls-cert and --tls-key go together; give both")
        self.settings = settings
        self.tls = tls
        self.cookie_secure = tls or settings.behind_proxy
        self.limiter = LoginLimiter(settings.login_attempts, settings.login_window_s)
        self._local = threading.local()
        sdb.open_db(settings.db).close()  # create and migrate once, before serving
        if ":" in settings.host:
            self.address_family = socket.AF_INET6
        super().__init__((settings.host, settings.port), Handler)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
            self.socket = ctx.wrap_socket(self.socket, server_side=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # One thread per connection: close its database connection when the thread ends.
        try:
            super().process_request_thread(request, client_address)
        finally:
            con = getattr(self._local, "db", None)
            if con is not None:
                con.close()
                self._local.db = None

    def db(self) -> sdb.Database:
        """This request thread's connection."""
        con = getattr(self._local, "db", None)
        if con is None:
            con = self._local.db = sdb.open_db(self.settings.db)
        return con

    def start_retention(self, stop: threading.Event, every_s: float = 3600) -> threading.Thread:
        def loop() -> None:
            con = sdb.open_db(self.settings.db)
            while not stop.is_set():
                try:
                    n = sdb.prune(con, self.settings.retention_days)
                    if n:
                        log.info("retention: deleted %d conversations", n)
                except sdb.DB_ERRORS:
                    log.exception("retention failed; retrying in %ss", every_s)
                stop.wait(every_s)
            con.close()
        t = threading.Thread(target=loop, name="retention", daemon=True)
        t.start()
        return t


class Handler(BaseHTTPRequestHandler):
    server: TalkieServer
    protocol_version = "HTTP/1.1"
    server_version = "talkie-server"
    sys_version = ""

    # --- plumbing ---------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        # Never the query string or headers: tokens and cookies stay out of the log.
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy",
                         "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                         "frame-ancestors 'none'")
        if self.server.tls:
            self.send_header("Strict-Transport-Security", "max-age=31536000")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", headers)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": message}, headers)

    def _html(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self._send(status, body, "text/html; charset=utf-8", headers)

    def _redirect(self, to: str, headers: dict[str, str] | None = None) -> None:
        self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": to, **(headers or {})})

    def _refuse_body(self, status: int, message: str) -> None:
        """Answer without reading the body, then discard what the client still sends for a
        moment (not kept anywhere) so it sees the answer instead of a connection reset."""
        self.close_connection = True
        self._error(status, message)
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.5)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and self.connection.recv(65536):
                pass
        except OSError:
            pass

    def _body(self) -> bytes | None:
        """The request body within the size limit, or None after answering 4xx."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._refuse_body(HTTPStatus.LENGTH_REQUIRED,
                              "chunked bodies are not accepted; send Content-Length")
            return None
        raw = self.headers.get("Content-Length")
        if raw is None:
            self._refuse_body(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
            return None
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            self._refuse_body(HTTPStatus.BAD_REQUEST, "Content-Length is not a number")
            return None
        limit = self.server.settings.max_body
        if length > limit:
            self._refuse_body(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                              f"body of {length} bytes is over the limit of {limit}; "
                              f"send smaller batches")
            return None
        return self.rfile.read(length)

    def _proxy_refuses_plain_http(self) -> bool:
        proto = self.headers.get("X-Forwarded-Proto")
        if self.server.settings.behind_proxy and proto is not None and proto.lower() != "https":
            self.close_connection = True
            self._error(HTTPStatus.FORBIDDEN, "plain HTTP is refused; use https://")
            return True
        return False

    def _client(self) -> str:
        return self.client_address[0]

    def _session(self) -> str | None:
        cookie = SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie", ""))
        except CookieError:  # a malformed cookie header is simply no session
            return None
        morsel = cookie.get(COOKIE)
        if morsel is None or not sdb.session_valid(self.server.db(), morsel.value):
            return None
        return morsel.value

    def _cookie(self, value: str, max_age: int) -> dict[str, str]:
        secure = "; Secure" if self.server.cookie_secure else ""
        return {"Set-Cookie": f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; "
                              f"Max-Age={max_age}{secure}"}

    # --- routes -----------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self._proxy_refuses_plain_http():
            return
        path = urlsplit(self.path).path
        if path == "/openapi.json":
            self._send(HTTPStatus.OK, openapi.text().encode(), "application/json")
        elif path == "/api/v1/health":
            self._json(HTTPStatus.OK, {"ok": True})
        elif path == "/login":
            self._html(HTTPStatus.OK, pages.login())
        elif self._session() is None:
            self._redirect("/login")
        elif path == "/":
            self._html(HTTPStatus.OK, pages.index(sdb.days(self.server.db())))
        elif path.startswith("/conversations/"):
            found = sdb.transcript(self.server.db(), path.removeprefix("/conversations/"))
            if found is None:
                self._html(HTTPStatus.NOT_FOUND, pages.not_found())
            else:
                self._html(HTTPStatus.OK, pages.conversation(*found))
        else:
            self._html(HTTPStatus.NOT_FOUND, pages.not_found())

    def do_POST(self) -> None:
        if self._proxy_refuses_plain_http():
            return
        path = urlsplit(self.path).path
        if path == "/api/v1/sync":
            self._sync()
        elif path == "/login":
            self._login()
        elif path == "/logout":
            token = self._session()
            if self._body() is None:
                return
            if token:
                sdb.end_session(self.server.db(), token)
            self._redirect("/login", self._cookie("", 0))
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint {path}; see /openapi.json")

    def _sync(self) -> None:
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        device = (sdb.device_for_token(self.server.db(), token.strip())
                  if scheme.lower() == "bearer" and token.strip() else None)
        if device is None:
            self.close_connection = True
            self._refuse_body(HTTPStatus.UNAUTHORIZED,
                              "missing or wrong device token; create one with "
                              "'python -m server add-device NAME' and put it in [sync] token_file")
            return
        body = self._body()
        if body is None:
            return
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                        "Content-Type must be application/json")
            return
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            self._error(HTTPStatus.BAD_REQUEST, f"body is not valid JSON ({e.__class__.__name__}"
                                                f" at {getattr(e, 'pos', '?')}); send UTF-8 JSON")
            return
        try:
            result = sdb.upsert_batch(self.server.db(), device, data)
        except sdb.BadBatch as e:
            self._error(HTTPStatus.BAD_REQUEST, f"{e}; see /openapi.json")
            return
        except sdb.DB_ERRORS:
            log.exception("sync: database error")
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "the server's database failed; retry later")
            return
        self._json(HTTPStatus.OK, {"conversations": result.conversations,
                                   "messages": result.messages})

    def _login(self) -> None:
        client = self._client()
        wait = self.server.limiter.retry_after(client)
        if wait > 0:
            self._refuse_body(HTTPStatus.TOO_MANY_REQUESTS,
                              f"too many failed logins; try again in {int(wait) + 1} s")
            return
        body = self._body()
        if body is None:
            return
        form = parse_qs(body.decode("utf-8", "replace"))
        password = (form.get("password") or [""])[0]
        con = self.server.db()
        if not sdb.parent_password_ok(con, password):
            self.server.limiter.failed(client)
            log.info("failed parent login from %s", client)
            self._html(HTTPStatus.UNAUTHORIZED, pages.login("Wrong password."))
            return
        self.server.limiter.succeeded(client)
        token = sdb.new_session(con)
        self._redirect("/", self._cookie(token, 7 * 86400))


def redact(db_url: str) -> str:
    """A database URL fit for a log: no password."""
    parts = urlsplit(db_url)
    if parts.password is None:
        return db_url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def serve(settings: Settings, ready: threading.Event | None = None) -> None:
    """Run until interrupted."""
    server = TalkieServer(settings)
    stop = threading.Event()
    server.start_retention(stop)
    log.info("talkie-server on %s (database %s)", server.url, redact(settings.db))
    if ready is not None:
        ready.set()
    try:
        server.serve_forever()
    finally:
        stop.set()
        server.server_close()
