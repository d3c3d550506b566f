"""An opt-out beside a value the mapping cannot translate, end to end against the Salesforce
sandbox (`consentsync sync`, the shipped Contact mapping). The admin adds a Legal Basis picklist
value the mapping does not name, a sales user sets it, and the person ticks Email Opt Out: the
no is recorded all the same (a withdrawal needs no basis; held back with the basis, the person
stayed opted in everywhere until a mapping edit and a full run), the record is quarantined for
the basis alone (exit 4, its reason naming the field and the value), a retry reads it whole again
and quarantines it again while the mapping cannot name the value, and once the mapping names it
the next run reads every record again and the value is read (docs/policy.md, "Event times and
input limits")."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from consentsync_salesforce.sandbox import SalesforceSandbox

from consentsync import exit_codes
from tests.conftest import SQLITE_ONLY, Cli, proof, record_args
from tests.integration.test_cli_sync import connect_sandbox

# The connector's rules against its sandbox: the ledger's SQL of a partly recorded record's
# quarantine is the page's, run on PostgreSQL by the engine's own tests.
pytestmark = SQLITE_ONLY

ADDRESS = "quinn@example.test"
NEW_BASIS = "Legitimate Interest (B2B)"
OTHER_BASIS = "Legitimate Interest (B2C)"


def _sync(cli: Cli, code: int) -> dict[str, Any]:
    result = cli("sync", "sf", "--json")
    assert result.exit_code == code, f"sync -> {result.exit_code}: {result.output}{result.stderr}"
    report: dict[str, Any] = yaml.safe_load(result.stdout)
    assert report["status"] == "succeeded", report["error"]
    time.sleep(1.1)  # whole seconds: what happens next is stamped after this run's bound
    return report


def _email_state(cli: Cli) -> tuple[str, bool]:
    view = cli.json("subject", "show", ADDRESS)
    state = next(p for p in view["purposes"] if (p["purpose"], p["channel"]) == ("email_marketing", "email"))
    return state["status"], state["suppressed"]


def _open_quarantine(cli: Cli, run_id: str) -> list[dict[str, Any]]:
    return list(cli.json("runs", "show", run_id)["quarantined_records"])


def _admin_adds_picklist_value(sandbox: SalesforceSandbox, value: str) -> None:
    """Setup > Object Manager > Contact > Legal Basis > New: a value users may pick."""
    contact = sandbox.org.resolve("Contact")
    assert contact is not None
    field = contact.fields["Legal_Basis__c"]
    contact.fields["Legal_Basis__c"] = dataclasses.replace(field, picklist=(*field.picklist, value))
    contact.__post_init__()


def test_an_opt_out_beside_a_legal_basis_the_mapping_cannot_name_is_recorded(
    cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SalesforceSandbox() as sandbox:
        connect_sandbox(sandbox, config_path, monkeypatch)
        org = sandbox.org
        quinn = org.create("Contact", LastName="Quinn", Email=ADDRESS, Legal_Basis__c="Consent")
        cli.ok(*record_args(ADDRESS, "email_marketing", "granted", "--basis", "consent", *proof()))
        _sync(cli, exit_codes.OK)
        assert _email_state(cli) == ("granted", False)

        _admin_adds_picklist_value(sandbox, NEW_BASIS)
        org.update(quinn, Legal_Basis__c=NEW_BASIS, HasOptedOutOfEmail=True)
        first = _sync(cli, exit_codes.QUARANTINED)
        # The no is the person's: recorded, though the basis beside it cannot be translated.
        assert _email_state(cli) == ("withdrawn", True)
        assert (first["counts"]["quarantined"], first["counts"]["evidence_recorded"]) == (1, 1)
        [held] = _open_quarantine(cli, first["run_id"])
        assert (held["object"], held["record_id"]) == ("Contact", quinn)
        assert "field Legal_Basis__c: cannot translate" in held["reason"] and NEW_BASIS in held["reason"]

        # Read again unchanged (the look-back window), it says nothing new: not quarantined twice.
        again = _sync(cli, exit_codes.OK)
        assert (again["counts"]["quarantined"], again["counts"]["evidence_recorded"]) == (0, 0)

        # Retried by ops with the mapping as it is: read whole again, quarantined again, the no
        # not recorded twice.
        [row] = cli.json("runs", "show", first["run_id"])["quarantined_records"]
        cli.ok("runs", "retry", str(row["id"]), "--actor", "ops")
        retried = _sync(cli, exit_codes.QUARANTINED)
        assert (retried["counts"]["quarantined"], retried["counts"]["evidence_recorded"]) == (1, 0)
        assert _email_state(cli) == ("withdrawn", True)

        # The admin names the value in the mapping: the next run reads every record again.
        mapping = config_path.parent / "mappings" / "contact.yaml"
        text = mapping.read_text()
        mapping.write_text(
            text.replace(
                '"Legitimate Interest": legitimate_interests',
                f'"{NEW_BASIS}": legitimate_interests\n        "Legitimate Interest": legitimate_interests',
            )
        )
        fixed = _sync(cli, exit_codes.OK)
        assert fixed["counts"]["quarantined"] == 0
        assert _email_state(cli) == ("withdrawn", True)
        assert org.get(quinn)["HasOptedOutOfEmail"] is True


def test_our_own_tick_read_back_beside_a_basis_the_mapping_cannot_name_is_no_withdrawal(
    cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read leniently, the record must be recognised leniently too: the Email Opt Out that a
    restriction made consentsync tick, read back beside the unknown basis, is our write, not the
    person's no (recorded as one, it would outlast the restriction's lift for good)."""
    with SalesforceSandbox() as sandbox:
        connect_sandbox(sandbox, config_path, monkeypatch)
        org = sandbox.org
        _admin_adds_picklist_value(sandbox, NEW_BASIS)
        quinn = org.create("Contact", LastName="Quinn", Email=ADDRESS, Legal_Basis__c=NEW_BASIS)
        cli.ok(*record_args(ADDRESS, "email_marketing", "granted", "--basis", "consent", *proof()))
        _sync(cli, exit_codes.OK)  # an unticked box says nothing: its basis is never read
        cli.ok("restrict", "--email", ADDRESS, "--reason", "accuracy contested", "--actor", "ops")
        restricted = _sync(cli, exit_codes.OK)
        assert restricted["counts"]["pushed"] == 1 and org.get(quinn)["HasOptedOutOfEmail"] is True
        # A sales user picks another value the mapping does not name: the record is read again,
        # our tick beside it. Nothing is the person's; the record is quarantined for the basis.
        _admin_adds_picklist_value(sandbox, OTHER_BASIS)
        org.update(quinn, Legal_Basis__c=OTHER_BASIS)
        read_back = _sync(cli, exit_codes.QUARANTINED)
        assert (read_back["counts"]["evidence_recorded"], read_back["counts"]["quarantined"]) == (0, 1)
        cli.ok("restrict", "--email", ADDRESS, "--reason", "corrected", "--lift", "--actor", "ops")
        _sync(cli, exit_codes.OK)
        assert _email_state(cli) == ("granted", False)
        assert org.get(quinn)["HasOptedOutOfEmail"] is False
