"""bb64 dynfix item 3: docs/connectors/dynamics.md step 2 listed a least-privilege role ending
"nothing else", while the connector reads ``organizations?$select=isauditenabled`` (Organization
Read) and consent rows' audit history (RetrieveRecordChangeHistory: prvReadRecordAuditHistory,
View Audit History), which the same page said elsewhere the application user needs. The role in
step 2 names every privilege the sandbox checks (``PRIVILEGES``), and without one the connector
runs on the safe side, as the page says."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from consentsync_dynamics import DynamicsConnector
from consentsync_dynamics.sandbox.server import PRIVILEGES, DynamicsSandbox

from tests.connectors.against_sandbox import connector_settings
from tests.sandbox.serving import serve_seeded

DOC = Path(__file__).resolve().parents[2] / "docs" / "connectors" / "dynamics.md"


def _step_two() -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"^2\. \*\*A custom security role\*\*(.*?)^3\. ", text, re.MULTILINE | re.DOTALL)
    assert match is not None, "step 2 of 'What to create in Dataverse' not found"
    return match.group(1)


def test_the_documented_role_grants_every_privilege_the_connector_uses() -> None:
    step = _step_two()
    for privilege in PRIVILEGES.values():
        assert privilege in step, privilege
    assert "View Audit History" in step and "Organization" in step
    assert "nothing else" not in step.lower()


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    yield from serve_seeded(DynamicsSandbox(), lambda server: None)


@pytest.mark.parametrize("switch", sorted(PRIVILEGES))
def test_without_one_of_them_the_connector_runs_on_the_safe_side(dv: DynamicsSandbox, switch: str) -> None:
    dv.environment.auditing = True
    dv.environment.tables["msdynmkt_contactpointconsent4"].audited = True
    setattr(dv, switch, False)
    connector = DynamicsConnector("dyn", connector_settings(dv.connection_settings(), {}))
    if switch == "organization_readable":
        assert connector._addresses_audited() is False  # every contact checked: never less
    else:
        row = dv.environment.create(
            "msdynmkt_contactpointconsent4",
            {"msdynmkt_contactpointvalue": "a@example.test", "msdynmkt_value": 534120002},
        )
        stamp = dv.environment.get("msdynmkt_contactpointconsent4", row)["modifiedon"]
        assert list(connector._audit_histories({row: stamp})) == [(row, None)]  # history unknown
