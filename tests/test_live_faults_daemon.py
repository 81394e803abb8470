"""Every Live API fault of issue 3, through the whole daemon (`talkie simulate` in its own
process, real google-genai SDK, the simulator in this process so its records can be read).

Transient faults: the conversation completes (both of the child's turns answered), and each
new connection's setup carries the newest resumption handle issued before it. Permanent
faults: one attempt, the `error` state, one log line naming the cause and the fix.
"""

from __future__ import annotations

import json
import re
import wave
from pathlib import Path

import pytest

from device.history.store import HistoryStore
from device.live.simulator import FaultPlan, Simulator
from tests.live_helpers import conversation_wav, fast_sim, simulate, write_config

KEY = "sk-test-DO-NOT-PRINT-1234"
CONFIG = """\
[live]
connect_timeout_s = 4.0
reply_timeout_s = 3.0

[limits]
daily_budget_minutes = 30
budget_counts = "audio"
"""


@pytest.fixture(scope="module")
def two_turns(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("mic")
    return conversation_wav(d / "two.wav", ["Hello Talkie", "What do dragons eat?"])


@pytest.fixture(scope="module")
def one_turn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("mic")
    return conversation_wav(d / "one.wav", ["Hello Talkie"], tail_s=1.0)


def assert_survived(run) -> dict:
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert KEY not in run.stdout + run.stderr
    return run.summary


def assert_each_setup_carries_the_newest_handle(sim: Simulator, *, refused: int | None = None
                                                ) -> None:
    newest: str | None = None
    for conn in sim.connections:
        if conn.setup is not None and conn.index != refused and newest is not None:
            sent = (conn.setup.get("sessionResumption") or {}).get("handle")
            assert sent == newest, f"connection {conn.index} did not resume"
        if conn.index == refused:
            newest = None  # forgotten: the next setup starts afresh
        newest = conn.handles_sent[-1] if conn.handles_sent else newest


def budget_used(state: Path) -> float:
    path = state / "budget.json"
    return json.loads(path.read_text())["used_s"] if path.exists() else 0.0


TRANSIENT = {
    # fault specs: every turn-2 fault fires on connection 0 (the first) only
    "close-1011-mid-reply": ["close-1011-mid-reply:2"],
    "goaway": ["goaway:1"],
    "tcp-drop": ["tcp-drop:2"],
    "oversize-frame": ["oversize-frame:2"],
    "unknown-key": ["unknown-key:2"],
    "no-reply": ["no-reply:2"],
    # a goAway after turn 1 makes a second setup for these to hit
    "slow-setup": ["goaway:1", "slow-setup@1+10"],
    "tcp-drop-at-setup": ["goaway:1", "tcp-drop@1:0"],
}


@pytest.mark.parametrize("name", list(TRANSIENT))
async def test_transient_fault_completes_the_conversation(name: str, tmp_path: Path,
                                                          two_turns: Path) -> None:
    async with fast_sim(faults=TRANSIENT[name]) as sim:
        run = await simulate(sim, tmp_path, two_turns, api_key=KEY,
                             config=write_config(tmp_path / "c.toml", CONFIG))
    summary = assert_survived(run)
    assert run.rc == 0 and summary["ok"], (summary, run.stderr[-3000:])
    assert summary["turns"] == 2 and sim.completed_turns() == 2
    assert summary["reply_audio_s"] > 0
    assert len(sim.connections) >= 2 and summary["reconnects"] >= 1
    assert any(c.faults_fired for c in sim.connections)
    assert_each_setup_carries_the_newest_handle(sim)
    # the second sentence (said while the box reconnected, or resent after the break) reached
    # the server that answered it whole, sample for sample
    last = sim.connections[-1].audio
    with wave.open(str(two_turns)) as w:
        said = w.readframes(w.getnframes())
    at = said.find(last)
    assert len(last) >= 1.5 * 32000 and at >= 0 and at % 2 == 0
    # the newest handle is on disk for the next wake
    saved = json.loads((tmp_path / "state" / "resumption.json").read_text())["handle"]
    assert saved == [h for c in sim.connections for h in c.handles_sent][-1]
    # the budget counts what was sent (resent turns included), not what the mic heard
    assert budget_used(tmp_path / "state") == pytest.approx(summary["uploaded_audio_s"], abs=0.1)
    sent = sum(len(c.audio) for c in sim.connections) / 32000
    assert summary["uploaded_audio_s"] == pytest.approx(sent, abs=0.01)


async def test_refused_handle_is_forgotten_and_the_new_session_gets_the_recap(
        tmp_path: Path, one_turn: Path) -> None:
    async with fast_sim() as sim:
        # yesterday's talk leaves a handle on disk and a turn in history
        first = await simulate(sim, tmp_path, one_turn, api_key=KEY)
        assert first.rc == 0, first.stderr[-3000:]
        sim.faults = [FaultPlan.parse("reject-handle@1")]
        run = await simulate(sim, tmp_path, one_turn, api_key=KEY,
                             config=write_config(tmp_path / "c.toml", CONFIG))
    summary = assert_survived(run)
    assert run.rc == 0 and summary["turns"] == 1, run.stderr[-3000:]
    c0, c1, c2 = sim.connections
    assert c1.resumed_handle == c0.handles_sent[-1] and c1.close_code == 1007
    assert c2.setup is not None and c2.resumed_handle is None
    instruction = c2.setup["systemInstruction"]["parts"][0]["text"]
    assert "Earlier you talked about this" in instruction
    assert c0.replies[0].text in instruction  # the toy's answer yesterday, from history
    saved = json.loads((tmp_path / "state" / "resumption.json").read_text())["handle"]
    assert saved == c2.handles_sent[-1]
    assert "refused the resumption handle" in run.stderr


async def test_history_records_transcripts_and_usage_per_turn(tmp_path: Path,
                                                              two_turns: Path) -> None:
    async with fast_sim(faults=["goaway:1"]) as sim:
        run = await simulate(sim, tmp_path, two_turns, api_key=KEY)
    assert run.rc == 0, run.stderr[-3000:]
    store = await HistoryStore.open(tmp_path / "state" / "history.db")
    try:
        messages = await store.recent_turns(10)
    finally:
        await store.close()
    toy = [m for m in messages if m.sender == "assistant"]
    child = [m for m in messages if m.sender == "user"]
    assert [m.content for m in toy] == [r.text for r in sim.replies()]
    assert len(child) == 2 and all("s of audio" in m.content for m in child)
    for m, reply in zip(toy, sim.replies()):
        assert m.usage.output_tokens and m.usage.output_tokens > 0
        assert m.usage.input_tokens and m.usage.input_tokens > 0


PERMANENT = {
    "close-1007": (["close-1007@*"], "1007", "[live] model"),
    "close-1008": (["close-1008@*"], "is not found for API version", "set [live] model"),
    "http-403": (["http-403@*"], "HTTP 403", "talkie setup --api-key-file"),
    "http-404": (["http-404@*"], "HTTP 404", "[live] base_url"),
    "bad-key": ([], "API key not valid", "talkie setup --api-key-file"),
}


@pytest.mark.parametrize("name", list(PERMANENT))
async def test_permanent_fault_ends_in_error_after_one_attempt(name: str, tmp_path: Path,
                                                               one_turn: Path) -> None:
    faults, cause, fix = PERMANENT[name]
    api_key = "the-key-the-server-wants" if name == "bad-key" else None
    async with fast_sim(faults=faults, api_key=api_key) as sim:
        run = await simulate(sim, tmp_path, one_turn, api_key=KEY,
                             config=write_config(tmp_path / "c.toml", CONFIG))
    summary = assert_survived(run)
    assert run.rc == 1 and summary["ok"] is False
    assert len(sim.connections) == 1, "a permanent fault was retried"
    assert summary["turns"] == 0
    assert any(cause in e for e in summary["errors"]), summary["errors"]
    errors = [line for line in run.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, errors
    assert cause in errors[0] and fix in errors[0]
    assert re.search(r"state \w+ -> error", run.stderr)
    # nothing was sent, so nothing is charged to today's budget
    assert summary["uploaded_audio_s"] == 0 and budget_used(tmp_path / "state") == 0


async def test_a_refused_handle_is_gone_from_disk_even_when_the_talk_then_fails(
        tmp_path: Path, one_turn: Path) -> None:
    async with fast_sim() as sim:
        first = await simulate(sim, tmp_path, one_turn, api_key=KEY)
        assert first.rc == 0, first.stderr[-3000:]
        assert (tmp_path / "state" / "resumption.json").exists()
        sim.faults = [FaultPlan.parse("reject-handle@1"), FaultPlan.parse("close-1008@2")]
        run = await simulate(sim, tmp_path, one_turn, api_key=KEY)
    assert run.rc == 1 and len(sim.connections) == 3
    assert sim.connections[2].resumed_handle is None
    # the next wake must not offer the refused handle again
    assert not (tmp_path / "state" / "resumption.json").exists()


async def test_a_server_that_never_answers_ends_the_talk_and_tells_the_child(
        tmp_path: Path, one_turn: Path) -> None:
    async with fast_sim(faults=["no-reply@*:1"]) as sim:
        run = await simulate(sim, tmp_path, one_turn, api_key=KEY,
                             config=write_config(tmp_path / "c.toml", CONFIG))
    summary = assert_survived(run)
    assert run.rc == 1 and summary["ok"] is False and summary["turns"] == 0
    assert any("did not answer the child twice" in e for e in summary["errors"])
    assert len(sim.connections) == 2  # asked once more, then gave up: no storm
    # the box leaves thinking for offline (the offline sound), not silence forever
    assert re.search(r"state thinking -> offline", run.stderr), run.stderr[-2000:]
