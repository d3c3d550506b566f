"""A ledger URL typed by hand (session 50): a password's unencoded '@', a port that is not a
number or out of range, an upper-case scheme. Each is one line naming the file, line and field
and what is accepted, exit 2 (retrying will not help), nothing written, no traceback, and no part
of the password in the error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from consentsync import exit_codes
from consentsync.cli import main
from consentsync.config import parse_config, write_starter
from tests.conftest import one_line_error

PASSWORD_TAIL = "Zq7tail"  # the part of the password after its '@'
CASES = [
    # An unencoded '@' in the password: the rest of the password was taken for the host name,
    # which the connection error then showed (exit 69, "retry when it is back").
    (f"postgresql://app:Pa@ss{PASSWORD_TAIL}@127.0.0.1:5432/db", "percent-encoded", "%40"),
    # A port that is not a number: SQLAlchemy's ValueError was a traceback (exit 1).
    (
        f"postgresql://app:s{PASSWORD_TAIL}@127.0.0.1:abc/db",
        "not a URL consentsync can read",
        "PORT a number",
    ),
    # libpq's several hosts, which SQLAlchemy spells as ?host=...: a traceback too.
    (f"postgresql://app:s{PASSWORD_TAIL}@h1:5432,h2:5433/db", "not a URL consentsync can read", "?host="),
    # A port out of range was tried as a host name ("failed to resolve host", exit 69).
    (f"postgresql://app:s{PASSWORD_TAIL}@127.0.0.1:99999/db", "port 99999 is out of range", "1 to 65535"),
    ("SQLITE:///ledger.db", "lower case", "sqlite://"),
]


def run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args])


def with_url(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "consentsync.yaml"
    write_starter(path, "sqlite:///ledger.db")
    text = path.read_text(encoding="utf-8").replace("url: sqlite:///ledger.db", f"url: '{url}'")
    path.write_text(text, encoding="utf-8")
    return path


def url_line(path: Path) -> int:
    return next(
        n for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith("url:")
    )


@pytest.mark.parametrize(("url", "said", "accepted"), CASES)
def test_a_malformed_ledger_url_is_named_with_its_line(
    tmp_path: Path, url: str, said: str, accepted: str
) -> None:
    config = with_url(tmp_path, url)
    before = sorted(p.name for p in tmp_path.iterdir())
    for command in (["status"], ["audit", "verify"], ["sync", "--all"]):
        line = one_line_error(
            run(config, *command),
            exit_codes.CONFIG,
            f"{config}:{url_line(config)}: ledger.url: ",
            said,
            accepted,
        )
        assert PASSWORD_TAIL not in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(("url", "said", "accepted"), CASES)
def test_init_refuses_it_as_the_option_and_writes_nothing(
    tmp_path: Path, url: str, said: str, accepted: str
) -> None:
    folder = tmp_path / "new"
    folder.mkdir()
    result = run(folder / "consentsync.yaml", "init", "--ledger-url", url)
    line = one_line_error(result, exit_codes.CONFIG, "--ledger-url: ", said, accepted)
    assert PASSWORD_TAIL not in line, line
    assert list(folder.iterdir()) == []


def test_the_real_command_prints_no_traceback(tmp_path: Path) -> None:
    """The installed entry point, as an operator runs it: the port that was a traceback."""
    config = with_url(tmp_path, CASES[1][0])
    done = subprocess.run(
        [str(Path(sys.executable).parent / "consentsync"), "--config", str(config), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == exit_codes.CONFIG, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("consentsync: error: "), done.stderr
    assert "Traceback" not in done.stderr and PASSWORD_TAIL not in done.stderr + done.stdout


def test_an_encoded_password_is_still_accepted(tmp_path: Path) -> None:
    """The check refuses only what cannot work: %40 is how a password's '@' is written."""
    config = with_url(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    assert run(config, "init").exit_code == 0
    text = config.read_text(encoding="utf-8").replace(
        f"sqlite:///{tmp_path / 'ledger.db'}", "postgresql://app:Pa%40ss@127.0.0.1:5432/db"
    )
    assert parse_config(text, config).settings.ledger.url.endswith("@127.0.0.1:5432/db")
    # An '@' in a SQLite file's path is no password; a socket folder in ?host= is a host.
    for url in ("sqlite:////srv/a@b/ledger.db", "postgresql://app@/db?host=/var/run/postgresql"):
        text = config.read_text(encoding="utf-8").replace(f"sqlite:///{tmp_path / 'ledger.db'}", url)
        assert parse_config(text, config).settings.ledger.url == url
