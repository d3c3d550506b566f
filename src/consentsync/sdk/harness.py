"""What a connector's contract tests (and the call benchmark) need from its sandbox: the
:class:`ContractHarness` protocol. A connector package implements it once, next to its sandbox;
:mod:`consentsync.sdk.testing` runs the same contract against it, and ``bench/connector_calls.py``
measures its API calls. This module imports neither pytest nor any vendor.

A harness is registered, like the connector, through an entry point (group
``consentsync.harnesses``, same name as the connector), so that tools can find it::

    [project.entry-points."consentsync.harnesses"]
    acme = "consentsync_acme.testing:AcmeHarness"
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from consentsync.sdk.connector import Connector, Cursor, RecordUpdate

HARNESS_GROUP = "consentsync.harnesses"
PERSON_HARNESS_MISSING = "the harness lacks create_person/opt_out (consentsync.sdk.harness.PersonHarness)"


class FaultOutcome(StrEnum):
    """What a connector must do when a fault switch is on."""

    SURVIVES = "survives"  # retried (or the session renewed): the read completes, nothing lost
    STOPS = "stops"  # a ConnectorError whose action is RATE_LIMITED: the run stops cleanly


#: The fault switches every sandbox offers (see :mod:`consentsync.sandbox.faults`) and what a
#: connector must do under each. A harness may change an outcome in ``fault_outcomes`` where its
#: CRM answers differently (a throttle the connector cannot tell from the daily limit: it stops).
STANDARD_FAULTS: Mapping[str, FaultOutcome] = {
    "server_error": FaultOutcome.SURVIVES,  # the next 2 calls answer 5xx
    "connection_reset": FaultOutcome.SURVIVES,  # the next 2 connections are reset
    "slow_response": FaultOutcome.SURVIVES,  # the next call answers after the connector's timeout
    "session_expiry": FaultOutcome.SURVIVES,  # every session expires after 2 calls
    "throttle": FaultOutcome.SURVIVES,  # the next 2 calls get the short-term limit (Retry-After 1s)
    "request_limit": FaultOutcome.STOPS,  # every call after the first gets the hard (daily) limit
}

#: Text that must travel through a connector unchanged and never break a query it builds:
#: quotes and backslashes (SOQL, OData, VTQL, JSON), query-language operators, the HubSpot
#: multi-checkbox separator, markup, control characters, unicode beyond the BMP.
HOSTILE_TEXTS: tuple[str, ...] = (
    "O'Brien",
    'say "hi"',
    "back\\slash\\",
    "\\'; DROP TABLE contacts; --",
    "' OR Id != '' OR LastName = '",
    "') or (1 eq 1",
    "50% _off_ *all* ?",
    "a;b;c",
    "$filter=x eq 'y'&$top=1",
    '{"json": [1, {"a": null}]}',
    "<b>tag</b> &amp; &lt;",
    "line\nbreak\ttab",
    "Zoë Ångström – 中文 – 🙂",
    "\u200bzero\u202ewidth",
)


def hostile_texts(max_length: int) -> list[str]:
    """:data:`HOSTILE_TEXTS` cut to ``max_length``, plus one text of exactly that length."""
    long = ("Ünïcode'\"\\ " * (max_length // 10 + 1))[:max_length]
    return [text[:max_length] for text in HOSTILE_TEXTS] + [long]


@runtime_checkable
class ContractHarness(Protocol):
    """A connector's sandbox, seen by the contract kit. Every method acts on the sandbox's own
    store (never through the connector under test), as a user of the CRM would.

    Attributes:

    * ``vendor``: the connector's entry-point name (group ``consentsync.connectors``).
    * ``object_type``: the object the contract reads and writes (a contact-like object).
    * ``read_fields``: fields the contract asks ``read_changes`` for (include ``text_field``).
    * ``text_field``: a writable free-text field; ``text_max_length`` its length.
    * ``page_size``: records per read page as :meth:`connector_settings` configures the
      connector (small, so that seeds cross pages); ``write_batch_size``: records per write call.
    * ``mapping_files``: mapping files for ``object_type`` that load against the starter
      config's purposes and channels, for the tests that run the sync engine; they map the email
      opt-out to the purpose ``email_marketing`` on the channel ``email``.
    * ``fault_outcomes``: changes to :data:`STANDARD_FAULTS` (may be empty).
    """

    vendor: str
    object_type: str
    read_fields: Sequence[str]
    text_field: str
    text_max_length: int
    page_size: int
    write_batch_size: int
    mapping_files: Sequence[Path]
    fault_outcomes: Mapping[str, FaultOutcome]

    def start(self) -> None:
        """Start a fresh, empty sandbox."""

    def stop(self) -> None:
        """Stop it and remove what it made (certificates, files)."""

    def connector_settings(self, **overrides: Any) -> dict[str, Any]:
        """The ``settings:`` block of a connector configured against the running sandbox, with a
        short timeout (about 1 s) and enough retry attempts (at least 4)."""

    def bad_credentials_settings(self, wrong_secret: str) -> dict[str, Any]:
        """The same, with ``wrong_secret`` in place of the real secret or token."""

    def seed(self, count: int, *, shared_modstamp: bool = False) -> list[str]:
        """Create ``count`` records of ``object_type`` with distinct emails; with
        ``shared_modstamp`` they all carry one change time (a second in the past). Returns ids."""

    def record_ids(self) -> list[str]:
        """Every record of ``object_type`` in the store."""

    def change(self, record_id: str) -> None:
        """Edit the record as a CRM user would: its change time moves to now."""

    def create_with_text(self, text: str) -> str:
        """Create a record whose ``text_field`` holds ``text``; returns its id."""

    def read_text(self, record_id: str) -> Any:
        """The stored value of ``text_field``."""

    def text_update(self, record_id: str, text: str) -> RecordUpdate:
        """An update setting ``text_field`` to ``text``."""

    def consent_update(self, record_id: str, opted_out: bool) -> RecordUpdate:
        """An update of the record's email opt-out flag (or its CRM's equivalent)."""

    def read_opted_out(self, record_id: str) -> bool:
        """The stored opt-out flag, as a bool."""

    def fail_writes(self, record_ids: Sequence[str]) -> None:
        """Make every write of these records fail with the CRM's per-record error."""

    def set_fault(self, fault: str) -> None:
        """Switch on one of :data:`STANDARD_FAULTS` (as each one's comment there says)."""

    def clear_faults(self) -> None:
        """Every fault switch off."""

    def faults_injected(self) -> int:
        """How many faults the sandbox has injected since it started."""

    def api_calls(self) -> int:
        """API calls the sandbox has answered (all endpoint kinds)."""

    def write_calls(self) -> int:
        """API calls that write records (batch updates, subscription changes)."""


