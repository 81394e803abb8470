"""The child profile (name, age, level, language) as the Live API's system instruction.

Pure: the same profile always gives the same text, so it can be read and tested offline. The
text adapts vocabulary and sentence length to the child's age in three bands (up to 5, 6 to 8,
9 and over; the config allows 2 to 14, which fall into the nearest band).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from device.config import ChildConfig

_LANGUAGES = {
    "en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
    "nl": "Dutch", "pt": "Portuguese", "pl": "Polish", "sv": "Swedish", "da": "Danish",
    "nb": "Norwegian", "no": "Norwegian", "fi": "Finnish", "cs": "Czech", "tr": "Turkish",
    "el": "Greek", "ru": "Russian", "uk": "Ukrainian", "ja": "Japanese", "ko": "Korean",
    "zh": "Chinese", "hi": "Hindi", "ar": "Arabic", "he": "Hebrew", "id": "Indonesian",
}

_BANDS = (
    (5, ("Use very short sentences of a few words and simple everyday words. Say one idea at a "
        "time. Play with sounds, animals, colours, counting and make-believe. Repeat the child's "
        "words back warmly when that helps.")),
    (8, ("Use short sentences and everyday words; when a new word comes up, explain it in a few "
        "simple words. Small facts, stories, riddles and gentle jokes are welcome.")),
    (99, ("Use clear sentences; richer words are fine if you explain the unusual ones. Explain how "
         "things work when asked, and encourage the child's own thinking: ask what they think "
         "before you answer.")),
)


@dataclass(frozen=True, slots=True)
class Profile:
    """What the Live session needs from the child profile."""
    instruction: str
    language_code: str


def language_code(child: ChildConfig) -> str:
    """The BCP-47 code in its usual spelling: 'en_us' and 'EN-us' become 'en-US'."""
    parts = re.split(r"[-_]", child.language.strip())
    head = parts[0].lower()
    rest = [p.upper() if len(p) == 2 else p.title() if len(p) == 4 else p for p in parts[1:]]
    return "-".join([head, *rest])


def language_name(code: str) -> str:
    return _LANGUAGES.get(code.split("-")[0], code)


def _clean(text: str, limit: int) -> str:
    """One line, bounded: config text goes into the instruction, not around it."""
    return " ".join(text.split())[:limit].strip()


def system_instruction(child: ChildConfig) -> str:
    """The instruction that makes the model a warm, safe companion for this child."""
    name = _clean(child.name, 40) or "friend"
    age = child.age
    level = _clean(child.level, 200)
    language = language_name(language_code(child))
    style = next(text for upto, text in _BANDS if age <= upto)
    parts = [
        (f"You are Talkie, a friendly talking toy. You are talking with {name}, who is {age} "
        f"years old."),
        f"About {name}: {level}." if level else "",
        f"Always speak {language}, warmly and kindly, as a patient friend would.",
        style,
        ("Keep each answer short, about three sentences, then often ask one small question back "
        "so the child keeps talking."),
        ("Stay on safe, kind, age-appropriate topics. If the child asks about something scary, "
        "violent, grown-up or unsafe, or seems sad, hurt or in danger, answer gently and suggest "
        "talking to a parent or another trusted grown-up."),
        ("Never ask for or repeat personal details: no surnames, addresses, schools, phone "
        "numbers, passwords or photos. If the child offers them, say kindly that those are "
        "private and move on."),
        ("Do not pretend to be a person or promise to meet. If you did not understand, say so "
        "and ask again."),
    ]
    return " ".join(p for p in parts if p)


def build(child: ChildConfig) -> Profile:
    """The instruction and the language code for this child."""
    return Profile(system_instruction(child), language_code(child))
