"""One question to the Live API: does it accept this key and answer setup, and how fast?

Used by `talkie setup --check-key` and `talkie doctor`. It goes through the same google-genai
client the daemon uses (`device.live.setup.make_client`), so `[live] base_url` and `ca_file`
point it at the project's simulator in tests exactly as they do for the daemon.
"""

from __future__ import annotations

import asyncio
import time

from device.config import Config, Secret
from device.errors import LiveError


async def check_live(cfg: Config, api_key: Secret | None, timeout_s: float = 10.0) -> float:
    """Connect, wait for setupComplete, close. Seconds it took; LiveError naming the fix."""
    from google.genai import types

    from device.live.session import classify
    from device.live.setup import make_client

    client = make_client(cfg, api_key)
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            # google-genai's connect() sends the setup and reads the reply before yielding.
            async with client.aio.live.connect(
                    model=cfg.live.model,
                    config=types.LiveConnectConfig(response_modalities=[types.Modality.AUDIO])):
                pass
    except TimeoutError:
        raise LiveError(f"no setupComplete from the Live API within {timeout_s:g} s; check the "
                        f"network ('talkie doctor') and [live] base_url") from None
    except Exception as e:  # the SDK's errors are translated at this one boundary
        permanent, why = classify(e)
        raise LiveError(why, permanent=permanent) from None
    return time.monotonic() - start


def check_live_sync(cfg: Config, api_key: Secret | None, timeout_s: float = 10.0) -> float:
    """`check_live` for callers without an event loop (the CLI)."""
    return asyncio.run(check_live(cfg, api_key, timeout_s))
