"""`subject export -o` and `plan -o` write a file readable by its owner only (a person's record,
a plan naming people) and never replace an existing file, nor write through a symlink, unless
--force: refused in one line, exit 2, the file as it was (black-box finding bb61 F7)."""

from __future__ import annotations

import stat
from pathlib import Path

from consentsync import exit_codes
from tests.conftest import Cli, one_line_error

EMAIL = "pat@example.org"


def _known(cli: Cli) -> None:
    cli.ok(
        "ledger", "record", "--email", EMAIL, "--purpose", "email_marketing", "--status", "withdrawn",
        "--source", "ops",
    )  # fmt: skip


def test_an_export_is_private_and_replaces_nothing_without_force(cli: Cli, tmp_path: Path) -> None:
    _known(cli)
    out = tmp_path / "pat.json"
    cli.ok("subject", "export", EMAIL, "--format", "json", "-o", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    out.write_text("kept\n")
    one_line_error(
        cli("subject", "export", EMAIL, "--format", "json", "-o", str(out)),
        exit_codes.CONFIG,
        f"-o {out}",
        "--force",
    )
    assert out.read_text() == "kept\n"
    cli.ok("subject", "export", EMAIL, "--format", "json", "-o", str(out), "--force")
    assert EMAIL in out.read_text() and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_an_export_never_writes_through_a_symlink(cli: Cli, tmp_path: Path) -> None:
    _known(cli)
    target = tmp_path / "elsewhere.txt"
    target.write_text("someone else's file\n")
    link = tmp_path / "pat.csv"
    link.symlink_to(target)
    one_line_error(
        cli("subject", "export", EMAIL, "--format", "csv", "-o", str(link)), exit_codes.CONFIG, "--force"
    )
    cli.ok("subject", "export", EMAIL, "--format", "csv", "-o", str(link), "--force")
    assert target.read_text() == "someone else's file\n"  # the link is replaced, not followed
    assert not link.is_symlink() and "record_type" in link.read_text()
