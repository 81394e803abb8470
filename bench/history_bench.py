"""History figures: size on disk and sync time for 1k, 10k and 100k messages; commit latency.

Run: python bench/history_bench.py [--sizes 1000,10000,100000] [--batch 200]
Sync goes to the real server on loopback (plain HTTP, SQLite), with the real client.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device.config import Secret
from device.history.store import HistoryDB, HistoryStore, Usage
from device.history.sync import SyncClient, SyncSettings
from server import db as sdb
from server.app import Settings, TalkieServer

CHILD = "can you tell me why the moon changes shape every night and where it goes"
TOY = ("The moon doesn't really change shape! We see different amounts of its sunny side as it "
       "travels around the Earth. When we see all of it, that's a full moon.")


def disk_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def commit_latency(tmp: Path, sync_mode: str, turns: int = 200) -> list[float]:
    db = HistoryDB(tmp / f"lat-{sync_mode}.db")
    db._db.execute(f"PRAGMA synchronous={sync_mode}")
    cid = db.start_conversation()
    out = []
    for _ in range(turns):
        t = time.perf_counter()
        db.add_turn(cid, CHILD, TOY, {"turn_ms": 900}, Usage(120, 80, 200))
        out.append((time.perf_counter() - t) * 1000)
    db.close()
    return out


def fill(path: Path, messages: int) -> None:
    """Fill fast (synchronous=OFF, the turn API); durability is not what is measured here."""
    db = HistoryDB(path)
    db._db.execute("PRAGMA synchronous=OFF")
    per_conv = 20
    now = time.time()
    for c in range(messages // per_conv):
        cid = db.start_conversation(started_at=now - 3600 + c)
        for i in range(per_conv // 2):
            db.add_turn(cid, f"{CHILD} {i}", f"{TOY} {i}", {"turn_ms": 900}, Usage(120, 80, 200),
                        created_at=now - 3600 + c + i / 100)
        db.end_conversation(cid)
    db._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


async def sync_all(box: Path, url: str, token: str, batch: int) -> tuple[float, int]:
    store = await HistoryStore.open(box, retention_days=0)
    client = SyncClient(store, SyncSettings(url=url, token=Secret(token), batch_size=batch))
    t = time.perf_counter()
    while await client.sync_once():
        pass
    took = time.perf_counter() - t
    await store.close()
    return took, client.sent_batches


def measure(sizes: list[int], batch: int = 200) -> list[dict[str, float]]:
    """Per size: history size on the box and the server, fill time, and full sync time."""
    out = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for n in sizes:
            box = tmp / f"box-{n}" / "history.db"
            t = time.perf_counter()
            fill(box, n)
            fill_s = time.perf_counter() - t
            server_db = tmp / f"server-{n}.db"
            con = sdb.open_db(str(server_db))
            token = sdb.add_device(con, "bench")
            con.close()
            srv = TalkieServer(Settings(db=str(server_db), host="127.0.0.1", port=0))
            th = threading.Thread(target=srv.serve_forever, daemon=True)
            th.start()
            took, batches = asyncio.run(sync_all(box, srv.url, token, batch))
            srv.shutdown()
            srv.server_close()
            con = sdb.open_db(str(server_db))
            stored = con.execute("SELECT count(*) FROM messages").fetchone()[0]
            con.close()
            assert stored == n, (stored, n)
            out.append({"messages": n, "box_mb": disk_size(box) / 1e6,
                        "server_mb": disk_size(server_db) / 1e6, "fill_s": fill_s,
                        "sync_s": took, "batches": batches, "batch": batch})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--batch", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        full, normal = commit_latency(tmp, "FULL"), commit_latency(tmp, "NORMAL")
        print(f"add_turn commit latency over 200 turns (ms): FULL median "
              f"{statistics.median(full):.2f} p95 {sorted(full)[189]:.2f}; NORMAL median "
              f"{statistics.median(normal):.2f} p95 {sorted(normal)[189]:.2f}; "
              f"FULL/NORMAL {statistics.median(full) / statistics.median(normal):.2f}x")
    for r in measure([int(x) for x in args.sizes.split(",")], args.batch):
        n = r["messages"]
        print(f"{n:>7} messages: box history {r['box_mb']:6.2f} MB "
              f"({r['box_mb'] * 1e6 / n:.0f} B/msg), server {r['server_mb']:6.2f} MB; "
              f"fill {r['fill_s']:5.1f} s; sync {r['sync_s']:6.2f} s in {r['batches']} batches "
              f"of {r['batch']} ({n / r['sync_s']:,.0f} msg/s)")


if __name__ == "__main__":
    main()
