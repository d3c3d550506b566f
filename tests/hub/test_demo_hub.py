"""`consentsync demo --hub` end to end, as a newcomer runs it: a capture with double opt-in
through the API, the mail received by a real SMTP server, the link followed, the grant pushed to
the CRMs, then a withdrawal on the preference page reaching every one of them."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from consentsync.cli import main
from consentsync.sdk.harness import available_harnesses


def test_the_hub_demo_carries_a_capture_and_a_withdrawal_to_every_crm(tmp_path: Path) -> None:
    crms = sorted(available_harnesses())
    result = CliRunner().invoke(
        main, ["demo", "--hub", "--crms", ",".join(crms), "--records", "10", "--dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output + str(result.exception)
    out = result.stdout
    assert "recorded 'requested', confirmation queued" in out
    assert "Please confirm: Email marketing" in out
    assert "email_marketing/email is granted (rule trusted_opt_in_reverses)" in out
    opted_in = [line for line in out.splitlines() if line.endswith("opted out of email = False")]
    assert opted_in, out  # the opt-in reached the CRMs that accept one from the API
    # A CRM the opt-in did not reach says why (it refused it, or its mapping writes no grant).
    told = out.split("is granted (rule trusted_opt_in_reverses)", 1)[1].split("withdraws: ledger says", 1)[0]
    told_flags = [line for line in told.splitlines() if "opted out of email = " in line]
    assert len(told_flags) == len(crms), told
    assert all(line.endswith("= False") or " (" in line for line in told_flags), told
    after = out.split("withdraws: ledger says", 1)[1]
    assert "withdrawn (rule sticky_withdrawal)" in after
    flags = [line for line in after.splitlines() if "opted out of email = " in line]
    assert len(flags) == len(crms) and all(line.endswith("= True") for line in flags), after
    assert "mails sent: 3" in out
    # Nothing of the demo's own making warns mid-story (its hub keeps the starter's GPC purposes).
    assert "gpc_honoured_nowhere" not in result.output, result.output
