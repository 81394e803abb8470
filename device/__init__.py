"""Talkie: the firmware of a voice box a child talks to."""

__version__ = "0.1.0"
