"""SuperOffice keeps consent times in UTC (SOTimezone) and may send them without an offset: the
connector hands them to the mapping tagged, since a time without its zone is read as one in an
unknown zone (a no up to 12 hours later, a grant 14 hours earlier: docs/policy.md)."""

from __future__ import annotations

from datetime import UTC, datetime

from consentsync_superoffice.connector import _record


def test_consent_times_without_an_offset_reach_the_mapping_as_utc() -> None:
    infos = [
        {"ConsentPurposeKey": "EMARKETING", "Updated": "2026-11-23T19:00:00.1234567"},
        {"ConsentPurposeKey": "STORE", "Updated": "2026-11-23T19:00:00+01:00", "Registered": "not a time"},
    ]
    infos[0]["Registered"] = "2026-11-01 08:00"
    wanted = {key: [f"Updated_{key}", f"Registered_{key}"] for key in ("EMARKETING", "STORE")}
    fields = _record(7, datetime(2026, 11, 24, tzinfo=UTC), "a@example.com", infos, wanted).fields
    assert fields["Updated_EMARKETING"] == "2026-11-23T19:00:00.123456Z"
    assert fields["Registered_EMARKETING"] == "2026-11-01T08:00:00Z"
    assert fields["Updated_STORE"] == "2026-11-23T18:00:00Z"
    assert fields["Registered_STORE"] == "not a time"  # left for the mapping to refuse
