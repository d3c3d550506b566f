"""Dynamics: what a Journeys write costs (session 64 review of b03686d).

With ``batch_size`` 10 (the default since b03686d) the consent-row creates went in passes of
``batch_size // (purposes x recipient fields)`` contacts, each pass at least three ``$batch``
calls (the contacts' addresses, the look-up of their rows, the creates): 2,000 contacts cost 604
calls. A pass is now as many contacts as one ``$batch`` could create every row of (1,000 / the
rows a contact may need): its look-ups are a call each, and only the creates go in parts of
``batch_size`` (``_batch``). ``journeys_rows_created`` is logged once per write, not per pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from consentsync_dynamics import DynamicsConnector, journeys
from consentsync_dynamics import connector as module
from consentsync_dynamics.sandbox.server import DynamicsSandbox

from consentsync.sdk import RecordUpdate

EMAIL_MARKETING = "6f0b1c7e-0d6a-4c1e-9a51-000000000001"
FIELD = journeys.field_for(EMAIL_MARKETING)
OWN_ROWS_SECRET = "own-rows~stable~key~0123456789abcdef"


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    with DynamicsSandbox() as sandbox:
        sandbox.environment.seed(300, seed=7)
        yield sandbox


class _Recorder:
    """Stands in for the connector module's logger (structlog may be configured to cache it)."""

    def __init__(self, into: list[dict[str, Any]]) -> None:
        self.into = into

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.into.append({"event": event, "level": level, **fields})


def _connector(dv: DynamicsSandbox, **extra: Any) -> DynamicsConnector:
    settings = {**dv.connection_settings(), "own_rows_secret": OWN_ROWS_SECRET, **extra}
    return DynamicsConnector("dyn", settings)


@pytest.mark.parametrize("fields", [["emailaddress1"], ["emailaddress1", "emailaddress2", "emailaddress3"]])
def test_a_journeys_write_costs_its_creates_and_a_few_look_ups(
    dv: DynamicsSandbox, fields: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [str(row["contactid"]) for row in dv.environment.records("contact")]
    conn = _connector(dv, journeys_email_fields=fields)
    conn.describe(journeys.JOURNEYS_CONTACT)  # metadata, read once per connector
    before = dv.calls["batch"]
    logs: list[dict[str, Any]] = []
    monkeypatch.setattr(module, "log", _Recorder(logs))
    results = conn.write([RecordUpdate(journeys.JOURNEYS_CONTACT, i, {FIELD: True}) for i in ids])
    assert all(result.ok for result in results)
    created = conn.rows_created
    assert created > 100
    creates = math.ceil(created / conn.config.batch_size)
    spent = dv.calls["batch"] - before
    # One pass (300 contacts x at most 3 rows <= 1,000): its addresses, its look-up, its creates.
    # Sized on batch_size, 300 contacts took 30 to 100 passes of three calls or more each.
    assert spent <= creates + 2, (spent, created)
    logged = [entry for entry in logs if entry["event"] == "dynamics.journeys_rows_created"]
    assert len(logged) == 1 and logged[0]["created"] == created, logged

    # Written again (a lost answer): only the look-ups, nothing created.
    before = dv.calls["batch"]
    assert all(
        r.ok for r in conn.write([RecordUpdate(journeys.JOURNEYS_CONTACT, i, {FIELD: True}) for i in ids])
    )
    assert conn.rows_created == created
    assert dv.calls["batch"] - before <= 2
