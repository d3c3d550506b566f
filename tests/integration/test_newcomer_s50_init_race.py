"""Two `consentsync init` started at once in one folder (session 50): a config management run and
a person, or two replicas' start scripts. One of them died with a FileExistsError traceback (the
key written by the other between its check and its write); one could overwrite the config the
other had just written, and a failing one deleted the other's erasure key, which the other had
reported written. Now the second keeps what the first wrote, exit 0, and removes only its own."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import consentsync.config as config_module
from consentsync.cli import main
from consentsync.config import load_config, write_starter

OTHERS_CONFIG = "# written by the other init\n"


def init(folder: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(folder / "consentsync.yaml"), "init", *args])


def other_init_writes(
    monkeypatch: pytest.MonkeyPatch, *, config: str | None, key: str | None, folder: Path
) -> None:
    """The other init's files appear after this init has checked for them and before it writes:
    when write_starter makes the text it will write (the command's own check of --ledger-url
    calls the name it imported, not this one)."""
    real = config_module.starter_with_ledger
    calls = {"n": 0}

    def racing(url: str | None) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            if key is not None:
                (folder / "consentsync.key").write_text(key)
            if config is not None:
                (folder / "consentsync.yaml").write_text(config)
        return real(url)

    monkeypatch.setattr(config_module, "starter_with_ledger", racing)


def test_a_config_written_meanwhile_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    starter = tmp_path / "starter.yaml"
    write_starter(starter, f"sqlite:///{tmp_path / 'ledger.db'}")
    theirs = OTHERS_CONFIG + starter.read_text()
    folder = tmp_path / "site"
    folder.mkdir()
    other_init_writes(monkeypatch, config=theirs, key="their-key-0123456789abcdef\n", folder=folder)
    result = init(folder, "--ledger-url", f"sqlite:///{tmp_path / 'ledger.db'}")
    assert result.exit_code == 0, result.output + result.stderr
    assert "exists: keeping it" in result.stdout and "wrote" not in result.stdout
    assert (folder / "consentsync.yaml").read_text() == theirs
    assert (folder / "consentsync.key").read_text() == "their-key-0123456789abcdef\n"
    assert load_config(folder / "consentsync.yaml").settings.ledger.url.endswith("ledger.db")


def test_a_failing_init_leaves_the_key_it_did_not_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This init's ledger cannot be made (no such folder): it removes its config, not the key the
    other init wrote meanwhile (that init said `erasure key in consentsync.key: back it up`)."""
    folder = tmp_path / "site"
    folder.mkdir()
    other_init_writes(monkeypatch, config=None, key="their-key-0123456789abcdef\n", folder=folder)
    result = init(folder, "--ledger-url", f"sqlite:///{tmp_path / 'no-such-folder' / 'ledger.db'}")
    assert result.exit_code == 2, result.output + result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["consentsync.key"]
    assert (folder / "consentsync.key").read_text() == "their-key-0123456789abcdef\n"


def test_write_starter_never_replaces_a_key_nor_leaves_a_file_aside(tmp_path: Path) -> None:
    path = tmp_path / "consentsync.yaml"
    (tmp_path / "consentsync.key").write_text("kept\n")
    created: list[Path] = []
    write_starter(path, replace=False, created=created)
    assert created == [path]
    assert (tmp_path / "consentsync.key").read_text() == "kept\n"
    with pytest.raises(FileExistsError):
        write_starter(path, replace=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["consentsync.key", "consentsync.yaml"]


# -- a filesystem without hard links (SMB, vboxsf, some FUSE) --------------------------------------


def no_hard_links(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """os.link refused as such a filesystem refuses it; returns the names it was asked to make."""
    asked: list[str] = []

    def refuse(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        asked.append(Path(target).name)
        raise OSError(errno.EPERM, "Operation not permitted", str(target))

    monkeypatch.setattr(os, "link", refuse)
    return asked


def test_init_works_on_a_filesystem_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "share"
    folder.mkdir()
    asked = no_hard_links(monkeypatch)
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    result = init(folder, "--ledger-url", ledger)
    assert result.exit_code == 0, result.output + result.stderr
    assert "consentsync.key" in asked  # the link was tried, and refused
    assert sorted(p.name for p in folder.iterdir()) == ["consentsync.key", "consentsync.yaml"]
    key = (folder / "consentsync.key").read_text()
    assert len(key.splitlines()) == 1 and len(key.strip()) >= 40
    assert (folder / "consentsync.key").stat().st_mode & 0o777 == 0o600
    assert load_config(folder / "consentsync.yaml").settings.ledger.url == ledger
    # Run again: the key is kept, written once.
    again = init(folder)
    assert again.exit_code == 0 and (folder / "consentsync.key").read_text() == key


def test_each_file_is_synced_before_it_gets_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash after the link must not leave an empty or partial key under the real name."""
    events: list[str] = []
    real_fsync, real_link = os.fsync, os.link
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        os, "link", lambda *a, **k: (events.append(f"link {Path(a[1]).name}"), real_link(*a, **k))[1]
    )
    write_starter(tmp_path / "consentsync.yaml", replace=False)
    links = [i for i, event in enumerate(events) if event.startswith("link ")]
    assert [events[i] for i in links] == ["link consentsync.yaml", "link consentsync.key"]
    assert all(i > 0 and events[i - 1] == "fsync" for i in links), events


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_a_write_that_fails_leaves_no_file_aside_nor_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: bool
) -> None:
    """A full disk while the key is written: init says so in one line, exit 2, and leaves
    the folder as it found it (no hidden copy of a key, no config without its key)."""
    folder = tmp_path / "site"
    folder.mkdir()
    if not links:
        no_hard_links(monkeypatch)

    def no_unnamed_files(*args: Any) -> None:  # as where O_TMPFILE is not: the aside file is used
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(config_module, "_link_in_unnamed", no_unnamed_files, raising=False)
    real_write = os.write

    def full_for_the_key(fd: int, data: Any) -> int:
        if b"\n" in bytes(data) and len(bytes(data)) < 100:  # the key: one short line
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_for_the_key)
    result = init(folder, "--ledger-url", f"sqlite:///{tmp_path / 'ledger.db'}")
    assert result.exit_code == 2, result.output + result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert "No space left on device" in result.stderr + result.output
    assert list(folder.iterdir()) == []
