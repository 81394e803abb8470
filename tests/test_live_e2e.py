"""The box end to end against a Live-protocol server that is not its built-in one: a second
simulator instance on its own port with its own certificate, reached with --live-url."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.live_helpers import conversation_wav, fast_sim, simulate


@pytest.fixture(scope="module")
def two_turns(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return conversation_wav(tmp_path_factory.mktemp("mic") / "two.wav",
                            ["Hello Talkie", "Do you like dinosaurs?"])


async def test_two_turns_in_one_session_against_another_server(tmp_path: Path,
                                                                two_turns: Path) -> None:
    async with fast_sim() as other, fast_sim() as server:
        assert server.port != other.port
        assert server.ca_file.read_bytes() != other.ca_file.read_bytes()
        run = await simulate(server, tmp_path, two_turns)
    assert run.rc == 0, run.stderr[-3000:]
    summary = run.summary
    assert summary["ok"] and summary["turns"] == 2 and summary["errors"] == []
    assert other.connections == []
    assert len(server.connections) == 1  # both turns in one session
    conn = server.connections[0]
    assert [e.kind for e in conn.turn_ends] == ["audioStreamEnd", "audioStreamEnd"]
    assert [r.completed for r in conn.replies] == [True, True]
    setup = conn.setup or {}
    assert setup["model"].startswith("models/")
    assert "inputAudioTranscription" in setup and "outputAudioTranscription" in setup
    assert "contextWindowCompression" in setup
    # speech went up (two utterances' worth), replies came down and were played
    assert len(conn.audio) / 32000 == pytest.approx(summary["uploaded_audio_s"], abs=0.01)
    assert np.abs(np.frombuffer(conn.audio, "<i2")).max() > 1000
    assert summary["reply_audio_s"] == pytest.approx(
        sum(r.audio_bytes for r in conn.replies) / 48000, abs=0.05)


async def test_a_server_with_another_certificate_is_refused_once_naming_ca_file(
        tmp_path: Path, two_turns: Path) -> None:
    async with fast_sim() as other, fast_sim() as server:
        run = await simulate(server, tmp_path, two_turns,
                             extra=("--ca-file", str(other.ca_file)))
    assert run.rc == 1
    assert run.summary["ok"] is False
    assert any("ca_file" in e and "not trusted" in e for e in run.summary["errors"])
    assert server.connections == []  # the TLS handshake failed before any request
    assert run.stderr.count("Live session stopped") == 1
