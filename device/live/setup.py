"""What the box asks of the Live API when it connects: the setup built from the config.

Kept apart from the session so it can be read (and tested) without a network: the voice, the
language, the child's system instruction, transcripts both ways, resumption and context
compression (so a long talk is not cut at the 15-minute audio-session limit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from device.config import Config, Secret
from device.profile import language_code

if TYPE_CHECKING:
    from google.genai import types as genai_types

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
