"""`talkie simulate --json`: the public contract, audio in and out, bad input, secrets."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.audio_helpers import align
from tests.live_helpers import ROOT, conversation_wav, fast_sim, simulate, write_config

CONTRACT = {"ok", "turns", "mic_audio_s", "uploaded_audio_s", "reply_audio_s", "errors",
            "latency_ms"}
SECRET = "sk-live-NEVER-SHOWN-98765"


@pytest.fixture(scope="module")
def mic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return conversation_wav(tmp_path_factory.mktemp("mic") / "hello.wav",
                            ["Hello Talkie, what is your name?"], tail_s=1.0)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2"), w.getframerate()


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("GEMINI_API_KEY", "CREDENTIALS_DIRECTORY")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "device", *args, cwd=ROOT, env={**base, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_json_contract_whole_utterance_at_the_server_and_reply_in_the_wav(
        tmp_path: Path, mic: Path) -> None:
    async with fast_sim() as sim:
        run = await simulate(sim, tmp_path, mic)
        reply_pcm = await sim._voice.pcm(sim.replies()[0].text)
    assert run.rc == 0, run.stderr[-3000:]
    summary = run.summary  # the last stdout line is one JSON object
    assert CONTRACT <= set(summary)
    assert summary["ok"] is True and summary["errors"] == [] and summary["turns"] == 1
    assert summary["reply_audio_s"] > 0
    said, rate = read_wav(mic)
    assert rate == 16_000
    assert summary["mic_audio_s"] == pytest.approx(len(said) / rate, abs=0.05)
    received = np.frombuffer(sim.received_audio(), "<i2")
    # the first 100 ms arrive sample for sample (the gate's pre-roll keeps the start)
    assert np.array_equal(received[:1600], said[:1600])
    # and the whole utterance went up: what was sent is a contiguous piece of the input
    assert summary["uploaded_audio_s"] == pytest.approx(len(received) / rate, abs=0.01)
    assert np.array_equal(said[:len(received)], received)
    lat = summary["latency_ms"]
    assert len(lat["speech_end_to_sound"]) == 1 and lat["speech_end_to_sound"][0] > 0
    # the reply WAV holds the simulator's audio (scaled by the volume)
    out, out_rate = read_wav(tmp_path / "out.wav")
    assert out_rate == 24_000
    _, corr = align(out, np.frombuffer(reply_pcm, "<i2"))
    assert corr > 0.95


async def test_a_simulate_that_never_connects_exits_1_naming_the_cause(tmp_path: Path,
                                                                      mic: Path) -> None:
    rc, out, err = await run_cli("simulate", "--mic", str(mic), "--out", str(tmp_path / "o.wav"),
                                 "--fault", "close-1008@*", "--json",
                                 "--state-dir", str(tmp_path / "s"))
    assert rc == 1, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ok"] is False and summary["turns"] == 0
    assert len(summary["errors"]) == 1
    assert "is not found for API version" in summary["errors"][0]
    assert "set [live] model" in summary["errors"][0]
    assert "Traceback" not in err


@pytest.mark.parametrize("toml,key", [
    ("[live]\nreply_timeout = 5.0\n", "reply_timeout"),
    ("[live]\nreply_timeout_s = 'soon'\n", "live.reply_timeout_s"),
    ("[live]\nmax_connects_per_minute = 0\n", "live.max_connects_per_minute"),
])
async def test_bad_config_is_one_line_naming_the_key(tmp_path: Path, mic: Path, toml: str,
                                                     key: str) -> None:
    cfg = write_config(tmp_path / "c.toml", toml)
    rc, out, err = await run_cli("simulate", "--mic", str(mic), "--out", str(tmp_path / "o.wav"),
                                 "--config", str(cfg), "--json")
    assert rc == 78
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and key in lines[0], err


async def test_run_without_an_api_key_is_one_line_naming_where_to_put_it(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", "[live]\nsimulator = false\n")
    rc, out, err = await run_cli("run", "--config", str(cfg))
    assert rc == 78
    lines = [line for line in err.splitlines() if line.strip() and "INFO" not in line]
    assert len(lines) == 1 and "GEMINI_API_KEY" in lines[0], err


async def test_the_api_key_is_never_printed_even_with_debug_logs(tmp_path: Path,
                                                                mic: Path) -> None:
    async with fast_sim(api_key="the-one-the-server-wants") as sim:
        run = await simulate(sim, tmp_path, mic, api_key=SECRET, verbose=True)
    assert run.rc == 1
    assert SECRET not in run.stdout and SECRET not in run.stderr
    assert "API key not valid" in run.summary["errors"][0]
    assert "talkie setup --api-key-file" in run.summary["errors"][0]


def test_a_daemon_that_runs_for_weeks_keeps_only_its_latest_latencies_and_errors() -> None:
    from device.daemon import SUMMARY_KEEPS, Summary
    summary = Summary()
    for k in range(3 * SUMMARY_KEEPS):
        summary.reply_byte_to_sound_ms.append(float(k))
        summary.speech_end_to_sound_ms.append(float(k))
        summary.errors.append(f"error {k}")
    out = json.loads(json.dumps(summary.as_json()))
    latest = [float(k) for k in range(2 * SUMMARY_KEEPS, 3 * SUMMARY_KEEPS)]
    assert out["latency_ms"]["reply_byte_to_sound"] == latest
    assert out["latency_ms"]["speech_end_to_sound"] == latest
    assert out["errors"][0] == f"error {2 * SUMMARY_KEEPS}" and len(out["errors"]) == SUMMARY_KEEPS
