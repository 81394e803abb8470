"""Talkie as the conversation bench drives it: the daemon `talkie run` assembles, in its own
process, with the button on mock pins pressed by lines on stdin.

    python bench/talkie_client.py --config CFG        (GEMINI_API_KEY set; PULSE_* set)

stdin, one command a line: `press`, `release`, `quit`. stdout, one JSON object a line:
`{"ev": "ready"}` once audio, pins and history are open; `{"ev": "press", "t": T}` with the
monotonic time the pin was driven (the button edge); `{"ev": "speech_end", "t": T, "at": T2}`
when the VAD gate ended a turn (`t` the frame's capture time, `at` when the loop saw it), and
`{"ev": "bye"}` after a clean stop. The daemon is the one `device.cli._box` opens (simulator
off, PortAudio audio, mock pins, history); the systemd-only tasks of `talkie run` (status
file, watchdog pings, Wi-Fi poll) are left out: bench/startup.py measures that path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

# TALKIE_SRC: run another tree's daemon (bench/conversation.py --also REF) with this driver.
sys.path.insert(0, os.environ.get("TALKIE_SRC") or str(Path(__file__).resolve().parents[1]))


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def control(daemon: Any, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    pin = daemon.button_pin
    while line := (await reader.readline()).decode().strip():
        if line == "press":
            t = time.monotonic()
            pin.drive_low()
            emit(ev="press", t=t)
        elif line == "release":
            pin.drive_high()
        elif line == "threads":
            import threading
            emit(ev="threads", map={str(t.native_id): t.name for t in threading.enumerate()})
        elif line == "quit":
            break
    stop.set()


async def main(config: str) -> int:
    from device.cli import _box
    from device.config import load, require_api_key
    from device.events import SpeechEnd
    from device.logs import setup_logging

    setup_logging(logging.INFO)
    cfg = load(config)
    api_key = require_api_key()
    stop = asyncio.Event()
    async with _box(cfg, api_key) as daemon:
        def on_event(ev: Any) -> None:
            if isinstance(ev, SpeechEnd):
                emit(ev="speech_end", t=ev.t, at=time.monotonic())

        daemon.add_event_listener(on_event)
        emit(ev="speaker", latency=getattr(daemon._speaker, "latency", None))
        emit(ev="ready")
        async with asyncio.TaskGroup() as tg:
            run = tg.create_task(daemon.run())
            tg.create_task(control(daemon, stop))
            await stop.wait()
            await daemon.flush()
            run.cancel()
    emit(ev="bye")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    raise SystemExit(asyncio.run(main(ap.parse_args().config)))
