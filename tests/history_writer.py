"""Child process for the kill -9 test: the daemon's async store writing turns in a loop; it
prints each turn's ids only after add_turn returned (committed)."""

import asyncio
import sys

from device.history.store import HistoryStore, Usage


async def main() -> None:
    store = await HistoryStore.open(sys.argv[1])
    cid = await store.start_conversation("kill test")
    print(f"C {cid}", flush=True)
    n = 0
    while True:
        turn = await store.add_turn(cid, f"child words {n} " * 20, f"toy answer {n} " * 40,
                                    {"turn_ms": 900.0}, Usage(10, 20, 30))
        print(f"T {turn.user_uuid} {turn.assistant_uuid}", flush=True)
        n += 1
        if n % 10 == 0:
            await store.end_conversation(cid)
            cid = await store.start_conversation()


asyncio.run(main())
