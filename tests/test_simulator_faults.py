"""Each simulator fault, and exactly what the real google-genai SDK raises for it.

These tests document the SDK behaviour the device's session manager has to classify.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import pytest
import websockets
from google import genai
from google.genai import errors, types

from device.live.simulator import (
    DEADLINE_EXPIRED,
    INTERNAL_ERROR,
    INVALID_ARGUMENT,
    Fault,
    FaultPlan,
    Simulator,
)

MODEL = "gemini-2.5-flash-native-audio-preview-09-2025"
T = 15


def sim_with(*faults: Any, **kw: Any) -> Simulator:
    return Simulator(
        voice="tone", pace=50.0, first_byte_delay_s=0.02, faults=faults, **kw
    )


def client(sim: Simulator) -> genai.Client:
    return genai.Client(api_key="k", http_options=sim.http_options())


async def one_turn(session: Any) -> list[Any]:
    """Send a text turn and return every message up to turnComplete."""
    await session.send_client_content(
        turns=types.Content(role="user", parts=[types.Part(text="hi")])
    )
    msgs: list[Any] = []

    async def run() -> None:
        async for m in session.receive():
            msgs.append(m)

    await asyncio.wait_for(run(), T)
    return msgs


async def connect(sim: Simulator, config: types.LiveConnectConfig | None = None) -> Any:
    cm = client(sim).aio.live.connect(model=MODEL, config=config)
    return cm, await asyncio.wait_for(cm.__aenter__(), T)


async def test_close_1011_mid_reply_then_retry_succeeds() -> None:
    async with sim_with(Fault.CLOSE_1011_MID_REPLY) as sim:
        async with client(sim).aio.live.connect(model=MODEL) as s:
            with pytest.raises(errors.APIError) as e:
                await one_turn(s)
            # Base APIError (not ClientError/ServerError): close codes are outside 400..599.
            assert type(e.value) is errors.APIError
            assert e.value.code == 1011 and e.value.details == INTERNAL_ERROR
            assert e.value.status is None
            # Sending after the close is a raw websockets error, not an APIError.
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await s.send_realtime_input(audio_stream_end=True)
        # The plan fires on connection 0 only: a retry works.
        async with client(sim).aio.live.connect(model=MODEL) as s:
            assert any(
                m.server_content and m.server_content.turn_complete
                for m in await one_turn(s)
            )
        assert sim.connections[0].faults_fired == ["close-1011-mid-reply"]
        assert sim.connections[0].close_code == 1011
        assert (
            sim.connections[0].replies[0].audio_bytes > 0
            and not sim.connections[0].replies[0].completed
        )


async def test_goaway_then_close_1011_deadline() -> None:
    async with sim_with(
        FaultPlan(Fault.GOAWAY, seconds=0.2), handle_after_turn_complete=True
    ) as sim:
        async with client(sim).aio.live.connect(model=MODEL) as s:
            await one_turn(
                s
            )  # the goAway follows turnComplete, so it is in the next receive()
            got: list[Any] = []

            async def run() -> None:
                async for m in s.receive():
                    got.append(m)

            with pytest.raises(errors.APIError) as e:
                await asyncio.wait_for(run(), T)
        assert got and got[0].go_away is not None and got[0].go_away.time_left == "1s"
        assert e.value.code == 1011 and e.value.details == DEADLINE_EXPIRED


async def test_goaway_right_after_setup() -> None:
    async with sim_with(FaultPlan(Fault.GOAWAY, turn=0, seconds=0.1)) as sim:
        async with client(sim).aio.live.connect(model=MODEL) as s:
            with pytest.raises(errors.APIError) as e:
                async for m in s.receive():
                    assert m.go_away is not None
        assert e.value.code == 1011


@pytest.mark.parametrize(
    ("fault", "code", "reason"),
    [
        (Fault.CLOSE_1007, 1007, INVALID_ARGUMENT),
        # Close reasons are cut at 123 bytes, so the long "not found" text arrives truncated.
        (
            Fault.CLOSE_1008,
            1008,
            f"models/{MODEL} is not found for API version v1, or is not",
        ),
    ],
)
async def test_close_at_setup_raises_from_connect(
    fault: Fault, code: int, reason: str
) -> None:
    async with sim_with(fault) as sim:
        with pytest.raises(errors.APIError) as e:
            await connect(sim)
        assert type(e.value) is errors.APIError and e.value.code == code
        assert (
            e.value.details.startswith(reason) and len(e.value.details.encode()) <= 123
        )
        assert str(e.value).startswith(f"{code} None. ")


async def test_close_1007_on_a_later_turn() -> None:
    async with sim_with(FaultPlan(Fault.CLOSE_1007, turn=2)) as sim:
        async with client(sim).aio.live.connect(model=MODEL) as s:
            await one_turn(s)
            with pytest.raises(errors.APIError) as e:
                await one_turn(s)
        assert e.value.code == 1007


async def test_slow_setup_delays_connect() -> None:
    async with sim_with(FaultPlan(Fault.SLOW_SETUP, seconds=0.5)) as sim:
        t0 = time.monotonic()
        cm, s = await connect(sim)
        assert time.monotonic() - t0 >= 0.5 and s.setup_complete is not None
        await cm.__aexit__(None, None, None)
        t0 = time.monotonic()
        cm, s = await connect(sim)  # connection 1: no fault
        assert time.monotonic() - t0 < 0.5
        await cm.__aexit__(None, None, None)


async def test_tcp_drop_is_1006() -> None:
    async with sim_with(Fault.TCP_DROP) as sim:
        async with client(sim).aio.live.connect(model=MODEL) as s:
            with pytest.raises(errors.APIError) as e:
                await one_turn(s)
        assert e.value.code == 1006


async def test_tcp_drop_at_setup_is_1006_from_connect() -> None:
    async with sim_with(FaultPlan(Fault.TCP_DROP, turn=0)) as sim:
        with pytest.raises(errors.APIError) as e:
            await connect(sim)
        assert e.value.code == 1006


async def test_oversize_frame_is_1006() -> None:
    # The SDK's websockets client refuses frames over 1 MiB by closing with 1009 itself; the
    # SDK sees no close frame *received* and reports 1006.
    async with sim_with(Fault.OVERSIZE_FRAME) as sim:
        async with client(sim).aio.live.connect(model=MODEL) as s:
            with pytest.raises(errors.APIError) as e:
                await one_turn(s)
        assert e.value.code == 1006
        await sim.wait_closed_connections(1, T)
        assert sim.connections[0].close_code == 1009


async def test_unknown_top_level_key_is_a_type_error_in_the_sdk() -> None:
    async with (
        sim_with(Fault.UNKNOWN_KEY) as sim,
        client(sim).aio.live.connect(model=MODEL) as s,
    ):
        with pytest.raises(TypeError):
            await one_turn(s)


@pytest.mark.parametrize(
    ("fault", "status"), [(Fault.HTTP_403, 403), (Fault.HTTP_404, 404)]
)
async def test_http_refusal_is_invalid_status(fault: Fault, status: int) -> None:
    async with sim_with(fault) as sim:
        with pytest.raises(websockets.exceptions.InvalidStatus) as e:
            await connect(sim)
        assert e.value.response.status_code == status
        assert sim.connections[0].http_status == status
        cm, _ = await connect(sim)  # the retry gets through
        await cm.__aexit__(None, None, None)


async def test_reject_handle_refuses_even_a_valid_handle() -> None:
    async with sim_with(FaultPlan(Fault.REJECT_HANDLE, connection=1)) as sim:
        cfg = types.LiveConnectConfig(
            session_resumption=types.SessionResumptionConfig()
        )
        async with client(sim).aio.live.connect(model=MODEL, config=cfg) as s:
            handles = [
                m.session_resumption_update.new_handle
                for m in await one_turn(s)
                if m.session_resumption_update
            ]
        cfg2 = types.LiveConnectConfig(
            session_resumption=types.SessionResumptionConfig(handle=handles[-1])
        )
        with pytest.raises(errors.APIError) as e:
            await connect(sim, cfg2)
        assert e.value.code == 1007 and e.value.details == INVALID_ARGUMENT
        cm, _ = await connect(sim, cfg2)  # connection 2: same handle accepted
        await cm.__aexit__(None, None, None)


def test_fault_plan_parse() -> None:
    assert FaultPlan.parse("goaway") == FaultPlan(Fault.GOAWAY)
    assert FaultPlan.parse("tcp-drop@*:2") == FaultPlan(
        Fault.TCP_DROP, connection=None, turn=2
    )
    assert FaultPlan.parse("slow-setup@1+3.5") == FaultPlan(
        Fault.SLOW_SETUP, 1, None, 3.5
    )
    with pytest.raises(ValueError, match="choose one of: slow-setup"):
        FaultPlan.parse("nope")
    with pytest.raises(ValueError, match="NAME"):
        FaultPlan.parse("goaway:x")


def test_cli_rejects_unknown_fault() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "device.live.simulator", "--fault", "bogus"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=_root(),
    )
    assert r.returncode == 2 and "unknown fault 'bogus'" in r.stdout


async def test_cli_runs_standalone_with_a_fault() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "device.live.simulator",
        "--voice",
        "tone",
        "--pace",
        "50",
        "--fault",
        "close-1007",
        cwd=_root(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        base_url = (
            (await asyncio.wait_for(proc.stdout.readline(), T)).decode().split()[1]
        )
        ca_file = (
            (await asyncio.wait_for(proc.stdout.readline(), T)).decode().split()[1]
        )
        import ssl

        c = genai.Client(
            api_key="k",
            http_options={
                "base_url": base_url,
                "async_client_args": {
                    "ssl": ssl.create_default_context(cafile=ca_file)
                },
            },
        )
        with pytest.raises(errors.APIError) as e:
            await asyncio.wait_for(c.aio.live.connect(model=MODEL).__aenter__(), T)
        assert e.value.code == 1007
        async with c.aio.live.connect(model=MODEL) as s:
            assert any(
                m.server_content and m.server_content.turn_complete
                for m in await one_turn(s)
            )
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), T)


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
