"""Shared fixtures. Keep additive: each part of the project adds its own fixtures here."""

from __future__ import annotations

import pytest

# --- audio: a private PulseAudio server (see device/audio/pulse_harness.py) ----------------

@pytest.fixture(scope="session")
def pulse_server(tmp_path_factory: pytest.TempPathFactory):
    """One private PulseAudio server for the session: spk48000/mic48000, spk44100/mic44100."""
    from device.audio.pulse_harness import PulseServer
    server = PulseServer(tmp_path_factory.mktemp("pulse"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pulse(pulse_server):
    """The PulseAudio server, reset: 48 kHz devices are the defaults, nothing queued to feed.

    Open devices 'pulse' with AudioConfig(input="pulse", output="pulse"). Speak into the mic
    with `pulse.feed(int16_samples_at_48k)` (`pulse_harness.espeak` makes speech), hear the
    speaker with `with pulse.record() as rec: ...; rec.samples(); rec.time_of(i)`, switch to
    the 44.1 kHz pair with `pulse.use(44100)`. Make the mic hear the speaker with
    `with pulse.echo_room(delay_ms=40, gain_db=-6, rt60_s=0.25) as room: ...` (off again at
    the end of the block and of the test).
    """
    pulse_server.reset()
    yield pulse_server
    pulse_server.reset()


# --- security: no test secret (API keys, Wi-Fi password) in any output (tests/leak_scan.py) --

from tests.leak_scan import (_no_secret_in_files_written, pytest_configure,  # noqa: E402,F401
                             pytest_runtest_makereport)
