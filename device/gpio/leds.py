"""The status light: one LED, an RGB LED, or a few LEDs, with a pattern per state.

Patterns run on gpiozero's background threads (`blink`, `pulse`), so `set_state` returns at
once and never blocks the loop. Which pattern (and, on an RGB LED, which colour) each state
shows is configuration: `gpio.led_<state>` and `gpio.color_<state>`.
"""

from __future__ import annotations

import logging
from typing import Any

from device.config import LED_PATTERNS, GpioConfig

log = logging.getLogger(__name__)

#: The states that have a pattern (device.states.State values).
STATES = ("booting", "idle", "connecting", "listening", "thinking", "speaking", "error",
          "offline", "sleeping")

#: Brightness of the `dim` pattern.
DIM = 0.08


def parse_color(text: str) -> tuple[float, float, float]:
    """'#rrggbb' -> (r, g, b) in 0..1."""
    return tuple(int(text[i:i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]


class StatusLights:
    """The configured LEDs; `set_state(name)` shows that state's pattern."""

    def __init__(self, cfg: GpioConfig, factory: Any) -> None:
        from gpiozero import PWMLED, RGBLED, LEDBoard

        self.kind = cfg.led_kind
        self.patterns = {s: getattr(cfg, f"led_{s}") for s in STATES}
        self.colors = {s: parse_color(getattr(cfg, f"color_{s}")) for s in STATES}
        self.state: str | None = None
        self.device: Any = None
        if self.kind == "single":
            self.device = PWMLED(cfg.led_pin, active_high=cfg.led_active_high,
                                 pin_factory=factory)
        elif self.kind == "rgb":
            self.device = RGBLED(cfg.rgb_red_pin, cfg.rgb_green_pin, cfg.rgb_blue_pin,
                                 active_high=cfg.led_active_high, pin_factory=factory)
        elif self.kind == "leds":
            self.device = LEDBoard(*cfg.led_pins, pwm=True, active_high=cfg.led_active_high,
                                   pin_factory=factory)

    @property
    def pins(self) -> list[Any]:
        """The gpiozero pins, in order (red, green, blue for an RGB LED)."""
        if self.device is None:
            return []
        if self.kind == "single":
            return [self.device.pin]
        if self.kind == "rgb":
            return [led.pin for led in self.device._leds]  # no public accessor
        return [led.pin for led in self.device]

    def set_state(self, name: str) -> None:
        """Show the pattern of state `name` (a device.states.State works too)."""
        name = str(name)
        if name not in self.patterns:
            log.warning("no LED pattern for state %r; keeping %r", name, self.state)
            return
        if name == self.state:
            return  # restarting a pattern would make it stutter
        self.state = name
        if self.device is not None:
            self._show(self.patterns[name], self.colors[name])

    def _show(self, pattern: str, color: tuple[float, float, float]) -> None:
        assert pattern in LED_PATTERNS
        dev = self.device
        rgb = self.kind == "rgb"
        on: dict[str, Any] = {"on_color": color} if rgb else {}
        if pattern == "off":
            dev.off()
        elif pattern == "on":
            if rgb:
                dev.color = color
            else:
                dev.value = 1.0 if self.kind == "single" else (1.0,) * len(dev)
        elif pattern == "dim":
            if rgb:
                dev.color = tuple(c * DIM * 4 for c in color)  # a colour is dimmer already
            else:
                dev.value = DIM if self.kind == "single" else (DIM,) * len(dev)
        elif pattern == "breathe":
            dev.pulse(fade_in_time=2.0, fade_out_time=2.0, **on)
        elif pattern == "pulse":
            dev.pulse(fade_in_time=0.4, fade_out_time=0.4, **on)
        elif pattern == "blink":
            dev.blink(on_time=0.5, off_time=0.5, **on)
        elif pattern == "flash":
            dev.blink(on_time=0.1, off_time=0.1, **on)
        elif pattern == "flicker":
            dev.blink(on_time=0.08, off_time=0.04, fade_in_time=0.08, fade_out_time=0.08, **on)
        elif pattern == "wink":
            dev.blink(on_time=0.1, off_time=2.9, **on)

    def close(self) -> None:
        if self.device is not None:
            self.device.close()
            self.device = None
