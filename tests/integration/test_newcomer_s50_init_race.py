"""Two `consentsync init` started at once in one folder (session 50): a config management run and
a person, or two replicas' start scripts. One of them died with a FileExistsError traceback (the
key written by the other between its check and its write); one could overwrite the config the
other had just written, and a failing one deleted the other's erasure key, which the other had
reported written. Now the second keeps what the first wrote, exit 0, and removes only its own."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import consentsync.config as config_module
from consentsync.cli import main
from consentsync.config import ERASURE_KEY_ENV, load_config, write_starter
from tests.conftest import proof

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
    assert [events[i] for i in links] == ["link consentsync.key", "link consentsync.yaml"]
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


# -- init killed part way (SIGKILL, or the file size limit: a real process dies mid-write) ---------


def init_process(folder: Path, *args: str, failpoints: str = "", file_limit: int | None = None) -> int:
    """`consentsync init` in its own process; returns its exit status (minus a signal's number).
    ``file_limit``: a write past that many bytes fails part way (EFBIG: Python ignores SIGXFSZ),
    as a kill or a full disk in the middle of writing a file would stop it."""
    env = {key: value for key, value in os.environ.items() if key != ERASURE_KEY_ENV}
    env["CONSENTSYNC_FAILPOINTS"] = failpoints

    def limit_file_size() -> None:  # a write past it kills the process with SIGXFSZ
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    command = [sys.executable, "-m", "consentsync.cli", "--config", str(folder / "consentsync.yaml")]
    done = subprocess.run(
        [*command, "init", *args], env=env, capture_output=True, timeout=60, preexec_fn=limit_file_size
    )
    assert b"Traceback" not in done.stderr, done.stderr.decode()
    return done.returncode


def test_init_killed_between_key_and_config_is_finished_by_the_next(tmp_path: Path) -> None:
    """Killed after one of its two files: the next init leaves a config whose key is there (the
    config written first, then killed, had the next init keep a config naming no key)."""
    folder = tmp_path / "site"
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    killed = init_process(folder, "--ledger-url", ledger, failpoints="init.key.written=kill")
    assert killed == -signal.SIGKILL
    key = (folder / "consentsync.key").read_text()
    assert init_process(folder, "--ledger-url", ledger) == 0
    config = load_config(folder / "consentsync.yaml")
    assert config.settings.secrets.erasure_hmac_key_file
    assert config.resolve_path(config.settings.secrets.erasure_hmac_key_file).read_text() == key
    assert sorted(p.name for p in folder.iterdir()) == ["consentsync.key", "consentsync.yaml"]


def old_config(folder: Path, ledger: str, padding: int = 0) -> bytes:
    """A config already there (the starter with a note of its own), as --force finds it."""
    folder.mkdir(parents=True, exist_ok=True)
    write_starter(folder / "consentsync.yaml", ledger)
    text = (folder / "consentsync.yaml").read_bytes() + b"# the operator's own\n" + b"#" * padding + b"\n"
    (folder / "consentsync.yaml").write_bytes(text)
    return text


def test_force_killed_mid_write_keeps_the_old_config_whole(tmp_path: Path) -> None:
    """--force stopped while writing the new config (the file size limit, part way): the old
    config is there whole, never truncated in place."""
    folder = tmp_path / "site"
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    before = old_config(folder, ledger)
    new_size = len(config_module.starter_with_ledger(ledger).encode())
    assert init_process(folder, "--force", "--ledger-url", ledger, file_limit=new_size // 2) == 2
    assert (folder / "consentsync.yaml").read_bytes() == before
    # Killed before the rename: the old one again; then a --force that completes has the new one.
    assert init_process(folder, "--force", failpoints="init.config.aside=kill") == -signal.SIGKILL
    assert (folder / "consentsync.yaml").read_bytes() == before
    assert init_process(folder, "--force", "--ledger-url", ledger) == 0
    assert (folder / "consentsync.yaml").read_text() == config_module.starter_with_ledger(ledger)


def test_force_killed_while_putting_the_old_config_back_leaves_one_whole(tmp_path: Path) -> None:
    """--force whose ledger cannot be made puts the old config back; stopped part way through that
    (the old config is longer than the file size limit, the new one shorter), the folder holds
    the new config or the old one whole, never a truncated one."""
    folder = tmp_path / "site"
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    unreachable = f"sqlite:///{tmp_path / 'no-such-folder' / 'ledger.db'}"
    before = old_config(folder, ledger, padding=20_000)
    new = config_module.starter_with_ledger(unreachable).encode()
    assert init_process(folder, "--force", "--ledger-url", unreachable, file_limit=len(new) + 4096) != 0
    assert (folder / "consentsync.yaml").read_bytes() in (before, new)


def test_a_config_left_without_its_key_gets_one_while_the_ledger_holds_nothing_keyed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older init killed between its config and its key left the config alone: this init
    writes the missing key (no ledger yet, so nothing can be keyed by another) and the ledger."""
    monkeypatch.delenv(ERASURE_KEY_ENV, raising=False)
    folder = tmp_path / "site"
    folder.mkdir()
    write_starter(folder / "consentsync.yaml", f"sqlite:///{tmp_path / 'ledger.db'}")
    (folder / "consentsync.key").unlink()
    result = init(folder)
    assert result.exit_code == 0, result.output + result.stderr
    assert "wrote the missing erasure key" in result.stdout
    assert (folder / "consentsync.key").stat().st_mode & 0o777 == 0o600
    key = load_config(folder / "consentsync.yaml").erasure_key()
    assert key == (folder / "consentsync.key").read_text().strip().encode()


def test_a_lost_key_is_not_replaced_once_the_ledger_holds_data_keyed_by_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ERASURE_KEY_ENV, raising=False)
    folder = tmp_path / "site"
    folder.mkdir()
    assert init(folder, "--ledger-url", f"sqlite:///{tmp_path / 'ledger.db'}").exit_code == 0
    record = ["ledger", "record", "--email", "a@example.com", "--purpose", "email_marketing"]
    recorded = CliRunner().invoke(
        main,
        [
            "--config",
            str(folder / "consentsync.yaml"),
            *record,
            "--status",
            "granted",
            "--source",
            "test",
            *proof(),
        ],
    )
    assert recorded.exit_code == 0, recorded.output + recorded.stderr
    (folder / "consentsync.key").unlink()  # lost: the backup is what holds it now
    result = init(folder)
    assert result.exit_code == 2, result.output + result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert "consentsync.key is missing" in result.stderr and "restore it" in result.stderr
    assert not (folder / "consentsync.key").exists()


def test_a_key_lost_right_after_init_is_written_again_though_its_check_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """init stores the key's check value (ledger_settings) and nothing keyed: a key lost before
    anything was recorded is written anew by the next init, and the ledger takes it."""
    monkeypatch.delenv(ERASURE_KEY_ENV, raising=False)
    folder = tmp_path / "site"
    folder.mkdir()
    assert init(folder, "--ledger-url", f"sqlite:///{tmp_path / 'ledger.db'}").exit_code == 0
    (folder / "consentsync.key").unlink()
    result = init(folder)
    assert result.exit_code == 0, result.output + result.stderr
    assert "wrote the missing erasure key" in result.stdout
    status = CliRunner().invoke(main, ["--config", str(folder / "consentsync.yaml"), "status"])
    assert status.exit_code == 0, status.output + status.stderr