@runtime_checkable
class PersonHarness(Protocol):
    """People as the multi-CRM demo and the withdrawal contract test create them. Every harness
    should implement it (it joins :class:`ContractHarness` once all built-ins do); the contract
    test that needs it skips, saying so, for a harness without it."""

    def create_person(self, email: str, *, opted_out: bool = False) -> str:
        """A record of ``object_type`` for a person with this email, as a CRM user creates it,
        opted out of email marketing when ``opted_out``; returns its id."""

    def opt_out(self, record_id: str) -> None:
        """The CRM user ticks the email opt-out (withdraws email consent) on the record: its
        change time moves to now."""


@runtime_checkable
class LateCommitHarness(Protocol):
    """A record whose transaction commits late, as every CRM produces one (a long transaction, a
    trigger chain, a bulk job, a search index that lags the write). Every harness should
    implement it; the contract test that needs it skips, saying so, for a harness without it."""

    def begin_late_person(self, email: str, *, opted_out: bool = False) -> str:
        """Start creating a person's record (as :meth:`PersonHarness.create_person`): its id and
        change time are given now, but no read of the CRM sees the record until
        :meth:`commit_late`. Returns its id."""

    def commit_late(self, record_id: str) -> None:
        """The transaction commits: the record becomes visible with the id and the change time
        it was given when it began (not the time of the commit)."""


