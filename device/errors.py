"""The one root of Talkie's errors.

Each subclass also inherits the builtin it refines, so callers that only know Python's own
exceptions still catch them. Low-level errors (PortAudio, websockets, OS) are translated into
these at one boundary each, with a message that names the problem and the fix.
"""

from __future__ import annotations


class TalkieError(Exception):
    """Base of every error Talkie raises on purpose."""


class ConfigError(TalkieError, ValueError):
    """The configuration file or the environment is wrong. The message names the key and the fix."""


class MissingApiKeyError(ConfigError):
    """No Gemini API key was found where the box looks for one."""


class AudioDeviceError(TalkieError, OSError):
    """A microphone or speaker could not be opened or failed while running."""


class LiveError(TalkieError, ConnectionError):
    """The Live API session failed. `permanent` says whether retrying can help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
