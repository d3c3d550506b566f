"""The Acme sandbox as consentsync's contract kit sees it (consentsync.sdk.harness.ContractHarness)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from consentsync.sandbox.harness import SandboxHarness
from consentsync.sdk.harness import FaultOutcome
from consentsync_acme.sandbox import AcmeSandbox

MAPPINGS = Path(__file__).resolve().parent / "mappings"  # shipped as package data
TIMEOUT = 2.0


class AcmeHarness(SandboxHarness):
    # The fault switches and call counts come from the sandbox kit (fail_writes, set_fault,
    # clear_faults, faults_injected, api_calls, write_calls), and so do text_update,
    # consent_update, read_text and read_opted_out (from object_type, text_field and
    # opt_out_field, and `stored`) and connector_settings (the sandbox's connection_settings(),
    # the timeout, the contract's retry tunings and page_size); it needs the timeout the
    # settings give the connector and the endpoint kinds that write.
    timeout = TIMEOUT
    write_kinds = ("batch",)
    secret_setting = "api_key"
    vendor = "acme"
    object_type = "contacts"
    read_fields = ("email", "note", "unsubscribed")
    text_field = "note"
    opt_out_field = "unsubscribed"
    text_max_length = 500
    page_size = 20
    write_batch_size = 50
    mapping_files = (MAPPINGS / "contacts.yaml",)
    fault_outcomes: ClassVar[dict[str, FaultOutcome]] = {}

    def __init__(self) -> None:
        self.sandbox = AcmeSandbox()

    def seed(self, count: int, *, shared_modstamp: bool = False) -> list[str]:
        made = []
        for moment in self.seed_times(count, shared_modstamp=shared_modstamp, now=self.sandbox.now()):
            made.append(self.sandbox.create({"email": self.new_name("acme")[1]}, at=moment))
        return made

    def create_person(self, email: str, *, opted_out: bool = False) -> str:
        return self.sandbox.create({"email": email, "unsubscribed": opted_out})

    def opt_out(self, record_id: str) -> None:
        self.sandbox.update(record_id, {"unsubscribed": True})

    # LateCommitHarness: a contact that shows up late with its original updated_at, to test the
    # connector's look-back. (No DeletionHarness: Acme has no deletions to show.)
    def begin_late_person(self, email: str, *, opted_out: bool = False) -> str:
        return self.sandbox.create({"email": email, "unsubscribed": opted_out}, visible=False)

    def commit_late(self, record_id: str) -> None:
        self.sandbox.commit(record_id)

    def record_ids(self) -> list[str]:
        return list(self.sandbox.contacts)

    def change(self, record_id: str) -> None:
        self.sandbox.update(record_id, {"name": "changed"})

    def create_with_text(self, text: str) -> str:
        return self.sandbox.create({"email": self.new_name("Hostile")[1], "note": text})

    # read_text and read_opted_out (the kit's) read text_field and opt_out_field of this record.
    def stored(self, record_id: str) -> dict[str, Any]:
        return self.sandbox.contacts[record_id]
