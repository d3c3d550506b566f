"""`consentsync demo`: the main job end to end on a fresh machine, in under a minute, against one
CRM's sandbox. The story is the connector's (a seeded sandbox, a full sync, the CRM's users
changing records, an incremental sync, the report), registered under the entry-point group
``consentsync.demos``; the core only picks which one runs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consentsync.domain import InvalidInput
from consentsync.sdk.registry import DEMO_GROUP, load_plugin

#: The CRM `consentsync demo` runs when none is named: a configuration default, not an import.
DEFAULT_CRM = "salesforce"

#: The file that marks a folder ``consentsync demo --dir`` made: only such a folder (or an empty
#: one) is written into, and a demo run there again starts from a fresh ledger.
DEMO_MARKER = ".consentsync-demo"
_MARKER_TEXT = (
    "Made by `consentsync demo`: running `consentsync demo --dir` on this folder again replaces the\n"
    "demo's config and ledger. Delete this file to keep them from being replaced.\n"
)
_CONFIG_SUM = "config-sha256: "
_CONFIG = "consentsync.yaml"
_LEDGER = "consentsync.db"
# What the demos write into their folder (the one-CRM demo, --crms and --hub): the config, its
# erasure key, the ledger (with SQLite's files beside it and the connectors' run locks), the
# sandbox's CA and the mappings; and what an interrupted write leaves (config.replace_whole).
_DEMO_FILES = re.compile(
    r"(consentsync\.yaml|consentsync\.key|sandbox-ca\.pem|mappings|consentsync\.db(-wal|-shm|-journal)?"
    r"|consentsync\.db\.[0-9a-f]{12}\.lock|\.consentsync\.(yaml|key)\.\d+\.[0-9a-f]{8})"
)
_LEDGER_FILES = (_LEDGER, f"{_LEDGER}-wal", f"{_LEDGER}-shm", f"{_LEDGER}-journal")


def claim_workdir(workdir: Path, say: Callable[[str], None] = print) -> Path:
    """The folder ``consentsync demo --dir`` may write into, resolved: a new or empty one, or one a
    previous demo made (marked with DEMO_MARKER, holding nothing else, its config as that demo
    left it), whose ledger is removed so that this demo starts from a fresh one. Any other folder
    (a setup's config, ledger or mappings; files of someone's) is refused, and nothing in it is
    changed: the demo would overwrite the config and mappings and write its synthetic people into
    the ledger, which is append-only."""
    where = f"--dir {workdir}"
    marker = workdir / DEMO_MARKER
    try:
        present = sorted(entry.name for entry in workdir.iterdir()) if workdir.is_dir() else []
    except OSError as error:
        raise InvalidInput(f"{where}: cannot read the folder ({error.strerror})") from None
    present = [name for name in present if name != DEMO_MARKER]
    if present:
        if not marker.is_file():
            raise InvalidInput(
                f"{where}: the folder holds {_listed(present)}, which no `consentsync demo` made: the "
                "demo writes a fresh config, ledger and mappings; name a new or empty folder (or leave "
                "--dir out: a temporary one)"
            )
        others = [name for name in present if not _DEMO_FILES.fullmatch(name)]
        if others:
            raise InvalidInput(
                f"{where}: the folder of a previous demo also holds {_listed(others)}: the demo "
                "would replace its ledger; name a new or empty folder"
            )
        made = _marked_config_sum(marker)
        config = workdir / _CONFIG
        if made is not None and config.is_file() and _sum(config) != made:
            raise InvalidInput(
                f"{where}: {_CONFIG} was changed since `consentsync demo` wrote it (a setup of "
                "yours now?): the demo would replace it and its ledger; name a new or empty folder"
            )
        for name in _LEDGER_FILES:
            (workdir / name).unlink(missing_ok=True)
        say(f"{workdir}: a previous demo's folder: its ledger is replaced by a fresh one")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        marker.write_text(_MARKER_TEXT, encoding="utf-8")
    except OSError as error:
        raise InvalidInput(f"{where}: cannot write there ({error.strerror})") from None
    return workdir.resolve()  # a relative --dir: the config's paths are relative to itself


def mark_finished(workdir: Path) -> None:
    """Records in the demo's marker the config it left, so that a later demo replaces it only as
    the demo left it (not a config since made into a setup of someone's)."""
    config = workdir / _CONFIG
    if config.is_file():
        (workdir / DEMO_MARKER).write_text(f"{_MARKER_TEXT}{_CONFIG_SUM}{_sum(config)}\n", encoding="utf-8")


def _marked_config_sum(marker: Path) -> str | None:
    for line in marker.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(_CONFIG_SUM):
            return line.removeprefix(_CONFIG_SUM).strip()
    return None


def _sum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _listed(names: list[str]) -> str:
    shown = ", ".join(ascii(name)[1:-1] if not name.isprintable() else name for name in names[:4])
    return shown + (f" and {len(names) - 4} more" if len(names) > 4 else "")


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
