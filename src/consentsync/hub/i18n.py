"""The people-facing texts (preference centre, mails) in the person's language.

Catalogues are JSON files in ``locale/`` (one per language, keyed by the English text), so a
translator edits a file and no build step compiles them. English is the fallback for a missing
language or text. ``{name}`` placeholders are filled with ``str.format``."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from functools import cache
from importlib import resources

DEFAULT = "en"


@cache
def catalogue(language: str) -> dict[str, str]:
    path = resources.files("consentsync.hub") / "locale" / f"{language}.json"
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text(encoding="utf-8")))


def shipped() -> list[str]:
    folder = resources.files("consentsync.hub") / "locale"
    return sorted(item.name.removesuffix(".json") for item in folder.iterdir() if item.name.endswith(".json"))


Translate = Callable[..., str]


def translator(language: str) -> Translate:
    texts = catalogue(language)

    def translate(text: str, **values: object) -> str:
        return texts.get(text, text).format(**values) if values else texts.get(text, text)

    return translate


def channel_labels(_: Translate) -> dict[str, str]:
    """The channels in the person's words (pages and mails alike)."""
    return {
        "email": _("Email"),
        "phone": _("Phone"),
        "sms": _("Text message (SMS)"),
        "post": _("Post"),
    }


# RFC 9110 §12.4.2: a weight is "0" to "1" with at most three decimals; anything else (q=nan,
# q=inf, q=-1, q=1e0) is not a weight, and the range that carries it is ignored.
_QVALUE = re.compile(r"^(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)$")


def negotiate(accept_language: str | None, offered: Sequence[str], chosen: str | None = None) -> str:
    """The language to answer in: an explicit choice if offered, else the offered language the
    browser's Accept-Language weighs highest (RFC 9110 §12.5.4), else the first offered.

    Each offered language takes the weight of the most specific range that matches it (its own
    tag, then a range it extends or that extends it, then "*"); a weight of 0 says "not
    acceptable" (§12.4.2), so such a language is never chosen while another is offered. Equal
    weights go by the order the browser listed its ranges, then by the order offered."""
    if chosen in offered:
        return str(chosen)
    ranges: list[tuple[str, float]] = []
    for part in (accept_language or "").split(","):
        tag, *params = (piece.strip() for piece in part.split(";"))
        quality: float | None = 1.0
        for param in params:
            name, _sep, value = param.partition("=")
            if name.strip().lower() == "q":
                quality = float(value.strip()) if _QVALUE.match(value.strip()) else None
        if tag and quality is not None:
            ranges.append((tag.lower(), quality))
    best: list[tuple[float, int, int, str]] = []
    excluded: set[str] = set()
    for place, language in enumerate(offered):
        found = _weight(language.lower(), ranges)
        if found is None:
            continue
        quality, index = found
        if quality <= 0:
            excluded.add(language)
        else:
            best.append((-quality, index, place, language))
    if best:
        return min(best)[3]
    # Nothing the browser named is offered: the first offered it did not refuse.
    for language in offered:
        if language not in excluded:
            return language
    return offered[0] if offered else DEFAULT


def _weight(language: str, ranges: list[tuple[str, float]]) -> tuple[float, int] | None:
    """The weight of the most specific range matching ``language``, with the range's position
    (of ranges equally specific, "de-ch;q=0.2, de-at;q=0.8" for "de", the highest weight);
    None when none matches."""
    match: tuple[int, float, int] | None = None  # (specificity, weight, position)
    for index, (tag, quality) in enumerate(ranges):
        if tag == language:
            specificity = 3
        elif language.startswith(tag + "-"):  # "de" takes in "de-ch" (RFC 4647 §3.3.1)
            specificity = 2
        elif tag.startswith(language + "-"):  # "de-ch" falls back to "de" (RFC 4647 §3.4)
            specificity = 1
        elif tag == "*":
            specificity = 0
        else:
            continue
        if match is None or (specificity, quality) > match[:2]:
            match = (specificity, quality, index)
    return None if match is None else (match[1], match[2])
