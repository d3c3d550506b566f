"""A plan applied a second time (a retried job, an old file) is told apart from a stale one: it
was applied already, by a named run, and nothing is pushed again (docs/admin-commands.md)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from consentsync import exit_codes
from consentsync.ledger.service import Ledger
from consentsync.mapping import parse_mapping
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import Clock
from tests.integration.test_policy_s49_sync import MAPPING, Org, _grant


def _engine(ledger: Ledger, config_path: Path, org: Org) -> SyncEngine:
    mapping = parse_mapping(MAPPING, config_path.parent / "thing.yaml")
    return SyncEngine(ledger, org, [mapping], SyncOptions(signpost_lag_seconds=0, mode="observe"))


def test_a_plan_applied_again_says_it_was_applied_and_by_which_run(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = Org(clock)
    org.put("r1", "a@example.com")  # opted in, as the ledger says
    org.put("r2", "b@example.com")  # erased below: the plan suppresses r2
    _grant(ledger, "a@example.com", clock.now - timedelta(days=30))
    ledger.erase("b@example.com", reason="Art. 17 request")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert org.written == []  # observe mode: held for review
    plan = _engine(ledger, config_path, org).run(dry_run=True).plan
    assert plan is not None and plan.items
    clock.advance(minutes=1)
    applied = _engine(ledger, config_path, org).run(apply_plan=plan)
    assert applied.status == "succeeded", applied.error
    written = list(org.written)
    assert written
    clock.advance(minutes=1)
    again = _engine(ledger, config_path, org).run(apply_plan=plan)
    # A script re-running `apply` after a timeout sees success for a plan that went through.
    assert again.status == "succeeded" and again.exit_code is None, again.error
    assert again.note is not None and "already applied" in again.note
    assert applied.run_id in again.note and "the ledger or the CRM changed" not in again.note
    assert org.written == written  # nothing pushed again


def test_a_stale_plan_is_still_told_as_stale(ledger: Ledger, config_path: Path, clock: Clock) -> None:
    org = Org(clock)
    org.put("r1", "b@example.com")
    ledger.erase("b@example.com", reason="Art. 17 request")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    plan = _engine(ledger, config_path, org).run(dry_run=True).plan
    assert plan is not None and plan.items
    clock.advance(minutes=1)
    org.records["r1"].update(optout=True, modifiedon=clock.now)  # a CRM user did it meanwhile
    refused = _engine(ledger, config_path, org).run(apply_plan=plan)
    assert refused.exit_code == exit_codes.STALE_PLAN and refused.error is not None
    assert "changed since the plan was made" in refused.error and "already applied" not in refused.error


# -- a mapped field the CRM lacks, named with the mapping's file and line ---------------------------


class _Lacking(Org):
    """A CRM whose object has no field ``optout``: its connector refuses the read, as the
    shipped connectors do (sdk.require_fields), naming the object and the field only."""

    def read_changes(self, object_type, fields, since, until):  # type: ignore[no-untyped-def]
        from consentsync.sdk.objects import require_fields

        require_fields(fields, {"id", "modifiedon", "email"}, f"{object_type} has no field(s)", "(or hidden)")
        return super().read_changes(object_type, fields, since, until)


def test_a_mapped_field_the_crm_lacks_is_named_with_its_mapping_file_and_line(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    mapping = parse_mapping(MAPPING, config_path.parent / "thing.yaml")
    report = SyncEngine(ledger, _Lacking(clock), [mapping], SyncOptions(signpost_lag_seconds=0)).run()
    assert report.status == "failed" and report.exit_code == exit_codes.CONFIG
    line = next(n for n, text in enumerate(MAPPING.splitlines(), 1) if "field: optout" in text)
    where = f"{config_path.parent / 'thing.yaml'}:{line}"
    assert report.error == f"config: thing has no field(s) optout (or hidden) (mapping: optout at {where})"
