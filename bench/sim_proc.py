"""The Live simulator in a process of its own, for benches: what it saw, on request.

    python bench/sim_proc.py [--pace 4] [--server-vad-ms 800] [--reply TEXT ...]

Prints one JSON line `{"base_url": ..., "ca_file": ...}` once it listens. Then, for each
`report` line on stdin, one JSON line with every connection so far: the API key it used (the
bench gives each client its own), its audio messages as `[t, pcm_bytes, wire_bytes]`, every
other message as `[t, kind, wire_bytes]`, its turn ends `[t, kind]` and its replies
`[first_chunk_t, last_chunk_t, audio_bytes, interrupted, completed]`. Times are
`time.monotonic()`, which all processes on the machine share. `quit` (or EOF) stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device.live.simulator import ConnectionRecord, Simulator  # noqa: E402


def describe(rec: ConnectionRecord) -> dict[str, Any]:
    audio, other = [], []
    for m in rec.messages:
        ri = m.data.get("realtimeInput")
        if isinstance(ri, dict) and isinstance(ri.get("audio"), dict):
            data = str(ri["audio"].get("data", ""))
            pcm = len(data.rstrip("=")) * 3 // 4
            audio.append([m.t, pcm, m.wire_bytes])
        else:
            kind = next(iter(ri), "realtimeInput") if isinstance(ri, dict) else next(iter(m.data), "?")
            other.append([m.t, kind, m.wire_bytes])
    return {"index": rec.index, "key": rec.api_key, "audio": audio, "other": other,
            "turn_ends": [[e.t, e.kind] for e in rec.turn_ends],
            "replies": [[r.first_chunk_t, r.last_chunk_t, r.audio_bytes, r.interrupted,
                         r.completed] for r in rec.replies],
            "close_code": rec.close_code}


async def main(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with Simulator(voice=args.voice, pace=args.pace, first_byte_delay_s=args.first_byte_delay,
                         reply_texts=args.reply or None,
                         server_vad_silence_ms=args.server_vad_ms) as sim:
        print(json.dumps({"base_url": sim.base_url, "ca_file": str(sim.ca_file)}), flush=True)
        while line := (await reader.readline()).decode().strip():
            if line == "report":
                print(json.dumps([describe(c) for c in sim.connections]), flush=True)
            elif line == "quit":
                break
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voice", default="tone", choices=("tone", "espeak", "auto"))
    ap.add_argument("--pace", type=float, default=4.0)
    ap.add_argument("--first-byte-delay", type=float, default=0.2)
    ap.add_argument("--server-vad-ms", type=int, default=800)
    ap.add_argument("--reply", action="append", default=[], help="a reply text (repeatable)")
    raise SystemExit(asyncio.run(main(ap.parse_args())))
