"""An objection reviewed while its purpose did not serve direct marketing, once the configuration
says the purpose does (``profiling_for_direct_marketing: true``): Art. 21(3) ends processing for
direct marketing on an objection, and no review can keep it going. Pending and rejected
objections to the purpose are upheld when the ledger takes the new configuration in (audited),
the purpose's states are decided again with them, and a review still holding the old one cannot
reject such an objection."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.domain import InvalidInput
from tests.conftest import Cli, proof

EMAIL = "objector@example.com"
PLAIN = (
    "    direct_marketing: false\n    default_basis: legitimate_interests\n"
    "    objection_handling: manual_review\n"
)


def _profiling_serves_direct_marketing(config_path: Path) -> None:
    text = config_path.read_text(encoding="utf-8")
    assert text.count(PLAIN) == 1  # the starter's profiling purpose
    config_path.write_text(
        text.replace(PLAIN, PLAIN + "    profiling_for_direct_marketing: true\n"), encoding="utf-8"
    )


def _profiling(cli: Cli) -> list[dict[str, object]]:
    return [s for s in cli.json("subject", "show", EMAIL)["purposes"] if s["purpose"] == "profiling"]


@pytest.mark.parametrize("reviewed", ["pending", "rejected"])
def test_an_objection_to_a_purpose_now_serving_direct_marketing_is_upheld(
    cli: Cli, config_path: Path, reviewed: str
) -> None:
    cli.ok("ledger", "record", "--email", EMAIL, "--purpose", "profiling", "--channel", "email",
           "--status", "granted", "--source", "web_form", *proof())  # fmt: skip
    raised = cli.json("objection", "raise", "--email", EMAIL, "--purpose", "profiling")
    assert raised["status"] == "pending"
    if reviewed == "rejected":
        cli.ok("objection", "decide", str(raised["id"]), "--reject", "--by", "dpo", "--reason", "fraud")
        assert not any(s["suppressed"] for s in _profiling(cli))  # the rejection let it go on

    _profiling_serves_direct_marketing(config_path)

    (objection,) = cli.json("objection", "list")
    assert objection["status"] == "upheld"
    assert objection["decided_by"] == "policy:art21(3)_purpose_now_direct_marketing"
    states = _profiling(cli)
    assert states and all(s["suppressed"] and s["rule"] == "objection_upheld" for s in states)
    decided = [
        e for e in cli.json("audit", "log", "--action", "objection.decided")
        if e["new"] == "upheld" and e["rule"] == "art21(3)_purpose_now_direct_marketing"
    ]  # fmt: skip
    assert len(decided) == 1 and decided[0]["old"] == reviewed
    refused = cli("objection", "decide", str(raised["id"]), "--reject", "--by", "dpo", "--reason", "again")
    assert refused.exit_code == 2 and "already upheld" in refused.stderr
    cli.ok("audit", "verify")


def test_a_review_holding_the_old_configuration_cannot_reject_it(cli: Cli, config_path: Path) -> None:
    raised = cli.json("objection", "raise", "--email", EMAIL, "--purpose", "profiling")
    ledger = open_ledger(load_config(config_path))
    # The configuration now says the purpose serves direct marketing, not yet taken in by the
    # ledger (no sync_purposes: as a console started before the change would hold it).
    old = ledger.purposes["profiling"]
    ledger.purposes["profiling"] = dataclasses.replace(old, direct_marketing=True)
    with pytest.raises(InvalidInput, match=r"objection \d+ is to purpose profiling.*--uphold"):
        ledger.decide_objection(raised["id"], uphold=False, by="dpo", reason="fraud checks")
    assert cli.json("objection", "list")[0]["status"] == "pending"  # nothing written
    upheld = ledger.decide_objection(raised["id"], uphold=True, by="dpo", reason="marketing now")
    assert upheld["status"] == "upheld"


def test_a_process_holding_the_old_configuration_after_another_took_the_new_one_in_cannot_reject(
    cli: Cli, config_path: Path
) -> None:
    # The console opened before the change; a restarted daemon takes the configuration in; an
    # objection raised through the console afterwards is pending there, and its reviewer would
    # reject it: the purposes' mirror says the purpose serves direct marketing now.
    stale = open_ledger(load_config(config_path))
    _profiling_serves_direct_marketing(config_path)
    cli.ok("objection", "list")  # a process with the new configuration opens the ledger
    raised = stale.raise_objection(EMAIL, "profiling", source="ops")
    with pytest.raises(InvalidInput, match="serves direct marketing"):
        stale.decide_objection(raised["id"], uphold=False, by="dpo", reason="fraud checks")