@runtime_checkable
class ClockSkewHarness(Protocol):
    """A CRM whose server clock is off this machine's, as many are (a clock never synchronised,
    a virtual machine resumed). Every harness over an ``HttpsSandbox`` implements it; the contract
    test that needs it skips, saying so, for a harness without it."""

    def skew_clock(self, offset: timedelta) -> None:
        """From now on the CRM's clock runs ``offset`` ahead of this machine's (negative:
        behind): the ``Date`` header of its answers and the change times it stamps say its time."""


@runtime_checkable
class DeletionHarness(Protocol):
    """Records deleted, or merged into another, by a CRM user. ``can_merge`` is False where the
    CRM has no merge (then :meth:`merge_records` is never called)."""

    can_merge: bool

    def delete_record(self, record_id: str) -> None:
        """A CRM user deletes the record (to the recycle bin, where the CRM has one)."""

    def merge_records(self, survivor_id: str, merged_id: str) -> None:
        """A CRM user merges ``merged_id`` into ``survivor_id``: the first survives, the second
        is deleted and remembered as merged into the first."""


@runtime_checkable
class AdoptionHarness(Protocol):
    """A CRM that has been used for years, for the adoption contract (observe, plan, apply).
    Every harness should implement it; the contract test that needs it skips, saying so, for a
    harness without it."""

    def seed_existing_org(self) -> list[str]:
        """Fill the sandbox as a production org looks: at least 20 people of ``object_type`` (and
        of the other objects the mapping files read, where the CRM has them), opted in, opted
        out and unspecified, under several lawful bases where the CRM records one, with the
        CRM's own dates where it keeps them, some people on several records. Returns the email
        addresses of the people, in the order they were created."""

    def store_state(self) -> dict[str, dict[str, Any]]:
        """Every record of every object the mapping files read (and what the CRM keeps beside
        them, such as subscription statuses or consent rows), as ``{"Object/id": {field: value}}``
        with the fields a write could change, leaving out change stamps: equal before and after a
        run that wrote nothing, and different exactly for the records a run wrote to."""


#: How far a record's creation time may lie outside the moments (this machine's clock) around the
#: call that created it: the sandbox stamps with the real time, cut to whole seconds.
CREATION_SLACK = timedelta(seconds=5)


def check_created_at(harness: ContractHarness, connector: Connector) -> str | None:
    """The contract's ``test_a_record_read_says_when_the_crm_created_it``, without pytest: a
    record created in the sandbox as a CRM user creates it (``PersonHarness.create_person``, else
    ``create_with_text``), then read, carries an aware ``created_at`` within
    :data:`CREATION_SLACK` of its creation and not after its modstamp. The engine needs it: an
    erasure's delete or anonymise reaches a record first read after the erasure only where the
    CRM created it before. Raises AssertionError where the connector fails it; answers why it
    does not apply (a connector with ``reports_created`` False: its CRM keeps no creation time),
    or None once checked."""
    if not getattr(connector, "reports_created", True):
        return f"the {connector.vendor} connector says its records carry no creation time (reports_created)"
    before = datetime.now(UTC)
    if isinstance(harness, PersonHarness):
        record_id = harness.create_person("created.at@example.test")
    else:
        record_id = harness.create_with_text("created at")
    after = datetime.now(UTC)
    time.sleep(1.1)  # whole-second CRMs: a connector may leave the current second to the next read
    until = datetime.now(UTC) + timedelta(seconds=5)
    read = connector.read_changes(harness.object_type, list(harness.read_fields), Cursor(), until)
    records = [record for record in read if record.record_id == record_id and not record.deleted]
    assert records, f"the record created ({record_id}) was not read"
    record = records[-1]
    created = record.created_at
    assert created is not None, (
        f"{connector.vendor}: a record read says nothing of when the CRM created it (created_at); "
        "set reports_created = False on a connector whose CRM keeps no creation time"
    )
    assert created.tzinfo is not None and created.utcoffset() is not None, (
        f"created_at must be aware (UTC), not {created!r}"
    )
    assert before - CREATION_SLACK <= created <= after + CREATION_SLACK, (
        f"created_at {created.isoformat()} is not the creation, made between {before.isoformat()} "
        f"and {after.isoformat()}"
    )
    assert created <= record.modstamp, (
        f"created_at {created.isoformat()} is after the record's modstamp {record.modstamp.isoformat()}"
    )
    return None


