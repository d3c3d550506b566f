"""`consentsync audit log --action` refuses an action it does not know, listing the known ones
(`cli.AUDIT_ACTIONS`). That list is kept by hand, so this meta-test reads every place the source
names an audit action (an ``AuditRecord``'s action, ``audit.payload``'s, ``audit_read``'s, an
``action=`` keyword, a module's ``*_ACTION`` constant) and checks that each is listed, and that
nothing listed is named nowhere."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from consentsync.cli import AUDIT_ACTIONS

ROOT = Path(__file__).resolve().parents[2]
DOTTED = re.compile(r"[a-z]+\.[a-z_]+")
# Call name -> position of its action among the positional arguments (`_link_entry`: the sync
# engine's entries of CRM records deleted, merged and restored).
ACTION_AT = {"AuditRecord": 0, "payload": 0, "audit_read": 1, "_link_entry": 0}


def _strings(node: ast.AST) -> set[str]:
    """The dotted string constants of an argument (both arms of ``a if c else b`` included)."""
    return {
        n.value
        for n in ast.walk(node)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and DOTTED.fullmatch(n.value)
    }


def _named_actions() -> set[str]:
    found: set[str] = set()
    for folder in ("src/consentsync", "connectors"):
        for path in (ROOT / folder).rglob("*.py"):
            if "tests" in path.parts or "sandbox" in path.parts:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for statement in tree.body:  # a module's ``*_ACTION`` constant names an action
                if (
                    isinstance(statement, ast.Assign)
                    and len(statement.targets) == 1
                    and isinstance(statement.targets[0], ast.Name)
                    and statement.targets[0].id.endswith("_ACTION")
                ):
                    found |= _strings(statement.value)
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                for keyword in node.keywords:
                    if keyword.arg == "action":
                        found |= _strings(keyword.value)
                position = ACTION_AT.get(str(name))
                if position is not None and len(node.args) > position:
                    found |= _strings(node.args[position])
    return found


def test_every_audit_action_the_source_writes_is_listed_for_the_filter() -> None:
    named = _named_actions()
    assert {"consent.recorded", "state.changed", "subject.created", "crm.pushed"} <= named  # the scan works
    assert sorted(named - set(AUDIT_ACTIONS)) == [], "add these to cli.AUDIT_ACTIONS"


def test_every_listed_audit_action_is_written_somewhere() -> None:
    assert sorted(set(AUDIT_ACTIONS) - _named_actions()) == [], "written nowhere: drop from cli.AUDIT_ACTIONS"
