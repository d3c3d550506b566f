"""Privacy Guard's consent times (``granted_on``) on the two days a year a zone with daylight
saving time leaves its wall clock in doubt: a time in the spring-forward gap (02:30 in Los Angeles
on the second Sunday of March) names no moment and may mean either side of it, and a time in the
repeated autumn hour (01:30 on the first Sunday of November) names two. The connector hands such
a time over as both moments (an ISO 8601 interval, "start/end"), and the mapping reads it in the
person's favour by the status it dates, as it reads a time without its zone (docs/policy.md, "A
CRM time without its zone"): a no at the later moment, so that a consent given between the two
does not reverse it, a grant at the earlier one, so that it reverses no no it might have preceded
and its validity runs from then. Any other day's times stay exact, and ``modifiedtime`` and
``createdtime`` stay read as the later pass (the cursor's rule, never earlier than the truth)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from consentsync_vtiger import VtigerConnector
from consentsync_vtiger.sandbox.server import VtigerCrm, VtigerSandbox

from consentsync.mapping import MappingValueError, load_mapping
from consentsync.sdk import Cursor
from tests.connectors.against_sandbox import connector_settings, read_until

ZONE_NAME = "America/Los_Angeles"
ZONE = ZoneInfo(ZONE_NAME)
FIELDS = ["contact_id", "consent_name", "consent_status", "granted_on", "consent_source"]
CONSENTS = Path(__file__).resolve().parents[2] / "connectors/consentsync_vtiger/mappings/consents.yaml"
_TIME = "%Y-%m-%d %H:%M:%S"


def _readings(wall: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The earliest and latest UTC moment the wall-clock time ``wall`` (in ZONE) can mean."""
    first, second = (wall.replace(tzinfo=ZONE, fold=fold).astimezone(dt.UTC) for fold in (0, 1))
    return min(first, second), max(first, second)


