"""`talkie history list/show` as a parent runs it over SSH, on a real history file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from device.history.cli import add_commands
from device.history.store import HistoryDB, Usage


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="talkie")
    add_commands(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_list_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db_path = tmp_path / "h.db"
    with HistoryDB(db_path) as db:
        cid = db.start_conversation()
        db.add_turn(cid, "tell me about owls", "Owls hoot at night!", {"turn_ms": 800},
                    Usage(1, 2, 3))
    assert run(["history", "list", "--db", str(db_path)]) == 0
    out = capsys.readouterr().out
    assert cid[:8] in out and "tell me about owls" in out and "2 msgs" in out
    assert run(["history", "show", cid[:8], "--db", str(db_path)]) == 0
    out = capsys.readouterr().out
    assert "child: tell me about owls" in out and "toy: Owls hoot at night!" in out
    assert "2 messages, 3 tokens" in out
    assert run(["history", "show", cid, "--db", str(db_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["messages"][1]["usage"]["total_tokens"] == 3


def test_missing_file_and_unknown_id_say_what_to_do(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["history", "list", "--db", str(tmp_path / "none.db")]) == 1
    assert "pass --db FILE" in capsys.readouterr().err
    with HistoryDB(tmp_path / "h.db"):
        pass
    assert run(["history", "show", "abc", "--db", str(tmp_path / "h.db")]) == 1
    assert "talkie history list" in capsys.readouterr().err
