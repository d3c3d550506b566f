"""The people-facing texts (preference centre, mails) in the person's language.

Catalogues are JSON files in ``locale/`` (one per language, keyed by the English text), so a
translator edits a file and no build step compiles them. English is the fallback for a missing
language or text. ``{name}`` placeholders are filled with ``str.format``."""

from __future__ import annotations

import json
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


def negotiate(accept_language: str | None, offered: Sequence[str], chosen: str | None = None) -> str:
    """The language to answer in: an explicit choice if offered, else the best of the browser's
    Accept-Language (by q-value) that is offered, else the first offered."""
    if chosen in offered:
        return str(chosen)
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        if tag:
            ranked.append((-quality, index, tag.strip().lower()))
    for _quality, _index, tag in sorted(ranked):
        for language in offered:
            if tag == language or tag.split("-")[0] == language:
                return language
    return offered[0] if offered else DEFAULT
