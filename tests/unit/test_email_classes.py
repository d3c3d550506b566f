"""The address pattern's character classes, written as what they refuse (fast to compile), are
the sets RFC 5321 / 6531 give them: ASCII atext (local part) or letters and digits (labels, the
hyphen inside), and every character from U+0080 up. Checked over all of Latin-1 and, above it,
a spread of code points and each plane's edges (a class written as what it refuses names ASCII
only, so what holds for some code points above U+007F holds for all; every code point took 8 s)."""

from __future__ import annotations

import re

from consentsync import domain

_UTF8 = "\u0080-\U0010ffff"
AS_WRITTEN_IN_THE_RFCS = {
    "_LOCAL": f"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~.\\-{_UTF8}]+",
    "_LABEL_EDGE": f"[A-Za-z0-9{_UTF8}]",
    "_LABEL_INSIDE": f"[A-Za-z0-9\\-{_UTF8}]",
}


POINTS = sorted(
    {*range(0x100), *range(0x100, 0x110000, 251), 0xD800, 0xDFFF, 0xFFFE, 0xFFFF}
    | {plane * 0x10000 + edge for plane in range(17) for edge in (0, 0xFFFF)}
)


def test_each_class_holds_exactly_the_characters_the_rfcs_allow() -> None:
    for name, reference in AS_WRITTEN_IN_THE_RFCS.items():
        ours, theirs = re.compile(getattr(domain, name)), re.compile(reference)
        differ = [
            hex(point)
            for point in POINTS
            if (ours.fullmatch(chr(point)) is None) != (theirs.fullmatch(chr(point)) is None)
        ]
        assert differ == [], f"{name} differs at {differ[:10]}"
