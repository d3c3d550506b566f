"""The shape a configuration's names must have (purpose keys, connector names): checked when the
file is read, with a message that says what is accepted. Such names end up in URLs, file names,
metrics labels and log lines, so they are short, lower-case and start with a letter."""

from __future__ import annotations

import re

from pydantic import AfterValidator


def shaped(pattern: re.Pattern[str], expected: str) -> AfterValidator:
    """A pydantic check (``Annotated[str, shaped(...)]``) that a name matches ``pattern``; the
    error says what is ``expected``."""

    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"expected {expected}")
        return value

    return AfterValidator(check)
