"""The HubSpot sandbox as the connector kit sees it (:class:`consentsync.sdk.harness.
ContractHarness`): used by the contract tests and by bench/connector_calls.py."""

from __future__ import annotations

import datetime as dt
import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from consentsync.sandbox.hubspot import WRITE_KINDS, HubSpotPortal, HubSpotSandbox
from consentsync.sdk import RecordUpdate
from consentsync.sdk.harness import FaultOutcome

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings" / "hubspot"
TIMEOUT = 2.0
MARKETING = "1001"


class HubSpotHarness:
    vendor = "hubspot"
    object_type = "contacts"
    read_fields = ("email", "jobtitle", "hs_legal_basis", f"subscription_{MARKETING}")
    text_field = "jobtitle"
    text_max_length = 2000
    page_size = 20
    write_batch_size = 100
    mapping_files = (MAPPINGS / "contacts.yaml",)
    fault_outcomes: ClassVar[dict[str, FaultOutcome]] = {}

    def __init__(self, **sandbox_options: Any) -> None:
        self._directory = Path(tempfile.mkdtemp(prefix="consentsync-hubspot-"))
        self.token_file = self._directory / "token"
        options = {"secondly_limit": 100, "search_per_second": 20, **sandbox_options}
        self.sandbox = HubSpotSandbox(HubSpotPortal(), token_file=self.token_file, **options)
        self._serial = 0

    @staticmethod
    def id_key(record_id: str) -> int:
        return int(record_id)

    # -- lifecycle and settings ----------------------------------------------------------------

    def start(self) -> None:
        self.sandbox.start()

    def stop(self) -> None:
        self.sandbox.close()
        shutil.rmtree(self._directory, ignore_errors=True)

    def connector_settings(self, **overrides: Any) -> dict[str, Any]:
        return {
            "api_url": self.sandbox.api_url,
            "access_token_file": str(self.token_file),
            "ca_bundle": str(self.sandbox.ca_cert_path),
            "page_size": self.page_size,
            "search_requests_per_second": 20,
            "timeout": TIMEOUT,
            "max_attempts": 5,
            "max_rate_limit_wait": 5.0,
            **overrides,
        }

    def bad_credentials_settings(self, wrong_secret: str) -> dict[str, Any]:
        settings = self.connector_settings(access_token=wrong_secret)
        del settings["access_token_file"]
        return settings

    # -- the portal's data ---------------------------------------------------------------------

    def seed(self, count: int, *, shared_modstamp: bool = False) -> list[str]:
        portal = self.sandbox.portal
        now = portal.now()
        start = now - dt.timedelta(hours=1) if shared_modstamp else now - dt.timedelta(seconds=count + 120)
        ids = []
        for index in range(count):
            moment = start if shared_modstamp else start + dt.timedelta(seconds=index)
            self._serial += 1
            ids.append(
                portal.create(
                    {
                        "email": f"contract.{self._serial}@example.test",
                        "lastname": f"Contract {self._serial}",
                    },
                    at=moment,
                )
            )
        return ids

    def create_person(self, email: str, *, opted_out: bool = False) -> str:
        contact_id = self.sandbox.portal.create({"email": email, "lastname": "Person"})
        if opted_out:
            self.sandbox.portal.set_status(email, MARKETING, "UNSUBSCRIBED")
        return contact_id

    # -- late commits (the search index lagging a write) ---------------------------------------

    def begin_late_person(self, email: str, *, opted_out: bool = False) -> str:
        """A contact written now that the search index has not caught up with yet."""
        contact_id = self.sandbox.portal.begin_late({"email": email, "lastname": "Person"})
        if opted_out:
            self.sandbox.portal.set_status(email, MARKETING, "UNSUBSCRIBED")
        return contact_id

    def commit_late(self, record_id: str) -> None:
        self.sandbox.portal.index(record_id)

    # -- deletions and merges ------------------------------------------------------------------

    can_merge = True

    def delete_record(self, record_id: str) -> None:
        assert self.sandbox.portal.archive(record_id), f"no live contact {record_id}"

    def merge_records(self, survivor_id: str, merged_id: str) -> None:
        self.sandbox.portal.merge(survivor_id, merged_id)

    def opt_out(self, record_id: str) -> None:
        record = self.sandbox.portal.get(record_id)
        assert record is not None
        # The person clicks "unsubscribe" in an email: HubSpot's preferences page records it.
        self.sandbox.portal.set_status(str(record["email"]), MARKETING, "UNSUBSCRIBED")

    def record_ids(self) -> list[str]:
        return self.sandbox.portal.ids()

    def change(self, record_id: str) -> None:
        self._serial += 1
        self.sandbox.portal.update(record_id, {"jobtitle": f"changed {self._serial}"})

    def create_with_text(self, text: str) -> str:
        self._serial += 1
        return self.sandbox.portal.create({"email": f"hostile.{self._serial}@example.test", "jobtitle": text})

    def read_text(self, record_id: str) -> Any:
        record = self.sandbox.portal.get(record_id)
        assert record is not None
        return record.get("jobtitle")

    def text_update(self, record_id: str, text: str) -> RecordUpdate:
        return RecordUpdate("contacts", record_id, {"jobtitle": text})

    def consent_update(self, record_id: str, opted_out: bool) -> RecordUpdate:
        state = "UNSUBSCRIBED" if opted_out else "SUBSCRIBED"
        return RecordUpdate("contacts", record_id, {f"subscription_{MARKETING}": state})

    def read_opted_out(self, record_id: str) -> bool:
        record = self.sandbox.portal.get(record_id)
        assert record is not None
        status = self.sandbox.portal.status(str(record["email"]), MARKETING)
        return status is not None and status.status == "UNSUBSCRIBED"

    @staticmethod
    def minimum_write_calls(pushed: Sequence[Mapping[str, Any]]) -> int:
        """HubSpot batches property updates (100 a call) but not subscription changes: v3 takes
        one contact and one subscription a call."""
        properties = sum(1 for fields in pushed if any(not k.startswith("subscription_") for k in fields))
        subscriptions = sum(
            1 for fields in pushed for k in fields if k.startswith("subscription_") and k.count("_") == 1
        )
        return math.ceil(properties / HubSpotHarness.write_batch_size) + subscriptions

    # -- faults and counting -------------------------------------------------------------------

    def fail_writes(self, record_ids: Sequence[str]) -> None:
        self.sandbox.faults.fail_records(*record_ids)

    def set_fault(self, fault: str) -> None:
        settings: dict[str, Any] = {
            "server_error": {"error_rate": 1.0, "error_calls": 2},
            "connection_reset": {"reset_rate": 1.0, "reset_calls": 2},
            "slow_response": {"delay": TIMEOUT + 1.0, "delay_calls": 1},
            # The admin rotates the private app's token; the connector re-reads its token file.
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
