"""The purposes the reconcile tests decide on: one of each kind (consent, legitimate interests,
contract; direct marketing or not), built by :func:`make_purpose` so that each test file states only
what sets its purposes apart, not the fields every purpose carries."""

from __future__ import annotations

from dataclasses import replace

from consentsync.domain import LawfulBasis, ObjectionHandling, Purpose


def make_purpose(
    key: str,
    name: str,
    basis: LawfulBasis,
    *,
    direct_marketing: bool,
    validity_days: int | None = None,
    handling: ObjectionHandling = ObjectionHandling.AUTO_UPHOLD,
    channels: tuple[str, ...] | None = None,
) -> Purpose:
    """A purpose as configured; ``channels`` None keeps the product's default channels."""
    built = Purpose(key, name, direct_marketing, basis, validity_days, handling)
    return built if channels is None else replace(built, channels=channels)
