"""`talkie history list` and `talkie history show ID`: read the box's history over SSH.

Reads with the synchronous store (no daemon needed; WAL lets it read while the daemon writes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import asdict
from pathlib import Path

from device.config import load
from device.errors import TalkieError
from device.history.store import HistoryDB

DEFAULT_CONFIG = Path("/etc/talkie/config.toml")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `history list` and `history show` on the CLI's subparsers."""
    hist = sub.add_parser("history", help="list and read conversations kept on this box")
    hsub = hist.add_subparsers(dest="history_cmd", required=True)
    for name, help_ in (("list", "conversations, newest first"),
                        ("show", "one conversation's transcript")):
        p = hsub.add_parser(name, help=help_)
        p.add_argument("--config", help="config file (default /etc/talkie/config.toml if it "
                                        "exists)")
        p.add_argument("--db", help="history file (default: [history] path from the config)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "list":
            p.add_argument("-n", "--limit", type=int, default=20)
            p.set_defaults(func=cmd_list)
        else:
            p.add_argument("id", help="conversation id (the first 8 characters are enough)")
            p.set_defaults(func=cmd_show)


def _open(args: argparse.Namespace) -> HistoryDB:
    if args.db:
        path = Path(args.db)
    else:
        cfg_path = args.config or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.exists() else None)
        path = Path(load(cfg_path).history.path)
    if not path.exists():
        raise TalkieError(f"no history at {path}; the box has not talked yet, or set "
                          f"[history] path / pass --db FILE")
    return HistoryDB(path)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def cmd_list(args: argparse.Namespace) -> int:
    try:
        with _open(args) as db:
            convs = db.list_conversations(args.limit)
    except TalkieError as e:
        print(f"talkie history: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([asdict(c) for c in convs], indent=2))
        return 0
    if not convs:
        print("no conversations yet")
    for c in convs:
        state = "active" if c.active else "ended"
        print(f"{c.uuid[:8]}  {_when(c.started_at)}  {c.message_count:4d} msgs  {state:6s}  "
              f"{c.title or '(untitled)'}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    try:
        with _open(args) as db:
            conv = db.get_conversation(args.id)
    except TalkieError as e:
        print(f"talkie history: {e}", file=sys.stderr)
        return 1
    if conv is None:
        print(f"talkie history: no single conversation matches {args.id!r}; see "
              f"'talkie history list'", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(conv), indent=2))
        return 0
    print(f"{conv.title or '(untitled)'}  [{conv.uuid}]")
    print(f"started {_when(conv.started_at)}, ended {_when(conv.ended_at)}")
    who = {"user": "child", "assistant": "toy", "system": "system"}
    tokens = 0
    for m in conv.messages:
        tokens += m.usage.total_tokens or 0
        text = f"[recording {m.content}]" if m.type == "audio" else m.content
        print(f"  {dt.datetime.fromtimestamp(m.created_at):%H:%M:%S} {who[m.sender]:>6}: {text}")
    print(f"{len(conv.messages)} messages, {tokens} tokens")
    return 0
