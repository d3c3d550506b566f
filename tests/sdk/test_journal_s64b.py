"""``sdk.Journal.add_many``: many names in one atomic write. Each write of the journal rewrites
the whole file and syncs it (and its folder); a connector noting names one ``add`` at a time
paid that per name (2,000 adds of SuperOffice's gone persons took 16 s)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from consentsync.sdk import ConnectorError, Journal
from consentsync.sdk import journal as journal_module


def journal(folder: Path) -> Journal:
    return Journal(folder, "vendor", "name", "https://crm.example.org", "principal")


@pytest.fixture
def renames(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each write of a journal file: the rename of its synced copy over it."""
    done: list[str] = []
    rename = os.replace

    def counted(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        done.append(str(target))
        rename(source, target)

    monkeypatch.setattr(journal_module.os, "replace", counted)
    return done


def test_add_many_writes_the_file_once_for_all_its_names(tmp_path: Path, renames: list[str]) -> None:
    names = [f"{n}@2026-12-07T10:00:00+00:00" for n in range(2000)]
    kept = journal(tmp_path)
    kept.add_many(names)
    assert len(renames) == 1
    assert journal(tmp_path).names() == set(names), "on disk: another instance reads them"
    assert kept.path is not None and json.loads(kept.path.read_text()) == sorted(names)


def test_add_many_of_names_held_or_of_none_writes_nothing(tmp_path: Path, renames: list[str]) -> None:
    kept = journal(tmp_path)
    kept.add_many([])
    assert not renames and kept.path is not None and not kept.path.exists()
    kept.add_many(["a", "b"])
    kept.add_many(["b", "a"])
    kept.add("a")
    assert len(renames) == 1
    kept.add_many(["a", "c"])
    assert len(renames) == 2 and kept.names() == {"a", "b", "c"}


def test_add_many_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails (a full disk) leaves the names held before, none of the new ones, and
    says so (a required journal: the connector's state_dir was given)."""
    kept = journal(tmp_path)
    kept.add_many(["held"])

    def full(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module.os, "fsync", full)
    with pytest.raises(ConnectorError) as raised:
        kept.add_many(["new 1", "new 2"])
    assert "No space left on device" in str(raised.value)
    monkeypatch.undo()
    assert journal(tmp_path).names() == {"held"}


def test_add_many_of_a_journal_that_cannot_be_used_and_is_not_required_is_off(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    kept = Journal(blocked, "vendor", "name", required=False)
    kept.add_many(["a", "b"])
    assert kept.off and kept.names() == set()
