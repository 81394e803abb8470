"""What the box asks of the Live API when it connects: the setup built from the config.

Kept apart from the session so it can be read (and tested) without a network: the voice, the
language, the child's system instruction, transcripts both ways, resumption and context
compression (so a long talk is not cut at the 15-minute audio-session limit).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from device.config import Config, Secret
from device.profile import language_code

if TYPE_CHECKING:
    from google.genai import types as genai_types

log = logging.getLogger(__name__)

#: Sliding-window compression as the cookbook sets it: trim to half when the context passes this.
COMPRESSION_TRIGGER_TOKENS = 25_600


def system_instruction(cfg: Config, recap: str = "") -> str:
    """The child's profile instruction, plus what was talked about last time."""
    from device.profile import system_instruction as for_child

    text = for_child(cfg.child)
    if recap:
        text += (" Earlier you talked about this (the child may come back to it): "
                 + " ".join(recap.split())[:800])
    return text


def connect_config(cfg: Config, *, handle: str | None = None,
                   recap: str = "") -> genai_types.LiveConnectConfig:
    """The LiveConnectConfig for one connection; `handle` resumes an earlier conversation."""
    from google.genai import types

    return types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        speech_config=types.SpeechConfig(
            voice_config=types.VoiceConfig(
                prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=cfg.live.voice)),
            language_code=language_code(cfg.child),
        ),
        system_instruction=types.Content(
            parts=[types.Part(text=system_instruction(cfg, recap))], role="user"),
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        session_resumption=types.SessionResumptionConfig(handle=handle),
        context_window_compression=types.ContextWindowCompressionConfig(
            trigger_tokens=COMPRESSION_TRIGGER_TOKENS,
            sliding_window=types.SlidingWindow(target_tokens=COMPRESSION_TRIGGER_TOKENS // 2),
        ),
        # The box's own VAD decides what is speech; the server's detection stays on so that
        # `audioStreamEnd` is allowed and a child talking over the toy interrupts it.
        realtime_input_config=types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(disabled=False),
            activity_handling=types.ActivityHandling.START_OF_ACTIVITY_INTERRUPTS,
        ),
    )


def make_client(cfg: Config, api_key: Secret | None) -> Any:
    """A google-genai client for the configured endpoint (Google's, or a simulator)."""
    import ssl

    from google import genai

    http: dict[str, Any] = {}
    if cfg.live.base_url:
        http["base_url"] = cfg.live.base_url.rstrip("/")  # the SDK joins paths by concatenation
    if cfg.live.api_version:
        http["api_version"] = cfg.live.api_version
    if cfg.live.ca_file:
        http["async_client_args"] = {"ssl": ssl.create_default_context(cafile=cfg.live.ca_file)}
    key = api_key.reveal() if api_key else "simulator"
    return genai.Client(api_key=key, http_options=http or None)


#: A reply message as the service sends it, parsed once at start so that the SDK builds its
#: (lazy) message models then, not while the child waits for the first reply.
_SAMPLE_MESSAGE = {
    "serverContent": {
        "modelTurn": {"parts": [{"inlineData": {"mimeType": "audio/pcm;rate=24000",
                                                "data": "AAAA"}}]},
        "outputTranscription": {"text": "hi"}, "inputTranscription": {"text": "hi"},
        "turnComplete": True, "interrupted": False},
    "usageMetadata": {"totalTokenCount": 5},
    "sessionResumptionUpdate": {"newHandle": "h", "resumable": True},
    "goAway": {"timeLeft": "5s"},
}


class SharedClient:
    """One google-genai client for every conversation of the box, made in a thread at start.

    Making a client costs 30-110 ms of CPU (SSL contexts, HTTP clients), and the SDK builds
    its message models on first use (another ~25 ms): made per conversation, that sat between
    every button press and the first audio sent, and a Pi Zero is 5-8x slower than the PC
    these were measured on. `start()` makes it (and warms those models) in a worker thread;
    `get()` waits for it, and tries again after a failure.
    """

    def __init__(self, cfg: Config, api_key: Secret | None) -> None:
        self._cfg = cfg
        self._api_key = api_key
        self._made: asyncio.Future[Any] | None = None

    def start(self) -> None:
        """Begin making the client (needs a running loop); `get()` does it if not begun."""
        if self._made is None or (self._made.done() and (self._made.cancelled()
                                                          or self._made.exception())):
            self._made = asyncio.ensure_future(asyncio.to_thread(self._make))
            # A failure is raised by get(); unasked for, it is no "never retrieved" warning.
            self._made.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def get(self) -> Any:
        self.start()
        assert self._made is not None
        return await asyncio.shield(self._made)

    def _make(self) -> Any:
        client = make_client(self._cfg, self._api_key)
        try:
            from google.genai import types

            connect_config(self._cfg)
            types.LiveServerMessage._from_response(response=_SAMPLE_MESSAGE, kwargs={})
        except Exception as e:  # noqa: BLE001 - a warm-up only: the SDK may change its insides
            log.debug("could not warm the SDK's message models: %s", e)
        return client
