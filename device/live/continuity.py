"""The toy remembers: the resumption handle survives a quiet spell and a restart.

The Live API keeps a conversation's context for about two hours after its last connection,
reachable by the newest resumption handle. The handle is kept on disk with the time it was
last refreshed; an expired one is not offered (the server would refuse it), and a new
conversation then starts with a short recap of recent turns instead.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from device.fileio import atomic_write

log = logging.getLogger(__name__)

#: Handles are documented as valid for 2 h; stop offering one a little before that.
HANDLE_LIFETIME_S = 110 * 60


class HandleStore:
    """The newest resumption handle, on disk, with its age."""

    def __init__(self, path: Path, *, lifetime_s: float = HANDLE_LIFETIME_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._lifetime_s = lifetime_s
        self._clock = clock

    def load(self) -> str | None:
        """The handle if it is still fresh, else None."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            handle, saved = str(data["handle"]), float(data["saved_at"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring an unreadable resumption handle file %s", self.path)
            return None
        if not handle or self._clock() - saved > self._lifetime_s:
            return None
        return handle

    def save(self, handle: str | None) -> None:
        """Remember a handle (None forgets it). Failing to write only costs the context."""
        try:
            if handle is None:
                self.path.unlink(missing_ok=True)
            else:
                atomic_write(self.path, json.dumps({"handle": handle,
                                                    "saved_at": self._clock()}), mode=0o600)
        except OSError as e:
            log.warning("cannot keep the resumption handle in %s (%s)", self.path, e.strerror)


def recap(turns: list[tuple[str, str]], max_chars: int = 600) -> str:
    """A short recap of recent (child, toy) turns for the system instruction, newest last."""
    lines: list[str] = []
    used = 0
    for child, toy in reversed(turns):
        line = f"the child said '{child.strip()}' and you answered '{toy.strip()}'."
        if used + len(line) > max_chars:
            break
        lines.append(line)
        used += len(line)
    return " ".join(reversed(lines))
