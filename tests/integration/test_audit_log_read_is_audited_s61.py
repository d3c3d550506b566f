"""`audit log --email` prints a person's whole trail: the read is written down (subject.viewed),
as `subject show` and the console's search write theirs, after the trail is printed (black-box
finding bb61 F6, Art. 30)."""

from __future__ import annotations

from tests.conftest import Cli


def test_reading_a_persons_trail_is_written_down(cli: Cli) -> None:
    cli.ok(
        "ledger", "record", "--email", "pat@example.org", "--purpose", "email_marketing",
        "--status", "withdrawn", "--source", "ops",
    )  # fmt: skip
    (uid,) = {entry["subject"] for entry in cli.json("audit", "log", "--email", "pat@example.org")}
    viewed = cli.json("audit", "log", "--action", "subject.viewed")
    assert [entry["subject"] for entry in viewed] == [uid], viewed
    (again,) = {entry["subject"] for entry in cli.json("audit", "log", "--email", "pat@example.org")}
    assert again == uid and len(cli.json("audit", "log", "--action", "subject.viewed")) == 2
    cli.ok("audit", "log")  # the whole log names no one person: no read of a record
    assert len(cli.json("audit", "log", "--action", "subject.viewed")) == 2
