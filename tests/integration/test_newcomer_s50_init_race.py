"""Two `consentsync init` started at once in one folder (session 50): a config management run and
a person, or two replicas' start scripts. One of them died with a FileExistsError traceback (the
key written by the other between its check and its write); one could overwrite the config the
other had just written, and a failing one deleted the other's erasure key, which the other had
reported written. Now the second keeps what the first wrote, exit 0, and removes only its own."""

from __future__ import annotations

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
