"""The Dataverse sandbox as the connector kit sees it (:class:`consentsync.sdk.harness.
ContractHarness`): used by the contract tests and by bench/connector_calls.py."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from consentsync.sandbox.dynamics import DynamicsSandbox
from consentsync.sdk import RecordUpdate
from consentsync.sdk.harness import FaultOutcome

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings" / "dynamics"
WRITE_KINDS = ("batch", "update")
TIMEOUT = 2.0


class DynamicsHarness:
    vendor = "dynamics"
    object_type = "contact"
    read_fields = ("emailaddress1", "donotbulkemail", "donotemail", "description")
    text_field = "description"
    text_max_length = 2000
    page_size = 50  # Prefer: odata.maxpagesize
    write_batch_size = 50  # requests per $batch
    mapping_files = (MAPPINGS / "contact.yaml",)
    fault_outcomes: ClassVar[dict[str, FaultOutcome]] = {}

    def __init__(self) -> None:
        self.sandbox = DynamicsSandbox()
        self._serial = 0

    def start(self) -> None:
        self.sandbox.start()

    def stop(self) -> None:
        self.sandbox.close()

    def connector_settings(self, **overrides: Any) -> dict[str, Any]:
        creds = self.sandbox.credentials
        return {
            "environment_url": self.sandbox.environment_url,
            "token_url": self.sandbox.token_url,
            "client_id": creds.client_id,
            "client_secret": creds.client_secret,
            "ca_bundle": str(self.sandbox.ca_cert_path),
            "page_size": self.page_size,
            "batch_size": self.write_batch_size,
            "timeout": TIMEOUT,
            "max_attempts": 5,
            "max_rate_limit_wait": 5.0,
            "write_retries": 0,
            **overrides,
        }

    def bad_credentials_settings(self, wrong_secret: str) -> dict[str, Any]:
        return self.connector_settings(client_secret=wrong_secret)

    # -- the environment's data ----------------------------------------------------------------

    def seed(self, count: int, *, shared_modstamp: bool = False) -> list[str]:
        env = self.sandbox.environment
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        start = now - dt.timedelta(hours=1) if shared_modstamp else now - dt.timedelta(seconds=count + 120)
        ids = []
        original = env.clock
        try:
            for index in range(count):
                moment = start if shared_modstamp else start + dt.timedelta(seconds=index)
                env.clock = lambda moment=moment: moment
                self._serial += 1
                ids.append(
                    env.create(
                        "contact",
                        {
                            "lastname": f"Contract {self._serial}",
                            "emailaddress1": f"contract.{self._serial}@example.test",
                        },
                    )
                )
        finally:
            env.clock = original
        return ids

    def create_person(self, email: str, *, opted_out: bool = False) -> str:
        """A contact with that address, as a Dynamics user would create it."""
        self._serial += 1
        return self.sandbox.environment.create(
            "contact",
            {"lastname": f"Person {self._serial}", "emailaddress1": email, "donotbulkemail": opted_out},
        )

    # -- late commits --------------------------------------------------------------------------

    def begin_late_person(self, email: str, *, opted_out: bool = False) -> str:
        """A contact created in a transaction that has not committed (a long plug-in chain)."""
        self._serial += 1
        return self.sandbox.environment.begin_late(
            "contact",
            {"lastname": f"Person {self._serial}", "emailaddress1": email, "donotbulkemail": opted_out},
        )

    def commit_late(self, record_id: str) -> None:
        self.sandbox.environment.commit_late("contact", record_id)

    # -- deletions and merges ------------------------------------------------------------------

    can_merge = True

    def delete_record(self, record_id: str) -> None:
        self.sandbox.environment.delete("contact", record_id)

    def merge_records(self, survivor_id: str, merged_id: str) -> None:
        """A user merges two contacts (the Merge action): the subordinate is deactivated."""
        self.sandbox.environment.merge("contact", survivor_id, merged_id)

    def opt_out(self, record_id: str) -> None:
        """The user ticks "Bulk Email: Do Not Allow" (email marketing withdrawn); modifiedon moves."""
        self.sandbox.environment.update("contact", record_id, {"donotbulkemail": True})

    def record_ids(self) -> list[str]:
        return [r["contactid"] for r in self.sandbox.environment.records("contact")]

    def change(self, record_id: str) -> None:
        self.sandbox.environment.update("contact", record_id, {"description": f"changed {self._serial}"})

    def create_with_text(self, text: str) -> str:
        self._serial += 1
        return self.sandbox.environment.create(
            "contact",
            {
                "lastname": f"Hostile {self._serial}",
                "emailaddress1": f"hostile.{self._serial}@example.test",
                "description": text,
            },
        )

    def _row(self, record_id: str) -> dict[str, Any]:
        row = self.sandbox.environment.get("contact", record_id)
        assert row is not None
        return row

    def read_text(self, record_id: str) -> Any:
        return self._row(record_id)["description"]

    def text_update(self, record_id: str, text: str) -> RecordUpdate:
        return RecordUpdate("contact", record_id, {"description": text})

    def consent_update(self, record_id: str, opted_out: bool) -> RecordUpdate:
        return RecordUpdate("contact", record_id, {"donotbulkemail": opted_out})

    def read_opted_out(self, record_id: str) -> bool:
        return bool(self._row(record_id)["donotbulkemail"])

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
