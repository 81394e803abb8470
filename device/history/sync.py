"""Sync: push the history's outbox to the optional server, at least once, idempotently.

Every change is queued in the outbox in the same transaction as the change itself; this task
sends the oldest changes in batches and forgets them only after the server said it stored them.
The server upserts by uuid, so a batch sent twice (a lost answer, a crash after sending) is
stored once. With no server, or the server down, the box keeps working and the outbox waits;
retries back off with full jitter.

HTTP is the stdlib's urllib in a worker thread: one small POST every few seconds does not
justify a dependency. TLS is chosen by the URL: https always; http only to a loopback address
unless `allow_http` is set.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import json
import logging
import random
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from device.config import Secret, SyncConfig
from device.errors import ConfigError
from device.history.store import HistoryError, HistoryStore

log = logging.getLogger(__name__)

API_PATH = "/api/v1/sync"


class SyncRejected(Exception):
    """The server refused the batch for good (4xx other than 408/429): retrying cannot help."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status

    @property
    def about_the_content(self) -> bool:
        """400/413/422: this batch's content or size, not the token or the URL."""
        return self.status in (400, 413, 422)


@dataclass(frozen=True)
class SyncSettings:
    url: str
    token: Secret
    batch_size: int = 200
    max_batch_bytes: int = 512 * 1024
    idle_poll_s: float = 60.0
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 300.0
    timeout_s: float = 20.0
    ca_file: str = ""
    allow_http: bool = False


def check_url(url: str, allow_http: bool = False) -> str:
    """The sync endpoint for a server base URL, or a ConfigError naming the fix."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigError(f"[sync] url {url!r} is not an http(s) URL; write e.g. "
                          f"url = \"https://history.example.org\"")
    if parts.scheme == "http" and not allow_http:
        loopback = host == "localhost"
        try:
            loopback = loopback or ipaddress.ip_address(host).is_loopback
        except ValueError:
            pass
        if not loopback:
            raise ConfigError(f"[sync] url {url!r} is plain http to another machine: the "
                              f"child's words would cross the network unencrypted; use https "
                              f"(or set [sync] allow_http = true on a trusted network)")
    return url.rstrip("/") + API_PATH


def load_token(token: str, token_file: str) -> Secret:
    """The device token from the config or its file (the file wins); never logged."""
    if token_file:
        try:
            value = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"[sync] token_file {token_file}: cannot read it ({e.strerror}); "
                              f"put the token from 'python -m server add-device NAME' "
                              f"there") from None
        return Secret(value)
    return Secret(token.strip())


def client_from_config(store: HistoryStore, sync: SyncConfig) -> SyncClient | None:
    """The daemon's sync task from [sync], or None when no url is set (no server)."""
    if not sync.url:
        return None
    return SyncClient(store, SyncSettings(
        url=sync.url, token=load_token(sync.token, sync.token_file),
        batch_size=sync.batch_size, ca_file=sync.ca_file, allow_http=sync.allow_http))


