"""`consentsync demo`: the main job end to end on a fresh machine, in under a minute, against one
CRM's sandbox. The story is the connector's (a seeded sandbox, a full sync, the CRM's users
changing records, an incremental sync, the report), registered under the entry-point group
``consentsync.demos``; the core only picks which one runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from consentsync.sdk.registry import DEMO_GROUP, load_plugin

#: The CRM `consentsync demo` runs when none is named: a configuration default, not an import.
DEFAULT_CRM = "salesforce"


def email_marketing_state(view: dict[str, Any]) -> dict[str, Any]:
    """The state of email marketing by email in a subject's view (``Ledger.subject_view``): what
    every demo reports on."""
    return next(p for p in view["purposes"] if p["purpose"] == "email_marketing" and p["channel"] == "email")


def find_mappings(crm: str = DEFAULT_CRM) -> Path:
    """The example mappings of the demo's CRM (package data of its connector package)."""
    from consentsync.mapping_examples import vendor_path

    return vendor_path(crm)


def run_demo(
    *,
    crm: str = DEFAULT_CRM,
    records: int = 300,
    workdir: Path | None = None,
    keep: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    demo = load_plugin(DEMO_GROUP, crm, "demo")
    assert callable(demo), f"the {crm} demo ({DEMO_GROUP}) is not callable"
    return demo(records=records, workdir=workdir, keep=keep, say=say)