def fault_outcomes(harness: ContractHarness) -> dict[str, FaultOutcome]:
    return {**STANDARD_FAULTS, **dict(getattr(harness, "fault_outcomes", {}) or {})}


def build_connector(harness: ContractHarness, name: str = "contract", **overrides: Any) -> Connector:
    """The harness's connector, loaded through its entry point (as the daemon loads it)."""
    from consentsync.sdk import registry

    return registry.load(harness.vendor)(name, harness.connector_settings(**overrides))


def available_harnesses() -> dict[str, Any]:
    """Harness classes registered under ``consentsync.harnesses``, by vendor."""
    return {ep.name: ep for ep in entry_points(group=HARNESS_GROUP)}


def write_sync_config(
    harness: ContractHarness,
    directory: Path,
    *,
    name: str = "contract",
    batch_size: int | None = None,
    push_batch_size: int | None = None,
) -> Path:
    """A consentsync.yaml in ``directory``: the starter config, a SQLite ledger beside it and one
    connector, ``name``, configured against the harness's sandbox (reading ``batch_size`` records
    a page and pushing ``push_batch_size`` a group, where given)."""
    from consentsync import yamlfile
    from consentsync.config import write_starter

    path = directory / "consentsync.yaml"
    write_starter(path, f"sqlite:///{directory / 'ledger.db'}")
    data = yamlfile.loads(path.read_text())
    data["connectors"] = [
        {
            "name": name,
            "vendor": harness.vendor,
            "mappings": [str(p) for p in harness.mapping_files],
            "settings": harness.connector_settings(),
            # Sandboxes stamp records with the real time and the tests sync right after a change.
            "signpost_lag_seconds": 0,
            # The contract checks what a connector pushes: two-way, every record may be pushed to.
            "mode": "two_way",
            "push_guard": {"max_records": None, "max_share": None},
            **({"batch_size": batch_size} if batch_size else {}),
            **({"push_batch_size": push_batch_size} if push_batch_size else {}),
        }
    ]
    path.write_text(yamlfile.dumps(data))
    return path


def open_sync_engine(config_path: Path, name: str = "contract", *, batch_size: int = 50) -> Any:
    """The real sync engine on the config's ledger (migrated), with the connector's configured
    options (mode, push guard, erasure actions), following the sandbox's clock."""
    from dataclasses import replace

    from consentsync.app import open_ledger, open_sync
    from consentsync.config import load_config
    from consentsync.ledger.service import utcnow

    config = load_config(config_path)
    ledger = open_ledger(config, migrate=True)
    # Sandboxes stamp records with the real time: the run's signpost must follow it.
    ledger.clock = utcnow
    engine = open_sync(config, name, ledger)
    engine.options = replace(engine.options, batch_size=batch_size, signpost_lag_seconds=0)
    return engine


__all__ = [
    "CREATION_SLACK",
    "HARNESS_GROUP",
    "HOSTILE_TEXTS",
    "PERSON_HARNESS_MISSING",
    "STANDARD_FAULTS",
    "AdoptionHarness",
    "ClockSkewHarness",
    "ContractHarness",
    "DeletionHarness",
    "FaultOutcome",
    "LateCommitHarness",
    "PersonHarness",
    "available_harnesses",
    "build_connector",
    "check_created_at",
    "fault_outcomes",
    "hostile_texts",
    "open_sync_engine",
    "write_sync_config",
]
