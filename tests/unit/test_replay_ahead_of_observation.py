"""A value whose event time lies a little after its observation (inside the allowed clock skew) is
recorded at its observation time; replaying it is a duplicate like any other replay, not a second
event (the replay check looked for the print of the value as received, the ledger stores the print
of the value as recorded, and the insert failed on the unique index)."""

from __future__ import annotations

from datetime import timedelta

from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import Ledger, RecordRequest
from tests.conftest import Clock


def test_replaying_a_value_dated_after_its_observation_is_a_duplicate(ledger: Ledger, clock: Clock) -> None:
    observed = clock() - timedelta(hours=1)
    ahead = Evidence(
        "email_marketing",
        "email",
        ConsentStatus.GRANTED,
        LawfulBasis.CONSENT,
        observed + timedelta(seconds=90),  # inside the clock skew, after the observation
        observed,
        "salesforce",
        Origin.CRM,
    )
    request = RecordRequest(Identity(email="ahead@example.org"), ahead)
    first = ledger.record_many([request])
    assert (first.recorded, first.duplicates) == (1, 0)
    again = ledger.record_many([request, request])
    assert (again.recorded, again.duplicates) == (0, 2)
    assert ledger.record(request.identity, ahead).duplicate
