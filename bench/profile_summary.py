"""Summarise a py-spy raw (collapsed) profile: share of samples per thread, per function
(inclusive) and per function (self), for reading the hot path.

    python bench/profile_summary.py PROFILE.txt [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import re


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    threads: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    total = 0
    for line in open(args.profile, encoding="utf-8"):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        total += n
        threads[re.sub(r"\s*\(?0x[0-9a-f]+\)?", "", frames[0])] += n
        names = [re.sub(r" \(.*?:\d+\)$", "", f) + re.sub(r".*\((.*?):\d+\)$", r" [\1]", f)
                 for f in frames[1:]]
        for name in set(names):
            incl[name] += n
        if names:
            self_[names[-1]] += n
    print(f"{total} samples")
    print("by thread:")
    for name, n in threads.most_common():
        print(f"  {100 * n / total:5.1f} %  {name}")
    for title, counter in (("inclusive", incl), ("self", self_)):
        print(f"by function ({title}):")
        for name, n in counter.most_common(args.top):
            print(f"  {100 * n / total:5.1f} %  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
