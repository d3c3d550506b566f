"""Generated people for every sandbox's seed: first and last names from across Europe (accents,
apostrophes, particles: what breaks naive escaping), and email addresses made from them the way
people make theirs, and the crowded seconds their change stamps fall on. Shared so that every
vendor's sandbox seeds the same kind of population."""

from __future__ import annotations

import datetime as dt
import random
import unicodedata

__all__ = ["DOMAINS", "FIRST_NAMES", "LAST_NAMES", "crowded_seconds", "make_email", "random_person"]


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(c for c in folded.lower() if c.isalnum() or c in "'-")


def random_person(rng: random.Random, index: int, used: set[str]) -> tuple[str, str, str]:
    """The ``index``-th generated person of a seed: first name, last name and an address that
    ``used`` (lower-cased, updated) does not hold yet."""
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    return first, last, make_email(rng, first, last, index, used)


def crowded_seconds(
    rng: random.Random, now: dt.datetime, count: int, *, days: int, after: int = 60
) -> list[dt.datetime]:
    """``count`` moments of the past ``days`` days (at least ``after`` seconds before ``now``) on
    which a seed's change stamps crowd, as imports and mass updates make many records share one
    second in a real CRM (what a connector's paging must get right)."""
    return [now - dt.timedelta(seconds=rng.randrange(after, days * 86400)) for _ in range(count)]


def make_email(rng: random.Random, first: str, last: str, index: int, used: set[str]) -> str:
    local = rng.choice(
        (
            f"{_ascii(first)}.{_ascii(last)}",
            f"{_ascii(first)[0]}{_ascii(last)}",
            f"{_ascii(first)}_{_ascii(last)}",
            f"{_ascii(last)}.{_ascii(first)}",
        )
    ).strip("-")
    domain = rng.choice(DOMAINS)
    email = f"{local}@{domain}"
    if email.lower() in used:
        email = f"{local}{index}@{domain}"
    used.add(email.lower())
    if rng.random() < 0.12:
        # Some people type their address with capitals; CRMs store it as typed.
        email = f"{local.title()}@{domain.capitalize()}"
    return email


DOMAINS = (
    "example.com",
    "example.org",
    "example.net",
    "acme.test",
    "globex.test",
    "initech.test",
    "mail.test",
)
FIRST_NAMES = (
    "Anna",
    "Ben",
    "Chloé",
    "David",
    "Elena",
    "Finn",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Katarzyna",
    "Liam",
    "Maria",
    "Noah",
    "Olivia",
    "Paul",
    "Quentin",
    "Rosa",
    "Siobhán",
    "Tomás",
    "Ulrike",
    "Victor",
    "Wiebke",
    "Xavier",
    "Yara",
    "Zoë",
    "José",
    "Łukasz",
    "Aoife",
    "Mehmet",
    "Priya",
    "Sven",
    "Emma",
    "Lucas",
    "Sofia",
    "Mateo",
)
LAST_NAMES = (
    "Müller",
    "Schmidt",
    "O'Brien",
    "D'Angelo",
    "Dubois",
    "van der Berg",
    "Nowak",
    "García",
    "Rossi",
    "Murphy",
    "Smith-Jones",
    "Jansen",
    "Kowalski",
    "Larsen",
    "Fischer",
    "Martin",
    "Bernard",
    "Yılmaz",
    "Papadopoulos",
    "Novák",
    "Silva",
    "Andersson",
    "Walsh",
    "Weber",
    "Bauer",
    "Lefèvre",
    "Horváth",
    "Costa",
    "Nielsen",
    "Byrne",
)
