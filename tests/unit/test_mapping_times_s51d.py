"""CRM times that leave the moment open (docs/policy.md, "A CRM time without its zone"): a date
alone, or a time without an offset that the connector left as it came. A no is read as late as
it can mean (at UTC-12), a grant as early (at UTC+14), so that neither a consent captured before
the real no reverses it nor a grant outranks a no it may have followed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from consentsync.config import parse_config, starter_config_text
from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin
from consentsync.mapping import Mapping, parse_mapping
from consentsync.reconcile import Policy, consent_state, summarise

TEXT = """\
version: 1
vendor: acme
object: Contact
identity: {record_id: Id, modstamp: Modified, email: Email}
consents:
  - purpose: email_marketing
    channel: email
    status:
      field: OptOut
      direction: pull
      pull: {true: withdrawn, false: granted}
    event_time: {field: ChangedAt}
"""
LATE = datetime(2026, 11, 30, tzinfo=UTC)  # read long after: every bound has passed


@pytest.fixture
def mapping() -> Mapping:
    return parse_mapping(TEXT, Path("contact.yaml"))


def _time(mapping: Mapping, opted_out: bool, raw: object, observed_at: datetime = LATE) -> datetime | None:
    record = {"Id": "c1", "Email": "a@example.com", "OptOut": opted_out, "ChangedAt": raw}
    [evidence] = mapping.evidence_from(record, connector="acme-main", observed_at=observed_at)
    assert evidence.status is (ConsentStatus.WITHDRAWN if opted_out else ConsentStatus.GRANTED)
    return evidence.event_time


@pytest.mark.parametrize(
    ("opted_out", "raw", "expected"),
    [
        # A date alone: a no at the end of that day at UTC-12, a grant at its start at UTC+14.
        (True, "2026-11-23", datetime(2026, 11, 24, 11, 59, 59, 999999, tzinfo=UTC)),
        (True, date(2026, 11, 23), datetime(2026, 11, 24, 11, 59, 59, 999999, tzinfo=UTC)),
        (False, "2026-11-23", datetime(2026, 11, 22, 10, 0, tzinfo=UTC)),
        # A time without an offset: the same bounds, from that wall-clock time.
        (True, "2026-11-23T19:00:00", datetime(2026, 11, 24, 7, 0, tzinfo=UTC)),
        (True, "2026-11-23 19:00:00.250", datetime(2026, 11, 24, 7, 0, 0, 250000, tzinfo=UTC)),
        (True, datetime(2026, 11, 23, 19, 0), datetime(2026, 11, 24, 7, 0, tzinfo=UTC)),
        (False, "2026-11-23T19:00:00", datetime(2026, 11, 23, 5, 0, tzinfo=UTC)),
        # A moment (an offset, or Z) stays as stated.
        (True, "2026-11-23T19:00:00-08:00", datetime(2026, 11, 24, 3, 0, tzinfo=UTC)),
        (True, "2026-11-23T19:00:00Z", datetime(2026, 11, 23, 19, 0, tzinfo=UTC)),
        (False, "2026-11-23T19:00:00.000+0000", datetime(2026, 11, 23, 19, 0, tzinfo=UTC)),
        (True, datetime(2026, 11, 23, 19, 0, tzinfo=UTC), datetime(2026, 11, 23, 19, 0, tzinfo=UTC)),
    ],
)
def test_a_time_without_its_zone_is_read_in_the_persons_favour(
    mapping: Mapping, opted_out: bool, raw: object, expected: datetime
) -> None:
    assert _time(mapping, opted_out, raw) == expected


@pytest.mark.parametrize(
    ("raw", "bound"),
    [
        ("2026-11-23", datetime(2026, 11, 24, 11, 59, 59, 999999, tzinfo=UTC)),
        ("2026-11-23T19:00:00", datetime(2026, 11, 24, 7, 0, tzinfo=UTC)),
    ],
)
def test_a_no_has_no_time_until_the_latest_moment_it_can_mean_has_passed(
    mapping: Mapping, raw: str, bound: datetime
) -> None:
    """Read before that moment the no is unknown (read as when it was first observed), never a
    time still to come; read from that moment on, it is that moment."""
    assert _time(mapping, True, raw, observed_at=bound - timedelta(microseconds=1)) is None
    assert _time(mapping, True, raw, observed_at=bound) == bound
    # Still to come in every zone (UTC+14 included): a future-dated no, left for the sync to
    # quarantine for its time, not silently undated.
    stated = bound - (timedelta(days=1, hours=12, microseconds=-1) if len(raw) == 10 else timedelta(hours=12))
    first = stated - timedelta(hours=14)
    assert _time(mapping, True, raw, observed_at=first) is None
    assert _time(mapping, True, raw, observed_at=first - timedelta(microseconds=1)) == bound


@pytest.mark.parametrize("raw", ["2026-11-23", "2026-11-23T19:00:00"])
def test_a_us_opt_out_is_not_reversed_by_a_consent_captured_before_it(mapping: Mapping, raw: str) -> None:
    """The person opted out at 19:00 PST on Nov 23 (Nov 24 03:00 UTC); the CRM says Nov 23, or
    19:00 with no zone. A web form captured a consent at Nov 24 01:00 UTC, two hours before the
    real no: the no stands."""
    starter = parse_config(starter_config_text(), Path("/srv/consentsync/consentsync.yaml"))
    record = {"Id": "c1", "Email": "a@example.com", "OptOut": True, "ChangedAt": raw}
    [no] = mapping.evidence_from(record, connector="acme-main", observed_at=LATE)
    captured = Evidence(
        no.purpose,
        no.channel,
        ConsentStatus.GRANTED,
        LawfulBasis.CONSENT,
        datetime(2026, 11, 24, 1, 0, 0, 250000, tzinfo=UTC),
        LATE,
        "web_form",
        Origin.CAPTURE,
        notice_version="privacy-v3",  # evidenced: it would reverse a no it followed
    )
    policy = Policy(trusted_sources=frozenset({"web_form"}))
    # The same consent captured after the no's latest moment reverses it: the policy is in force.
    after = replace(captured, event_time=datetime(2026, 11, 24, 13, tzinfo=UTC))
    state = consent_state(summarise([no, after], policy), starter.purposes[no.purpose], no.channel)
    assert state.status is ConsentStatus.GRANTED
    for order in ([no, captured], [captured, no]):
        state = consent_state(summarise(order, policy), starter.purposes[no.purpose], no.channel)
        assert state.status is ConsentStatus.WITHDRAWN
