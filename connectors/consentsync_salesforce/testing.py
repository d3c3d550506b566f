"""The Salesforce sandbox as the connector kit sees it (:class:`consentsync.sdk.harness.
ContractHarness`): used by the contract tests and by bench/connector_calls.py."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from consentsync.sandbox import SalesforceSandbox
from consentsync.sdk import RecordUpdate
from consentsync.sdk.harness import FaultOutcome

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings" / "salesforce"
WRITE_KINDS = ("composite", "sobject_patch", "bulk_upload")
TIMEOUT = 2.0


class SalesforceHarness:
    vendor = "salesforce"
    object_type = "Contact"
    read_fields = ("Email", "HasOptedOutOfEmail", "DoNotCall", "Title")
    text_field = "Title"
    text_max_length = 128
    page_size = 200  # Sforce-Query-Options batchSize, the smallest Salesforce accepts
    write_batch_size = 200  # sObject Collections
    mapping_files = (MAPPINGS / "contact.yaml",)
    # Salesforce's only short-term limit (25 concurrent long requests) answers the daily limit's
    # REQUEST_LIMIT_EXCEEDED: the connector cannot tell them apart and stops the run.
    fault_outcomes: ClassVar[dict[str, FaultOutcome]] = {"throttle": FaultOutcome.STOPS}

    def __init__(self) -> None:
        self.sandbox = SalesforceSandbox()
        self._serial = 0

    # -- lifecycle and settings ----------------------------------------------------------------

    def start(self) -> None:
        self.sandbox.start()

    def stop(self) -> None:
        self.sandbox.close()

    def connector_settings(self, **overrides: Any) -> dict[str, Any]:
        creds = self.sandbox.credentials
        return {
            "login_url": self.sandbox.login_url,
            "auth": "client_credentials",
            "client_id": creds.client_id,
            "client_secret": creds.client_secret,
            "ca_bundle": str(self.sandbox.ca_cert_path),
            "query_batch_size": self.page_size,
            "timeout": TIMEOUT,
            "max_attempts": 5,
            "max_rate_limit_wait": 5.0,
            "lock_retries": 0,
            **overrides,
        }

    def bad_credentials_settings(self, wrong_secret: str) -> dict[str, Any]:
        return self.connector_settings(client_secret=wrong_secret)

    # -- the org's data ------------------------------------------------------------------------

    def seed(self, count: int, *, shared_modstamp: bool = False) -> list[str]:
        org = self.sandbox.org
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        start = now - dt.timedelta(hours=1) if shared_modstamp else now - dt.timedelta(seconds=count + 120)
        ids = []
        original = org.clock
        try:
            for index in range(count):
                moment = start if shared_modstamp else start + dt.timedelta(seconds=index)
                org.clock = lambda moment=moment: moment
                self._serial += 1
                ids.append(
                    org.create(
                        "Contact",
                        LastName=f"Contract {self._serial}",
                        Email=f"contract.{self._serial}@example.test",
                    )
                )
        finally:
            org.clock = original
        return ids

    def create_person(self, email: str, *, opted_out: bool = False) -> str:
        self._serial += 1
        return self.sandbox.org.create(
            "Contact", LastName=f"Person {self._serial}", Email=email, HasOptedOutOfEmail=opted_out
        )

    def opt_out(self, record_id: str) -> None:
        self.sandbox.org.update(record_id, HasOptedOutOfEmail=True)

    # -- late commits, deletions and merges (LateCommitHarness, DeletionHarness) ----------------

    can_merge = True  # Contacts and Leads merge: the merged ones carry MasterRecordId

    def begin_late_person(self, email: str, *, opted_out: bool = False) -> str:
        self._serial += 1
        return self.sandbox.org.begin_create(
            "Contact", LastName=f"Late {self._serial}", Email=email, HasOptedOutOfEmail=opted_out
        )

    def commit_late(self, record_id: str) -> None:
        self.sandbox.org.commit(record_id)

    def delete_record(self, record_id: str) -> None:
        self.sandbox.org.delete(record_id)

    def merge_records(self, survivor_id: str, merged_id: str) -> None:
        self.sandbox.org.merge(survivor_id, merged_id)

    def record_ids(self) -> list[str]:
        return [r["Id"] for r in self.sandbox.org.records("Contact")]

    def change(self, record_id: str) -> None:
        self.sandbox.org.update(record_id, Title=f"changed {self._serial}")

    def create_with_text(self, text: str) -> str:
        self._serial += 1
        return self.sandbox.org.create(
            "Contact",
            LastName=f"Hostile {self._serial}",
            Email=f"hostile.{self._serial}@example.test",
            Title=text,
        )

    def read_text(self, record_id: str) -> Any:
        record = self.sandbox.org.get(record_id)
        assert record is not None
        return record["Title"]

    def text_update(self, record_id: str, text: str) -> RecordUpdate:
        return RecordUpdate("Contact", record_id, {"Title": text})

    def consent_update(self, record_id: str, opted_out: bool) -> RecordUpdate:
        return RecordUpdate("Contact", record_id, {"HasOptedOutOfEmail": opted_out})

    def read_opted_out(self, record_id: str) -> bool:
        record = self.sandbox.org.get(record_id)
        assert record is not None
        return bool(record["HasOptedOutOfEmail"])

    # -- faults and counting -------------------------------------------------------------------

    def fail_writes(self, record_ids: Sequence[str]) -> None:
        self.sandbox.faults.fail_records(*record_ids)

    def set_fault(self, fault: str) -> None:
        settings: dict[str, Any] = {
            "server_error": {"error_rate": 1.0, "error_calls": 2},
            "connection_reset": {"reset_rate": 1.0, "reset_calls": 2},
            "slow_response": {"delay": TIMEOUT + 1.0, "delay_calls": 1},
            "session_expiry": {"session_expiry_after": 2},
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
