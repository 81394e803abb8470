"""The baseline: a Live API client written the way Google's quickstart writes one.

Modelled on the cookbook's `quickstarts/Get_started_LiveAPI.py` (audio only): after connecting,
the microphone is read in 1024-frame chunks at 16 kHz and every chunk goes up through the
SDK's `send_realtime_input` (a queue of 5 in between, the oldest dropped when full); a receive
task loops `session.receive()` and puts reply audio in a playback queue that a play task
writes to a 24 kHz output stream. No VAD, no pre-roll, no button: the server's own activity
detection decides when the child has finished (the bench's simulator runs with server-side
end-pointing), and the child interrupts by talking over the reply.

Where it differs from the quickstart, and why:
- PortAudio through sounddevice instead of PyAudio (the same library underneath, and the one
  Talkie uses), with each stream opened, read and closed on one thread of its own: ALSA's
  pulse plugin stalls when a blocking stream is used from several threads (the quickstart's
  `asyncio.to_thread` picks any pool thread). The hand-over cost per chunk is the same.
- The playback queue is emptied on `interrupted`, not after every `receive()` turn: the
  quickstart's comment says it empties it so that interruptions work, and the simulator (like
  the service) streams replies faster than real time, so emptying it at turnComplete would
  cut every reply short.
- `press` on stdin starts a conversation (connect, then stream), `end` closes it: the
  quickstart connects at start and streams until quit; the bench needs the same wake and
  end points as Talkie's.

    python bench/baseline_client.py --base-url URL --ca-file PEM --model M [--device pulse]

stdin: `press`, `end`, `quit`; stdout: JSON lines `{"ev": "ready"}`, `{"ev": "press", "t": T}`
and `{"ev": "bye"}`, like bench/talkie_client.py.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import ssl
import sys
import time
from typing import Any

import numpy as np
import sounddevice as sd
from google import genai
from google.genai import types

CHANNELS = 1
SEND_SAMPLE_RATE = 16000
RECEIVE_SAMPLE_RATE = 24000
CHUNK_SIZE = 1024


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class AudioLoop:
    def __init__(self, client: genai.Client, model: str, device: str) -> None:
        self.client = client
        self.model = model
        self.device = device
        self.config = types.LiveConnectConfig(
            response_modalities=["AUDIO"],
            speech_config=types.SpeechConfig(
                voice_config=types.VoiceConfig(
                    prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name="Zephyr"))),
            context_window_compression=types.ContextWindowCompressionConfig(
                trigger_tokens=25600, sliding_window=types.SlidingWindow(target_tokens=12800)),
        )
        self.session: Any = None
        self.audio_in_queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.out_queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=5)

    async def in_thread(self, pool: concurrent.futures.Executor, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def listen_audio(self) -> None:
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mic")
        stream = await self.in_thread(pool, lambda: sd.InputStream(
            device=self.device, samplerate=SEND_SAMPLE_RATE, channels=CHANNELS, dtype="int16",
            blocksize=CHUNK_SIZE))
        await self.in_thread(pool, stream.start)
        try:
            while True:
                data, _ = await self.in_thread(pool, stream.read, CHUNK_SIZE)
                payload = {"data": data.tobytes(), "mime_type": "audio/pcm;rate=16000"}
                try:
                    self.out_queue.put_nowait(payload)
                except asyncio.QueueFull:
                    self.out_queue.get_nowait()
                    self.out_queue.put_nowait(payload)
        finally:
            pool.submit(stream.abort).result()
            pool.submit(stream.close).result()
            pool.shutdown()

    async def send_realtime(self) -> None:
        while True:
            msg = await self.out_queue.get()
            await self.session.send_realtime_input(audio=types.Blob(**msg))

    async def receive_audio(self) -> None:
        while True:
            async for response in self.session.receive():
                if data := response.data:
                    self.audio_in_queue.put_nowait(data)
                    continue
                if response.server_content and response.server_content.interrupted:
                    while not self.audio_in_queue.empty():
                        self.audio_in_queue.get_nowait()

    async def play_audio(self) -> None:
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="speaker")
        stream = await self.in_thread(pool, lambda: sd.OutputStream(
            device=self.device, samplerate=RECEIVE_SAMPLE_RATE, channels=CHANNELS,
            dtype="int16"))
        await self.in_thread(pool, stream.start)
        emit(ev="speaker", latency=stream.latency)
        try:
            while True:
                bytestream = await self.audio_in_queue.get()
                await self.in_thread(pool, stream.write, np.frombuffer(bytestream, np.int16))
        finally:
            pool.submit(stream.abort).result()
            pool.submit(stream.close).result()
            pool.shutdown()

    async def run(self) -> None:
        async with (self.client.aio.live.connect(model=self.model, config=self.config) as session,
                    asyncio.TaskGroup() as tg):
            self.session = session
            self.audio_in_queue = asyncio.Queue()
            self.out_queue = asyncio.Queue(maxsize=5)
            tg.create_task(self.send_realtime())
            tg.create_task(self.listen_audio())
            tg.create_task(self.receive_audio())
            tg.create_task(self.play_audio())


async def main(args: argparse.Namespace) -> int:
    client = genai.Client(api_key=os.environ["GEMINI_API_KEY"], http_options={
        "api_version": "v1beta", "base_url": args.base_url,
        "async_client_args": {"ssl": ssl.create_default_context(cafile=args.ca_file)}})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    conversation: asyncio.Task[None] | None = None
    emit(ev="ready")
    while line := (await reader.readline()).decode().strip():
        if line == "press":
            emit(ev="press", t=time.monotonic())
            if conversation is None or conversation.done():
                conversation = asyncio.create_task(
                    AudioLoop(client, args.model, args.device).run())
        elif line == "end" and conversation is not None:
            conversation.cancel()
            await asyncio.gather(conversation, return_exceptions=True)
            conversation = None
        elif line == "threads":
            import threading
            emit(ev="threads", map={str(t.native_id): t.name for t in threading.enumerate()})
        elif line == "quit":
            break
    if conversation is not None:
        conversation.cancel()
        await asyncio.gather(conversation, return_exceptions=True)
    emit(ev="bye")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--ca-file", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="pulse")
    raise SystemExit(asyncio.run(main(ap.parse_args())))
