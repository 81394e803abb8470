"""The Live API simulator against the real google-genai SDK: protocol, turns, resumption, barge-in."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import ssl
from typing import Any

import numpy as np
import pytest
import websockets
from google import genai
from google.genai import errors, types

from device.live.simulator import Simulator, reply_text

MODEL = "gemini-2.5-flash-native-audio-preview-09-2025"
KEY = "test-key-123"
T = 15  # bound for every await


def client(sim: Simulator, key: str = KEY, **extra: Any) -> genai.Client:
    return genai.Client(api_key=key, http_options={**sim.http_options(), **extra})


def fast_sim(**kw: Any) -> Simulator:
    kw.setdefault("voice", "tone")
    kw.setdefault("pace", 50.0)
    kw.setdefault("first_byte_delay_s", 0.02)
    return Simulator(**kw)


def pcm(seconds: float, amplitude: int = 0, freq: float = 300.0) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype("<i2").tobytes()


async def send_audio(session: Any, data: bytes, chunk: int = 3200) -> None:
    for i in range(0, len(data), chunk):
        await session.send_realtime_input(
            audio=types.Blob(data=data[i : i + chunk], mime_type="audio/pcm;rate=16000")
        )


async def collect_turn(session: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "audio": b"",
        "out": "",
        "in": "",
        "usage": None,
        "handles": [],
        "generation_complete": False,
        "turn_complete": False,
    }

    async def run() -> None:
        async for m in session.receive():
            if m.data:
                out["audio"] += m.data
            sc = m.server_content
            if sc and sc.output_transcription and sc.output_transcription.text:
                out["out"] += sc.output_transcription.text
            if sc and sc.input_transcription and sc.input_transcription.text:
                out["in"] += sc.input_transcription.text
            if sc and sc.generation_complete:
                out["generation_complete"] = True
            if sc and sc.turn_complete:
                out["turn_complete"] = True
            if m.usage_metadata:
                out["usage"] = m.usage_metadata
            if m.session_resumption_update:
                out["handles"].append(m.session_resumption_update)

    await asyncio.wait_for(run(), T)
    return out


async def test_setup_audio_turns_transcripts_and_usage() -> None:
    async with fast_sim() as sim:
        cfg = types.LiveConnectConfig(
            response_modalities=["AUDIO"],
            system_instruction="You talk with a child. The child's name is Mia.",
            input_audio_transcription={},
            output_audio_transcription={},
            speech_config=types.SpeechConfig(
                voice_config=types.VoiceConfig(
                    prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name="Kore")
                )
            ),
        )
        sent = pcm(1.0, 2000)
        async with client(sim).aio.live.connect(model=MODEL, config=cfg) as s:
            rec = sim.connections[0]
            # The setup arrives as the SDK sent it (mixed case), and normalised to camelCase.
            assert rec.raw_setup["model"] == f"models/{MODEL}"
            assert (
                rec.raw_setup["generationConfig"]["speechConfig"]["voice_config"][
                    "prebuilt_voice_config"
                ]["voice_name"]
                == "Kore"
            )
            assert (
                rec.setup["generationConfig"]["speechConfig"]["voiceConfig"][
                    "prebuiltVoiceConfig"
                ]["voiceName"]
                == "Kore"
            )
            assert rec.api_key == KEY and KEY not in repr(rec)
            assert rec.headers["x-goog-api-key"] == "<redacted>"
            assert rec.api_version == "v1"

            turns = []
            for _ in range(2):
                await send_audio(s, sent)
                await s.send_realtime_input(audio_stream_end=True)
                turns.append(await collect_turn(s))

        assert sim.received_audio() == sent * 2
        assert [e.kind for e in rec.turn_ends] == ["audioStreamEnd", "audioStreamEnd"]
        for n, turn in enumerate(turns, start=1):
            reply = rec.replies[n - 1]
            assert turn["turn_complete"] and turn["generation_complete"]
            assert turn["out"] == reply.text == reply_text(n, "name is Mia")
            assert "Mia" in turn["out"]
            assert turn["in"] == "[1.0 s of audio]"
            assert (
                len(turn["audio"]) == reply.audio_bytes > 24000
            )  # at least half a second
            seconds_out = len(turn["audio"]) / 48000
            assert turn["usage"].prompt_token_count == 25
            assert turn["usage"].response_token_count == round(seconds_out * 25)
            assert turn["usage"].total_token_count == 25 + round(seconds_out * 25)
            assert (
                turn["usage"].response_tokens_details[0].modality
                == types.MediaModality.AUDIO
            )
        assert turns[0]["out"] != turns[1]["out"]
        # Frames stay far below the SDK's 1 MiB limit.
        await sim.wait_closed_connections(1, T)
        assert rec.close_code == 1000


async def test_espeak_voice_and_text_turn() -> None:
    async with Simulator(voice="auto", pace=50.0, first_byte_delay_s=0.0) as sim:
        assert sim.voice == "espeak"  # CI installs espeak-ng
        cfg = types.LiveConnectConfig(
            response_modalities=["AUDIO"], input_audio_transcription={}
        )
        async with client(sim).aio.live.connect(model=MODEL, config=cfg) as s:
            await s.send_client_content(
                turns=types.Content(role="user", parts=[types.Part(text="Hello there")])
            )
            turn = await collect_turn(s)
        assert turn["in"] == "Hello there"
        assert turn["out"] == ""  # output transcription not requested
        audio = np.frombuffer(turn["audio"], dtype="<i2").astype(float)
        assert (
            len(audio) > 24000 and np.sqrt(np.mean(audio**2)) > 300
        )  # real speech energy
        assert sim.connections[0].turn_ends[0].kind == "turnComplete"


async def test_path_variants_v1beta_and_double_slash() -> None:
    async with fast_sim() as sim:
        c = genai.Client(
            api_key=KEY,
            http_options={
                "base_url": sim.base_url + "/",
                "api_version": "v1beta",
                "async_client_args": {"ssl": sim.client_ssl_context()},
            },
        )
        async with c.aio.live.connect(model=MODEL) as s:
            assert s.session_id is None or isinstance(s.session_id, str)
        rec = sim.connections[0]
        assert rec.path.startswith("//ws/") and rec.api_version == "v1beta"


async def test_resumption_handle_continues_the_conversation() -> None:
    async with fast_sim() as sim:
        cfg = types.LiveConnectConfig(
            response_modalities=["AUDIO"],
            session_resumption=types.SessionResumptionConfig(),
        )
        async with client(sim).aio.live.connect(model=MODEL, config=cfg) as s:
            for _ in range(2):
                await s.send_realtime_input(
                    audio=types.Blob(data=pcm(0.2), mime_type="audio/pcm;rate=16000")
                )
                await s.send_realtime_input(audio_stream_end=True)
                turn = await collect_turn(s)
                assert len(turn["handles"]) == 1 and turn["handles"][0].resumable
        handle = turn["handles"][0].new_handle
        cfg2 = types.LiveConnectConfig(
            response_modalities=["AUDIO"],
            session_resumption=types.SessionResumptionConfig(handle=handle),
        )
        async with client(sim).aio.live.connect(model=MODEL, config=cfg2) as s:
            await s.send_client_content(
                turns=types.Content(role="user", parts=[types.Part(text="hi")])
            )
            turn = await collect_turn(s)
        assert sim.connections[1].setup["sessionResumption"]["handle"] == handle
        # Third turn of the conversation, not the first of a new one.
        assert sim.connections[1].replies[0].turn == 3
        assert sim.connections[1].replies[0].text == reply_text(3, "")

        # Without sessionResumption in the setup no handle is sent.
        async with client(sim).aio.live.connect(model=MODEL) as s:
            await s.send_client_content(
                turns=types.Content(role="user", parts=[types.Part(text="hi")])
            )
            assert (await collect_turn(s))["handles"] == []


async def test_handle_after_turn_complete_arrives_in_next_receive() -> None:
    async with fast_sim(handle_after_turn_complete=True) as sim:
        cfg = types.LiveConnectConfig(
            session_resumption=types.SessionResumptionConfig()
        )
        async with client(sim).aio.live.connect(model=MODEL, config=cfg) as s:
            await s.send_client_content(
                turns=types.Content(role="user", parts=[types.Part(text="a")])
            )
            assert (await collect_turn(s))["handles"] == []
            await s.send_client_content(
                turns=types.Content(role="user", parts=[types.Part(text="b")])
            )
            assert len((await collect_turn(s))["handles"]) == 1


async def test_unknown_handle_is_refused_with_1007() -> None:
    async with fast_sim() as sim:
        cfg = types.LiveConnectConfig(
            session_resumption=types.SessionResumptionConfig(handle="nope")
        )
        with pytest.raises(errors.APIError) as e:
            await asyncio.wait_for(
                client(sim).aio.live.connect(model=MODEL, config=cfg).__aenter__(), T
            )
        assert e.value.code == 1007


async def test_barge_in_interrupts_the_reply() -> None:
    # Slow enough pacing that the reply is still streaming when the child speaks again.
    async with Simulator(voice="tone", pace=4.0, first_byte_delay_s=0.0) as sim:
        cfg = types.LiveConnectConfig(response_modalities=["AUDIO"])
        async with client(sim).aio.live.connect(model=MODEL, config=cfg) as s:
            await send_audio(s, pcm(0.3, 2000))
            await s.send_realtime_input(audio_stream_end=True)
            got_audio = interrupted = False

            async def until_interrupted() -> None:
                nonlocal got_audio, interrupted
                async for m in s.receive():
                    if m.data and not got_audio:
                        got_audio = True
                        await send_audio(s, pcm(0.1, 3000))  # loud: speech
                    if m.server_content and m.server_content.interrupted:
                        interrupted = True
                        return
                    assert not (m.server_content and m.server_content.turn_complete)

            await asyncio.wait_for(until_interrupted(), T)
            assert interrupted
            assert sim.connections[0].replies[0].interrupted
            assert not sim.connections[0].replies[0].completed
            # The conversation goes on: the next turn gets a full reply.
            await s.send_realtime_input(audio_stream_end=True)
            turn = await collect_turn(s)
            assert turn["turn_complete"] and sim.connections[0].replies[1].completed


async def test_server_vad_ends_a_streamed_turn_on_silence_and_ignores_silence_alone() -> None:
    # A client without a VAD of its own (Google's quickstart) streams its mic and never says
    # audioStreamEnd: with server-side end-pointing on, speech then silence is a turn.
    async with fast_sim(server_vad_silence_ms=300) as sim:
        cfg = types.LiveConnectConfig(response_modalities=["AUDIO"])
        async with client(sim).aio.live.connect(model=MODEL, config=cfg) as s:
            await send_audio(s, pcm(1.0, 0), chunk=2048)           # a quiet room: no turn
            await send_audio(s, pcm(0.5, 3000) + pcm(0.25, 0), chunk=2048)
            await asyncio.sleep(0.3)
            assert sim.connections[0].turn_ends == []               # 250 ms is not enough
            await send_audio(s, pcm(0.1, 0), chunk=2048)
            turn = await collect_turn(s)
            assert turn["turn_complete"] and turn["audio"]
            ends = sim.connections[0].turn_ends
            assert [e.kind for e in ends] == ["serverVad"]
            await send_audio(s, pcm(1.0, 0), chunk=2048)
            await s.send_realtime_input(audio_stream_end=True)      # silence alone: no reply
            await asyncio.sleep(0.3)
            assert len(sim.connections[0].replies) == 1
        # The setup's own silence duration wins over the simulator's default.
        aad = types.AutomaticActivityDetection(silence_duration_ms=2000)
        cfg = types.LiveConnectConfig(
            realtime_input_config=types.RealtimeInputConfig(automatic_activity_detection=aad))
        async with client(sim).aio.live.connect(model=MODEL, config=cfg) as s:
            await send_audio(s, pcm(0.5, 3000) + pcm(1.0, 0), chunk=2048)
            await asyncio.sleep(0.3)
            assert sim.connections[1].turn_ends == []


async def test_quiet_audio_and_no_interruption_do_not_barge_in() -> None:
    async with Simulator(voice="tone", pace=4.0, first_byte_delay_s=0.0) as sim:
        ric = types.RealtimeInputConfig(
            activity_handling=types.ActivityHandling.NO_INTERRUPTION
        )
        for cfg, loud in (
            (types.LiveConnectConfig(), 0),
            (types.LiveConnectConfig(realtime_input_config=ric), 3000),
        ):
            async with client(sim).aio.live.connect(model=MODEL, config=cfg) as s:
                await s.send_client_content(
                    turns=types.Content(role="user", parts=[types.Part(text="x")])
                )
                seen = False

                async def run(loud: int = loud) -> None:
                    nonlocal seen
                    async for m in s.receive():
                        if m.data and not seen:
                            seen = True
                            await send_audio(s, pcm(0.1, loud))
                        assert not (m.server_content and m.server_content.interrupted)

                await asyncio.wait_for(run(), T)
        assert all(r.completed and not r.interrupted for r in sim.replies())


async def test_activity_signals_need_automatic_detection_disabled() -> None:
    async with fast_sim() as sim:
        async with client(sim).aio.live.connect(model=MODEL) as s:
            await s.send_realtime_input(activity_start=types.ActivityStart())
            with pytest.raises(errors.APIError) as e:
                await collect_turn(s)
        assert e.value.code == 1007 and "invalid argument" in str(e.value)

        manual = types.LiveConnectConfig(
            realtime_input_config=types.RealtimeInputConfig(
                automatic_activity_detection=types.AutomaticActivityDetection(
                    disabled=True
                )
            )
        )
        async with client(sim).aio.live.connect(model=MODEL, config=manual) as s:
            await s.send_realtime_input(activity_start=types.ActivityStart())
            await send_audio(s, pcm(0.5, 1000))
            await s.send_realtime_input(activity_end=types.ActivityEnd())
            assert (await collect_turn(s))["turn_complete"]
            await s.send_realtime_input(audio_stream_end=True)
            with pytest.raises(errors.APIError) as e:
                await collect_turn(s)
        assert e.value.code == 1007
        assert [e.kind for e in sim.connections[1].turn_ends] == ["activityEnd"]


async def test_bad_api_key_is_closed_1007() -> None:
    async with fast_sim(api_key=KEY) as sim:
        with pytest.raises(errors.APIError) as e:
            await asyncio.wait_for(
                client(sim, key="wrong").aio.live.connect(model=MODEL).__aenter__(), T
            )
        assert e.value.code == 1007 and "API key not valid" in str(e.value)
        assert "wrong" not in repr(sim.connections[0])
        async with client(sim).aio.live.connect(model=MODEL):
            pass


async def test_two_simulators_each_trust_only_their_own_certificate() -> None:
    async with fast_sim() as a, fast_sim() as b:
        assert a.port != b.port and a.ca_file.read_bytes() != b.ca_file.read_bytes()
        for sim in (a, b):
            async with client(sim).aio.live.connect(model=MODEL) as s:
                await s.send_client_content(
                    turns=types.Content(role="user", parts=[types.Part(text="x")])
                )
                assert (await collect_turn(s))["turn_complete"]
        crossed = genai.Client(
            api_key=KEY,
            http_options={
                "base_url": b.base_url,
                "async_client_args": {"ssl": a.client_ssl_context()},
            },
        )
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.wait_for(
                crossed.aio.live.connect(model=MODEL).__aenter__(), T
            )
        assert len(a.connections) == len(b.connections) == 1


async def test_wait_turns_times_out_clearly() -> None:
    async with fast_sim() as sim:
        with pytest.raises(TimeoutError, match="1 completed turns"):
            await sim.wait_turns(1, timeout=0.1)


async def test_raw_client_key_in_query_snake_case_and_binary_frames() -> None:
    # An old SDK (<= 1.25) put the key in ?key= and spelled keys in snake_case.
    async with fast_sim(api_key=KEY) as sim:
        url = (
            f"wss://127.0.0.1:{sim.port}/ws/google.ai.generativelanguage.v1alpha."
            f"GenerativeService.BidiGenerateContent?key={KEY}"
        )
        async with websockets.connect(url, ssl=sim.client_ssl_context()) as ws:
            await ws.send(json.dumps({"setup": {"model": f"models/{MODEL}"}}))
            first = await asyncio.wait_for(ws.recv(), T)
            assert isinstance(first, bytes) and json.loads(first) == {
                "setupComplete": {}
            }
            audio = base64.urlsafe_b64encode(pcm(0.25, 1000)).rstrip(b"=").decode()
            await ws.send(
                json.dumps(
                    {
                        "realtime_input": {
                            "media_chunks": [{"data": audio, "mime_type": "audio/pcm"}]
                        }
                    }
                )
            )
            await ws.send(json.dumps({"realtime_input": {"audio_stream_end": True}}))
            keys: list[str] = []
            while "turnComplete" not in keys:
                msg = json.loads(await asyncio.wait_for(ws.recv(), T))
                assert set(msg) <= {"serverContent", "usageMetadata"}
                keys += list(msg["serverContent"])
            assert keys[-2:] == ["generationComplete", "turnComplete"]
        await sim.wait_turns(1, T)
        rec = sim.connections[0]
        assert rec.audio == pcm(0.25, 1000)
        assert KEY not in rec.path and KEY not in repr(rec) and rec.api_key == KEY
        assert (
            rec.messages[1].data["realtimeInput"]["mediaChunks"][0]["mimeType"]
            == "audio/pcm"
        )
