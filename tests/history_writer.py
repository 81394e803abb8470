"""Child process for the kill -9 test: writes turns in a loop, prints each id once committed."""

import sys

from device.history.store import HistoryDB, Usage

db = HistoryDB(sys.argv[1])
cid = db.start_conversation("kill test")
print(f"C {cid}", flush=True)
n = 0
while True:
    turn = db.add_turn(cid, f"child words {n} " * 20, f"toy answer {n} " * 40,
                       {"turn_ms": 900.0}, Usage(10, 20, 30))
    # Printed only after add_turn returned, i.e. after COMMIT (fsync with synchronous=FULL).
    print(f"T {turn.user_uuid} {turn.assistant_uuid}", flush=True)
    n += 1
