"""Threads that come and go leave little memory behind once `talkie run` caps malloc arenas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Eight threads at a time (as the daemon's audio, libpulse, executor and history threads
# overlap), each allocating 3 MB in small blocks and keeping one: ten rounds.
CHURN = """
import sys, threading
if sys.argv[1] == "capped":
    from device.malloc import limit_arenas
    assert limit_arenas()

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

kept = []
def work(start):
    start.wait()
    blocks = [bytes(1000 + i % 7) for i in range(3000)]
    kept.append(blocks[-1])

before = rss_mb()
for _ in range(10):
    start = threading.Barrier(8)
    threads = [threading.Thread(target=work, args=(start,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
print(rss_mb() - before)
"""


def _left_behind_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    return float(out.stdout)


def test_capped_arenas_keep_what_threads_freed_from_staying_resident():
    default, capped = _left_behind_mb("default"), _left_behind_mb("capped")
    assert capped < 12, f"{capped:.1f} MB left behind by threads that ended"
    assert default > 2 * capped, (default, capped)   # what the cap is for (24.7 vs 6.2 MB)

