"""Salesforce record ids: 15 case-sensitive characters (3-character key prefix, 2-character pod,
a reserved character and a 9-character base-62 number) and the 18-character form that appends a
3-character checksum of the letter case, so the id survives case-insensitive systems.

Ids made here are base-62 numbers written with the digits ``0-9A-Za-z``, which sort in ASCII
order, so comparing two ids as strings compares their numbers (the sandbox's ``ORDER BY Id`` and
``Id > '...'`` agree with each other, as a keyset cursor needs).
"""

from __future__ import annotations

import itertools
import threading

__all__ = ["KEY_PREFIXES", "IdGenerator", "checksum", "is_valid_id", "org_id", "to18"]

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"

KEY_PREFIXES = {
    "Contact": "003",
    "Lead": "00Q",
    "Individual": "0PK",
    "ContactPointTypeConsent": "0ZY",
    "DataUsePurpose": "0ZW",
    "Account": "001",  # no Account records here: the ids a lead conversion names its account by
    "Organization": "00D",
    "User": "005",
    "QueryLocator": "01g",
    "AsyncApexJob": "750",
}


def checksum(id15: str) -> str:
    """The 3-character suffix of the 18-character id: one character per 5-character chunk, whose
    bits say which characters of the chunk are upper-case letters."""
    out = []
    for start in (0, 5, 10):
        bits = 0
        for offset, char in enumerate(id15[start : start + 5]):
            if "A" <= char <= "Z":
                bits |= 1 << offset
        out.append(_SUFFIX[bits])
    return "".join(out)


def to18(value: str) -> str | None:
    """The 18-character form of a 15- or 18-character id; None when ``value`` is not an id (wrong
    length, a character outside [0-9A-Za-z], or an 18-character id whose checksum does not match).
    An 18-character id whose letters changed case (the form is made to pass through systems
    that ignore case) is the same id: the checksum names its upper-case letters."""
    if not isinstance(value, str) or not value.isascii() or not value.isalnum():
        return None
    if len(value) == 15:
        return value + checksum(value)
    if len(value) == 18:
        suffix = value[15:].upper()
        if suffix == checksum(value[:15]):
            return value[:15] + suffix
        restored = _case_restored(value[:15], suffix)
        return None if restored is None else restored + suffix
    return None


def _case_restored(id15: str, suffix: str) -> str | None:
    """``id15`` with the case ``suffix`` says of each letter; None where it names a digit as an
    upper-case letter, or is no checksum."""
    if any(char not in _SUFFIX for char in suffix):
        return None
    out = []
    for position, char in enumerate(id15):
        upper = _SUFFIX.index(suffix[position // 5]) >> (position % 5) & 1
        if upper and not char.isalpha():
            return None
        out.append(char.upper() if upper else char.lower())
    return "".join(out)


def is_valid_id(value: str) -> bool:
    return to18(value) is not None


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(_B62[rest])
    text = "".join(reversed(digits)) or "0"
    if len(text) > width:
        raise OverflowError("id space exhausted")
    return text.rjust(width, "0")


# Organization ids made in this process, each new: two sandboxes are two orgs, also to a client
# that keeps answers per org (the connector's describes), on whatever port each one serves.
_ORG_NUMBERS = itertools.count(62**5 * 3 + 17)


def org_id(pod: str = "8d") -> str:
    """An 18-character Organization id no earlier call in this process answered."""
    id15 = f"{KEY_PREFIXES['Organization']}{pod}0{_base62(next(_ORG_NUMBERS), 9)}"
    return id15 + checksum(id15)


class IdGenerator:
    """Makes increasing 18-character ids per key prefix (thread-safe)."""

    def __init__(self, pod: str = "8d", start: int = 62**5 * 7 + 1234) -> None:
        if len(pod) != 2 or not pod.isalnum():
            raise ValueError("pod must be 2 alphanumeric characters")
        self.pod = pod
        self._start = start
        self._next: dict[str, int] = {}
        self._lock = threading.Lock()

    def new(self, prefix: str) -> str:
        with self._lock:
            # Each key prefix starts elsewhere, as real orgs' counters do.
            number = self._next.get(prefix, self._start + sum(ord(c) * 7919 for c in prefix) * 101)
            self._next[prefix] = number + 1
        id15 = f"{prefix}{self.pod}0{_base62(number, 9)}"
        return id15 + checksum(id15)
