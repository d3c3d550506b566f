"""The SuperOffice sandbox as the connector kit sees it (:class:`consentsync.sdk.harness.
ContractHarness`): used by the contract tests and by bench/connector_calls.py.

A record is a Person; its text field is the comment of its Sales and service consent, its opt-out
flag the E-marketing consent's legal basis (Withdrawn or not).

It implements :class:`~consentsync.sdk.harness.LateCommitHarness`. It does not implement
``DeletionHarness``: SuperOffice's API lists no deleted or merged persons, so the connector reads
no deletions (``reads_deletions`` is False) and the contract's deletion test is skipped."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from consentsync.sandbox.superoffice import SuperOfficeSandbox
from consentsync.sandbox.superoffice_tenant import SuperOfficeTenant
from consentsync.sdk import RecordUpdate
from consentsync.sdk.harness import FaultOutcome

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings" / "superoffice"
WRITE_KINDS = ("set_consent", "remove_consent", "person_patch", "person_delete")
TIMEOUT = 2.0


class SuperOfficeHarness:
    vendor = "superoffice"
    object_type = "Person"
    read_fields = ("Email", "LegalBase_EMARKETING", "LegalBase_STORE", "Updated_STORE", "Comment_STORE")
    text_field = "Comment_STORE"
    text_max_length = 250
    page_size = 50  # rows of the ConsentPurpose archive a page
    write_batch_size = 1  # SuperOffice has no batch call: one SetConsent per consent
    mapping_files = (MAPPINGS / "person.yaml",)
    fault_outcomes: ClassVar[dict[str, FaultOutcome]] = {}

    def __init__(self) -> None:
        self.sandbox = SuperOfficeSandbox(SuperOfficeTenant())
        self._serial = 0

    @staticmethod
    def id_key(record_id: str) -> int:
        return int(record_id)  # person ids are numbers, ordered as numbers

    # -- lifecycle and settings ----------------------------------------------------------------

    def start(self) -> None:
        self.sandbox.start()

    def stop(self) -> None:
        self.sandbox.close()

    def connector_settings(self, **overrides: Any) -> dict[str, Any]:
        creds = self.sandbox.credentials
        return {
            "base_url": self.sandbox.tenant_url,
            "auth": "refresh_token",
            "client_id": creds.client_id,
            "client_secret": creds.client_secret,
            "refresh_token": creds.refresh_token,
            "token_url": self.sandbox.token_url,
            "ca_bundle": str(self.sandbox.ca_cert_path),
            "page_size": self.page_size,
            "timeout": TIMEOUT,
            "max_attempts": 5,
            "max_rate_limit_wait": 5.0,
            **overrides,
        }

    def bad_credentials_settings(self, wrong_secret: str) -> dict[str, Any]:
        return self.connector_settings(client_secret=wrong_secret)

    # -- the tenant's data ---------------------------------------------------------------------

    @property
    def tenant(self) -> SuperOfficeTenant:
        return self.sandbox.tenant

    def seed(self, count: int, *, shared_modstamp: bool = False) -> list[str]:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        start = now - dt.timedelta(hours=1) if shared_modstamp else now - dt.timedelta(seconds=count + 120)
        ids = []
        for index in range(count):
            moment = start if shared_modstamp else start + dt.timedelta(seconds=index)
            self._serial += 1
            person = self.tenant.create_person(
                "Contract", f"Person {self._serial}", f"contract.{self._serial}@example.test", at=moment
            )
            ids.append(str(person.id))
        return ids

    def record_ids(self) -> list[str]:
        return [str(person_id) for person_id in self.tenant.persons]

    def change(self, record_id: str) -> None:
        self._serial += 1
        self.tenant.set_consent(int(record_id), "STORE", "MANUAL", "CONTRACT", f"changed {self._serial}")

    def create_with_text(self, text: str) -> str:
        self._serial += 1
        person = self.tenant.create_person(
            "Hostile", str(self._serial), f"hostile.{self._serial}@example.test"
        )
        self.tenant.set_consent(person.id, "STORE", "MANUAL", "LEGITIMATE", text)
        return str(person.id)

    def read_text(self, record_id: str) -> Any:
        row = self.tenant.consent(int(record_id), "STORE")
        return row.comment if row is not None else None

    def text_update(self, record_id: str, text: str) -> RecordUpdate:
        return RecordUpdate("Person", record_id, {"Comment_STORE": text})

    def consent_update(self, record_id: str, opted_out: bool) -> RecordUpdate:
        return RecordUpdate(
            "Person", record_id, {"LegalBase_EMARKETING": "WITHDRAWN" if opted_out else "CONSENT"}
        )

    def create_person(self, email: str, *, opted_out: bool = False) -> str:
        self._serial += 1
        person = self.tenant.create_person("Demo", f"Person {self._serial}", email)
        legal_base = self.tenant.withdrawn_legal_base if opted_out else "CONSENT"
        self.tenant.set_consent(person.id, "EMARKETING", "MANUAL", legal_base, "")
        return str(person.id)

    def begin_late_person(self, email: str, *, opted_out: bool = False) -> str:
        """A person (with an e-marketing consent) saved in a transaction that commits late."""
        self._serial += 1
        legal_base = self.tenant.withdrawn_legal_base if opted_out else "CONSENT"
        person = self.tenant.begin_late_person(
            "Late", f"Person {self._serial}", email, [("EMARKETING", "MANUAL", legal_base, "")]
        )
        return str(person.id)

    def commit_late(self, record_id: str) -> None:
        self.tenant.commit_late(int(record_id))

    def opt_out(self, record_id: str) -> None:
        self.tenant.set_consent(int(record_id), "EMARKETING", "MANUAL", self.tenant.withdrawn_legal_base, "")

    def read_opted_out(self, record_id: str) -> bool:
        row = self.tenant.consent(int(record_id), "EMARKETING")
        return row is not None and row.legal_base.key == self.tenant.withdrawn_legal_base

    # -- faults and counting -------------------------------------------------------------------

    def fail_writes(self, record_ids: Sequence[str]) -> None:
        self.sandbox.faults.fail_records(*record_ids)

    def set_fault(self, fault: str) -> None:
        settings: dict[str, Any] = {
            "server_error": {"error_rate": 1.0, "error_calls": 2},
            "connection_reset": {"reset_rate": 1.0, "reset_calls": 2},
            "slow_response": {"delay": TIMEOUT + 1.0, "delay_calls": 1},
            "session_expiry": {"session_expiry_after": 2},
            "throttle": {"throttle_after": 0, "throttle_calls": 2, "throttle_retry_after": 1.0},
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