def _last_gap_and_fold(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The latest wall-clock half past in ZONE's spring-forward gap (a time no clock showed) and in
    its repeated autumn hour, both at least two days before ``now`` (so every reading has passed)."""
    gap = fold = None
    day = (now - dt.timedelta(days=2)).astimezone(ZONE).date()
    for back in range(400):
        for hour in range(24):
            wall = dt.datetime.combine(day - dt.timedelta(days=back), dt.time(hour, 30))
            early, late = _readings(wall)
            if early == late:
                continue
            shown = wall.replace(tzinfo=ZONE, fold=0).astimezone(dt.UTC).astimezone(ZONE).replace(tzinfo=None)
            if shown != wall:
                gap = gap or wall
            else:
                fold = fold or wall
        if gap and fold:
            return gap, fold
    raise AssertionError(f"no daylight-saving change in {ZONE_NAME} within 400 days")


def _connector(server: VtigerSandbox) -> VtigerConnector:
    settings = connector_settings(
        server.connection_settings(), {"timeout": 5}, {"server_timezone": ZONE_NAME}
    )
    return VtigerConnector("vt-dst", settings)


def _event_times(server: VtigerSandbox, observed_at: dt.datetime) -> dict[str, dt.datetime | None]:
    """Each consent record's event time as the shipped mapping reads what the connector hands over."""
    mapping = load_mapping(CONSENTS)
    times: dict[str, dt.datetime | None] = {}
    for record in _connector(server).read_changes("Consents", FIELDS, Cursor(), read_until()):
        (evidence,) = mapping.evidence_from(
            record.fields, connector="vt-dst", observed_at=observed_at, record_id=record.record_id
        )
        times[record.record_id] = evidence.event_time
    return times


def test_a_no_in_a_daylight_saving_gap_or_repeated_hour_is_read_late_and_a_grant_early() -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    gap, fold = _last_gap_and_fold(now)
    with VtigerSandbox(VtigerCrm(privacy_guard=True, timezone=ZONE_NAME)) as server:
        contact = server.crm.create("Contacts", lastname="Dst", email="dst@example.test", at=now)
        made = {}
        for wall in (gap, fold):
            for status in ("Not Granted", "Granted"):
                made[(wall, status)] = server.crm.create(
                    "Consents",
                    consent_name="Email Marketing",
                    contact_id=contact,
                    consent_status=status,
                    granted_on=wall.strftime(_TIME),
                    consent_source="Webform",
                    at=now - dt.timedelta(minutes=5),
                )
        times = _event_times(server, now)
    for wall in (gap, fold):
        early, late = _readings(wall)
        assert late - early == dt.timedelta(hours=1)
        # The refusal may have come at the later moment: a consent captured between the two
        # (before the real no) must not reverse it.
        assert times[made[(wall, "Not Granted")]] == late, wall
        # The grant may have come at the earlier one: it sorts, and its validity runs, from then.
        assert times[made[(wall, "Granted")]] == early, wall


def test_times_on_other_days_stay_exact_and_the_record_stamps_keep_the_later_pass() -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    _, fold = _last_gap_and_fold(now)
    ordinary = fold - dt.timedelta(days=3)  # the Thursday before: one reading only
    with VtigerSandbox(VtigerCrm(privacy_guard=True, timezone=ZONE_NAME)) as server:
        contact = server.crm.create("Contacts", lastname="Dst", email="dst@example.test", at=now)
        # Created (and so stamped) in the first pass of the repeated hour.
        first_pass = _readings(fold)[0]
        granted = server.crm.create(
            "Consents",
            consent_name="Email Marketing",
            contact_id=contact,
            consent_status="Granted",
            granted_on=fold.strftime(_TIME),
            at=first_pass,
        )
        exact = {
            status: server.crm.create(
                "Consents",
                consent_name="Email Marketing",
                contact_id=contact,
                consent_status=status,
                granted_on=ordinary.strftime(_TIME),
                at=now - dt.timedelta(minutes=5),
            )
            for status in ("Not Granted", "Granted", "Waiting")
        }
        served = server.crm.get(granted)
        assert served is not None and served["createdtime"] == fold.strftime(_TIME)
        records = {
            r.record_id: r
            for r in _connector(server).read_changes("Consents", FIELDS, Cursor(), read_until())
        }
        times = _event_times(server, now)
    (moment,) = set(_readings(ordinary))
    for record_id in exact.values():
        assert records[record_id].fields["granted_on"] == moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert times[record_id] == moment
    # The cursor's stamps: a repeated hour read as its later pass (never earlier than the truth).
    assert records[granted].modstamp == _readings(fold)[1]
    assert records[granted].created_at == _readings(fold)[1]
    # ... while the grant that hour dates is read at its earlier one.
    assert times[granted] == first_pass


def test_an_interval_is_read_as_both_moments_a_time_could_mean_and_nothing_else_is_one() -> None:
    """The mapping's side, whatever CRM hands an interval over."""
    mapping = load_mapping(CONSENTS)
    start = dt.datetime(2025, 11, 2, 8, 30, tzinfo=dt.UTC)
    end = start + dt.timedelta(hours=1)

    def read(status: str, value: str, observed_at: dt.datetime) -> dt.datetime | None:
        record = {
            "id": "52x1",
            "consent_name": "Email Marketing",
            "consent_status": status,
            "granted_on": value,
        }
        (evidence,) = mapping.evidence_from(
            record, connector="vt-dst", observed_at=observed_at, record_id="52x1"
        )
        return evidence.event_time

    interval = "2025-11-02T08:30:00Z/2025-11-02T09:30:00Z"
    assert read("Not Granted", interval, end) == end
    assert read("Granted", interval, end) == start
    assert read("Waiting", interval, end) == start  # any other status: as it says (its start)
    # Read between the two moments, the no's latest moment is still to come: it has no time yet
    # (read as when it was first observed), as a no without its zone.
    assert read("Not Granted", interval, start + dt.timedelta(minutes=30)) is None
    assert read("Granted", interval, start + dt.timedelta(minutes=30)) == start
    # Still to come at either moment: future-dated, left to the ledger to refuse (the sync records
    # the no without its time and quarantines the record).
    assert read("Not Granted", interval, start - dt.timedelta(minutes=1)) == end
    # Offsets other than Z, and spaces around the slash, read the same.
    assert read("Not Granted", "2025-11-02T01:30:00-07:00 / 2025-11-02T01:30:00-08:00", end) == end
    assert read("Granted", "2025-11-02T09:30:00Z/2025-11-02T09:30:00Z", end) == end  # one moment
    for malformed in (
        "2025-11-02T09:30:00Z/2025-11-02T08:30:00Z",  # its end before its start
        "2025-11-02T08:30:00/2025-11-02T09:30:00Z",  # a time without its offset
        "2025-11-02T08:30:00Z/",
        "2025-11-02T08:30:00Z/2025-11-02T09:30:00Z/2025-11-02T10:30:00Z",
    ):
        with pytest.raises(MappingValueError, match="granted_on"):
            read("Granted", malformed, end)
