"""The Vtiger sandbox as the connector kit sees it (:class:`consentsync.sdk.harness.
ContractHarness`, with :class:`~consentsync.sdk.harness.LateCommitHarness` and
:class:`~consentsync.sdk.harness.DeletionHarness`): used by the contract tests and by
bench/connector_calls.py.

The sandbox runs as an install whose ``$default_timezone`` is not UTC (``SERVER_TIMEZONE``), so
every contract test also checks the connector's time-zone handling, and stores 3-byte UTF-8 only
(``bmp_only``), as the stock install does."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from consentsync.sandbox.vtiger import VtigerCrm, VtigerSandbox
from consentsync.sdk import RecordUpdate
from consentsync.sdk.harness import FaultOutcome

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings" / "vtiger"
WRITE_KINDS = ("revise", "update", "create", "delete")
TIMEOUT = 2.0  # under a loaded machine a 1 s answer is no fault
# An install set up in California: modifiedtime is served in Pacific time.
SERVER_TIMEZONE = "America/Los_Angeles"


class VtigerHarness:
    vendor = "vtiger"
    object_type = "Contacts"
    read_fields = ("email", "emailoptout", "donotcall", "firstname")
    text_field = "firstname"
    text_max_length = 40  # vtiger_contactdetails.firstname is varchar(40)
    page_size = 10  # the connector's page_size setting (Vtiger answers at most 100 rows)
    write_batch_size = 1  # revise: one record a call, Vtiger has no batch write
    mapping_files = (MAPPINGS / "contacts.yaml",)
    fault_outcomes: ClassVar[dict[str, FaultOutcome]] = {}
    bmp_only = True  # the stock install's MySQL utf8: emoji come back as "?"
    can_merge = False  # a merge in Vtiger shows on the API as the deletion of the merged record

    def __init__(self) -> None:
        self.sandbox = VtigerSandbox(VtigerCrm(privacy_guard=False, timezone=SERVER_TIMEZONE))
        self._serial = 0

    # -- lifecycle and settings ----------------------------------------------------------------

    def start(self) -> None:
        self.sandbox.start()

    def stop(self) -> None:
        self.sandbox.close()

    def connector_settings(self, **overrides: Any) -> dict[str, Any]:
        creds = self.sandbox.credentials
        return {
            "url": self.sandbox.url,
            "username": creds.username,
            "access_key": creds.access_key,
            "ca_bundle": str(self.sandbox.ca_cert_path),
            "page_size": self.page_size,
            "crowded_second_overlap": 2,
            "server_timezone": SERVER_TIMEZONE,
            # The sandbox's sync answers, as on installs where it works (not the stock 8.2.0).
            "read_deletions": True,
            "timeout": TIMEOUT,
            "max_attempts": 5,
            "max_rate_limit_wait": 5.0,
            **overrides,
        }

    def bad_credentials_settings(self, wrong_secret: str) -> dict[str, Any]:
        return self.connector_settings(access_key=wrong_secret)

    # -- the CRM's data ------------------------------------------------------------------------

    def seed(self, count: int, *, shared_modstamp: bool = False) -> list[str]:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        start = now - dt.timedelta(hours=1) if shared_modstamp else now - dt.timedelta(seconds=count + 120)
        ids = []
        for index in range(count):
            self._serial += 1
            ids.append(
                self.sandbox.crm.create(
                    "Contacts",
                    lastname=f"Contract {self._serial}",
                    email=f"contract.{self._serial}@example.test",
                    at=start if shared_modstamp else start + dt.timedelta(seconds=index),
                )
            )
        return ids

    def record_ids(self) -> list[str]:
        return [r["id"] for r in self.sandbox.crm.records("Contacts")]

    def change(self, record_id: str) -> None:
        self._serial += 1
        self.sandbox.crm.revise(record_id, firstname=f"changed {self._serial}")

    def create_with_text(self, text: str) -> str:
        self._serial += 1
        return self.sandbox.crm.create(
            "Contacts",
            lastname=f"Hostile {self._serial}",
            email=f"hostile.{self._serial}@example.test",
            firstname=text,
        )

    def read_text(self, record_id: str) -> Any:
        record = self.sandbox.crm.get(record_id)
        assert record is not None
        return record["firstname"]

    def text_update(self, record_id: str, text: str) -> RecordUpdate:
        return RecordUpdate("Contacts", record_id, {"firstname": text})

    def consent_update(self, record_id: str, opted_out: bool) -> RecordUpdate:
        return RecordUpdate("Contacts", record_id, {"emailoptout": opted_out})

    def create_person(self, email: str, *, opted_out: bool = False) -> str:
        """A contact with this address (for ``consentsync demo --crms``)."""
        self._serial += 1
        return self.sandbox.crm.create(
            "Contacts", lastname=f"Person {self._serial}", email=email, emailoptout=opted_out
        )

    def begin_late_person(self, email: str, *, opted_out: bool = False) -> str:
        """A contact saved in a transaction that commits late (see :meth:`commit_late`)."""
        self._serial += 1
        return self.sandbox.crm.begin_late(
            "Contacts", lastname=f"Person {self._serial}", email=email, emailoptout=opted_out
        )

    def commit_late(self, record_id: str) -> None:
        self.sandbox.crm.commit_late(record_id)

    def delete_record(self, record_id: str) -> None:
        """A CRM user deletes the contact (Vtiger marks it deleted: its recycle bin)."""
        self.sandbox.crm.delete(record_id)

    def merge_records(self, survivor_id: str, merged_id: str) -> None:
        raise NotImplementedError("Vtiger's webservice shows no merges (can_merge is False)")

    def opt_out(self, record_id: str) -> None:
        """The person ticks "Email Opt Out" in Vtiger (its modifiedtime moves to now)."""
        self.sandbox.crm.revise(record_id, emailoptout="1")

    def read_opted_out(self, record_id: str) -> bool:
        record = self.sandbox.crm.get(record_id)
        assert record is not None
        return record["emailoptout"] == "1"

    # -- faults and counting -------------------------------------------------------------------

    def fail_writes(self, record_ids: Sequence[str]) -> None:
        self.sandbox.faults.fail_records(*record_ids)

    def set_fault(self, fault: str) -> None:
        settings: dict[str, Any] = {
            "server_error": {"error_rate": 1.0, "error_calls": 2},
            "connection_reset": {"reset_rate": 1.0, "reset_calls": 2},
            "slow_response": {"delay": TIMEOUT + 1.0, "delay_calls": 1},
            "session_expiry": {"session_expiry_after": 2, "session_expiry_repeat": True},
            "throttle": {"throttle_after": 0, "throttle_calls": 2},
            "request_limit": {"request_limit_after": 1},
        }[fault]
        self.sandbox.faults.update(**settings)

    def clear_faults(self) -> None:
        self.sandbox.faults.reset()

    def faults_injected(self) -> int:
        return sum(self.sandbox.faults_injected.values())

    def api_calls(self) -> int:
        return self.sandbox.total_calls

    def write_calls(self) -> int:
        return self.sandbox.calls_of(WRITE_KINDS)
