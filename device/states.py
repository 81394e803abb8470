"""The box's states, as the child sees them on the LED and a parent reads them in `talkie status`."""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    BOOTING = "booting"
    IDLE = "idle"            # waiting for the button
    CONNECTING = "connecting"  # woken; the Live session is being made (speech is already kept)
    LISTENING = "listening"  # the child may talk
    THINKING = "thinking"    # the child stopped; waiting for the reply
    SPEAKING = "speaking"    # the toy is talking
    OFFLINE = "offline"      # the Live API cannot be reached; retrying
    ERROR = "error"          # something needs a grown-up (bad key, no microphone, ...)
    SLEEPING = "sleeping"    # quiet hours or today's budget is spent

    @property
    def awake(self) -> bool:
        """True while a conversation is open."""
        return self in (State.CONNECTING, State.LISTENING, State.THINKING, State.SPEAKING)