class SyncClient:
    """`await SyncClient(store, settings).run()` in the daemon's TaskGroup; cancel to stop."""

    def __init__(self, store: HistoryStore, settings: SyncSettings) -> None:
        self.store = store
        self.settings = settings
        self.endpoint = check_url(settings.url, settings.allow_http)
        if not settings.token:
            raise ConfigError("[sync] has a url but no token; set token_file to the file "
                              "holding the token from 'python -m server add-device NAME'")
        raw = settings.token.reveal()
        if not raw.isascii() or not raw.isprintable() or " " in raw:
            raise ConfigError("[sync] token has spaces or unprintable characters; copy the "
                              "token line from 'python -m server add-device NAME' exactly")
        self._ssl = ssl.create_default_context(cafile=settings.ca_file or None)
        self.sent_batches = 0
        self.failures = 0  # consecutive; drives the backoff
        # Halved on each refused batch until the refused change is alone (then set aside).
        self._limit = settings.batch_size
        self.refused = 0

    async def run(self) -> None:
        """Send until cancelled. Never raises for network or server trouble."""
        while True:
            try:
                sent = await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # Network, server, or disk trouble (HistoryError): the box keeps talking and the
                # outbox keeps everything until the next try. Unexpected errors get a traceback.
                self.failures += 1
                delay = random.uniform(0, min(self.settings.backoff_cap_s,
                                              self.settings.backoff_base_s * 2 ** self.failures))
                if isinstance(e, (OSError, SyncRejected, http.client.HTTPException)):
                    log.warning("history sync failed (%s); retrying in %.1f s", e, delay)
                else:
                    log.exception("history sync failed unexpectedly; retrying in %.1f s", delay)
                await asyncio.sleep(delay)
                continue
            self.failures = 0
            if sent == 0:
                self.store.changed.clear()
                # Re-check after clearing: a write between the send and the clear is not missed.
                if await self.store.outbox_size() == 0:
                    try:
                        # asyncio.timeout: 3.11's wait_for can swallow our cancellation
                        async with asyncio.timeout(self.settings.idle_poll_s):
                            await self.store.changed.wait()
                    except TimeoutError:
                        pass

    async def sync_once(self) -> int:
        """Send one batch; returns how many changes it took off the queue (0: nothing queued).

        A batch the server refuses for its content (400/413/422) must not block every turn
        behind it: the next batches are halved until the refused change is alone, which is set
        aside on the box with the reason (and queued again at the next start).
        """
        items = await self.store.outbox_batch(self._limit)
        if not items:
            return 0
        body, seqs = self._encode(items)
        if body is not None:
            try:
                await asyncio.to_thread(self._post, body)
            except SyncRejected as e:
                if not e.about_the_content:
                    raise
                if len(seqs) > 1:
                    self._limit = max(1, len(seqs) // 2)
                    log.info("history sync: the server refused a batch of %d changes (%s); "
                             "trying %d at a time", len(seqs), e, self._limit)
                    return 0
                item = next(i for i in items if i.seq == seqs[0])
                await self.store.outbox_refuse(item.seq, str(e))
                self.refused += 1
                self._limit = self.settings.batch_size
                log.warning("history sync: the server refused one %s (%s): %s; it stays on the "
                            "box, set aside, and is sent again at the next start",
                            item.kind, item.payload.get("uuid", "?"), e,
                            extra={"TALKIE_EVENT": "sync_refused"})
                return 1
            self.sent_batches += 1
        await self.store.outbox_ack(seqs)
        return len(seqs)

    def _encode(self, items: list) -> tuple[bytes | None, list[int]]:
        convs, msgs, seqs = [], [], []
        size = 64
        for item in items:
            if item.payload:
                encoded = len(json.dumps(item.payload))
                if seqs and size + encoded > self.settings.max_batch_bytes:
                    break  # the rest goes in the next batch
                size += encoded + 1
                (convs if item.kind == "conversation" else msgs).append(item.payload)
            seqs.append(item.seq)
        if not convs and not msgs:
            return None, seqs  # only rows deleted by retention: acknowledge, send nothing
        return json.dumps({"conversations": convs, "messages": msgs}).encode(), seqs

    def _post(self, body: bytes) -> None:
        req = urllib.request.Request(
            self.endpoint, data=body, method="POST",
            headers={"Content-Type": "application/json",
                     "Authorization": f"Bearer {self.settings.token.reveal()}"})
        try:
            with urllib.request.urlopen(req, timeout=self.settings.timeout_s,
                                        context=self._ssl) as resp:
                resp.read()
        except urllib.error.HTTPError as e:
            detail = _error_text(e)
            if 400 <= e.code < 500 and e.code not in (408, 429):
                raise SyncRejected(f"server refused the batch: HTTP {e.code} {detail}",
                                   e.code) from None
            raise OSError(f"server answered HTTP {e.code} {detail}") from None
        except urllib.error.URLError as e:
            raise OSError(f"cannot reach the history server: {e.reason}") from None


def _error_text(e: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(e.read(4096)).get("error", ""))
    except (ValueError, OSError, AttributeError):
        return ""


__all__ = [
    "HistoryError",
    "SyncClient",
    "SyncRejected",
    "SyncSettings",
    "check_url",
    "client_from_config",
    "load_token",
]
