"""An objection (Art. 21) is taken only where the person has the right to make it, by the ledger,
whoever raises it (``consentsync objection raise``, ``POST /v1/objections``, the preference page):
where the processing's basis for that person is legitimate interests or a public task (Art.
21(1)), or the purpose serves direct marketing (Art. 21(2), whatever the basis).

Before, the CLI and the capture API took an objection to any purpose: one to ``service`` (a
contract) was even upheld at once (``policy:auto_uphold``), and the contract's messages stopped
for the person (``objection_upheld``), while the preference page refused the same objection. A
consent is withdrawn (Art. 7(3)), not objected to; a contract, a legal obligation or vital
interests give no right to object. Refused: one line naming the purpose, its basis and what to do
instead, exit 2, nothing recorded (no objection, no person, no audit entry).

On SQLite and PostgreSQL (``ledger_url``); the command's exit code and line from a real process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from consentsync import exit_codes
from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.domain import ConsentStatus, LawfulBasis, ObjectionHandling, Purpose
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import audit_entries, objections, subjects
from consentsync.ledger.service import Ledger, NotObjectable, objectable
from tests.conftest import TEST_ERASURE_KEY, Clock, own_environment
from tests.integration.helpers import consent_value

CONSENTSYNC = str(Path(sys.executable).parent / "consentsync")
# Purposes beside the starter's (email_marketing: consent, direct marketing; profiling:
# legitimate interests, manual review; service: contract, auto-uphold).
EXTRA_PURPOSES = [
    {"key": "newsletter", "name": "Newsletter", "default_basis": "consent", "channels": ["email"]},
    {"key": "registry", "name": "Public registry", "default_basis": "public_task", "channels": ["post"]},
    {"key": "payroll", "name": "Payroll", "default_basis": "legal_obligation", "channels": ["post"]},
]


@pytest.fixture
def config(config_path: Path) -> Path:
    data = yaml.safe_load(config_path.read_text())
    data["purposes"].extend(EXTRA_PURPOSES)
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return config_path


@pytest.fixture
def basis_ledger(config: Path, clock: Clock) -> Any:
    opened = open_ledger(load_config(config), migrate=True)
    opened.clock = clock
    opened.sync_purposes()
    yield opened
    opened.engine.dispose()


def counts(ledger: Ledger) -> tuple[int, int, int]:
    """Objections, people and audit entries in the ledger."""
    with ledger.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            int(conn.execute(select(func.count()).select_from(table)).scalar_one())
            for table in (objections, subjects, audit_entries)
        )


def record(ledger: Ledger, email: str, purpose: str, status: ConsentStatus, basis: LawfulBasis) -> None:
    """One value on every channel of ``purpose``, an hour ago, from ops."""
    now = ledger.clock()
    for channel in ledger.purposes[purpose].channels:
        ledger.record(
            Identity(email=email),
            consent_value(
                status,
                now,
                now,
                purpose=purpose,
                channel=channel,
                basis=basis,
                source="web_form",
                notice_version="v1",
                evidence_ref="form:1",
            ),
        )


@pytest.mark.parametrize(
    ("purpose", "basis", "instead"),
    [
        ("service", "contract", "contract gives no right to object"),
        ("payroll", "legal_obligation", "legal_obligation gives no right to object"),
        ("newsletter", "consent", "a consent is withdrawn instead (Art. 7(3)): record a withdrawal"),
    ],
)
def test_no_right_to_object_is_refused_and_nothing_is_recorded(
    basis_ledger: Ledger, purpose: str, basis: str, instead: str
) -> None:
    known = "known@example.com"
    record(basis_ledger, known, "email_marketing", ConsentStatus.GRANTED, LawfulBasis.CONSENT)
    before = counts(basis_ledger)
    for email in (known, "new@example.com"):  # a person on record, and one the objection would make
        with pytest.raises(NotObjectable) as refused:
            basis_ledger.raise_objection(email, purpose)
        message = str(refused.value)
        assert f"purpose {purpose!r} cannot be objected to: it rests on {basis} for this person" in message
        assert instead in message and message.endswith("nothing was recorded") and "\n" not in message
        assert "@" not in message  # never the address
        assert (refused.value.code, refused.value.bases) == ("objection_basis_not_objectable", (basis,))
    assert counts(basis_ledger) == before  # no objection, no new person, no audit entry
    # The purpose goes on as before for the person on record (a contract's messages are sent).
    for channel in basis_ledger.purposes[purpose].channels:
        state = basis_ledger.decision_for(known, purpose, channel)[1]
        assert not state.rule.startswith("objection"), state


def test_the_preference_page_path_is_refused_the_same(basis_ledger: Ledger) -> None:
    email = "page@example.com"
    record(basis_ledger, email, "email_marketing", ConsentStatus.GRANTED, LawfulBasis.CONSENT)
    (uid,) = basis_ledger.subject_uids_for_email(email)
    before = counts(basis_ledger)
    with pytest.raises(NotObjectable, match="it rests on contract"):
        basis_ledger.raise_objection_of(uid, "service", source="preference_center")
    assert counts(basis_ledger) == before


def test_objectable_bases_and_direct_marketing_are_taken(basis_ledger: Ledger) -> None:
    # Legitimate interests: the purpose's objection_handling decides (manual review here).
    assert basis_ledger.raise_objection("li@example.com", "profiling")["status"] == "pending"
    # A public task (Art. 6(1)(e)): auto-upheld by the starter's policy.
    assert basis_ledger.raise_objection("pt@example.com", "registry")["status"] == "upheld"
    # Direct marketing on consent: Art. 21(2), whatever the basis.
    taken = basis_ledger.raise_objection("dm@example.com", "email_marketing")
    assert (taken["status"], taken["direct_marketing"]) == ("upheld", True)
    # Said to be an objection to direct marketing, on a consent purpose not flagged so: taken
    # (marketing its configuration does not flag), and it binds direct marketing.
    said = basis_ledger.raise_objection("nl@example.com", "newsletter", direct_marketing=True)
    assert (said["status"], said["decided_by"]) == ("upheld", "policy:art21(2)_direct_marketing")


def test_a_direct_marketing_objection_on_a_contract_names_the_purposes_that_serve_it(
    basis_ledger: Ledger,
) -> None:
    # A contract is no direct marketing: the objection would stop the person's service messages.
    before = counts(basis_ledger)
    with pytest.raises(NotObjectable) as refused:
        basis_ledger.raise_objection("svc@example.com", "service", direct_marketing=True)
    assert "an objection to direct marketing names a purpose that serves it (email_marketing)" in str(
        refused.value
    )
    assert counts(basis_ledger) == before


def test_the_persons_own_basis_decides_not_only_the_purposes_default(basis_ledger: Ledger) -> None:
    # Consent given under a legitimate-interests purpose, on every channel: withdrawn, not
    # objected to (an objection under review could be rejected and the consent go on).
    consented = "consented@example.com"
    record(basis_ledger, consented, "profiling", ConsentStatus.GRANTED, LawfulBasis.CONSENT)
    before = counts(basis_ledger)
    with pytest.raises(NotObjectable, match="it rests on consent for this person: a consent is withdrawn"):
        basis_ledger.raise_objection(consented, "profiling")
    assert counts(basis_ledger) == before
    # Legitimate interests recorded for a person under a contract purpose: they may object.
    li = "li-on-service@example.com"
    record(basis_ledger, li, "service", ConsentStatus.NOT_APPLICABLE, LawfulBasis.LEGITIMATE_INTERESTS)
    assert basis_ledger.raise_objection(li, "service")["status"] == "upheld"


def test_the_rule_itself() -> None:
    # The person's bases decide, each channel's, not the purpose's default.
    contract = Purpose("service", "Service", False, LawfulBasis.CONTRACT, None, ObjectionHandling.AUTO_UPHOLD)
    assert not objectable(contract, [LawfulBasis.CONTRACT], direct_marketing=False)
    assert not objectable(contract, [LawfulBasis.CONTRACT], direct_marketing=True)
    assert objectable(contract, [LawfulBasis.CONTRACT, "legitimate_interests"], direct_marketing=False)
    assert not objectable(contract, ["consent"], direct_marketing=False)
    assert objectable(contract, ["consent"], direct_marketing=True)
    assert objectable(contract, ["public_task"], direct_marketing=False)


# -- the command, as a scheduler or an operator runs it --------------------------------------------


def run(config: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CONSENTSYNC, "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=own_environment(tmp_path, TEST_ERASURE_KEY),
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)  # the SQL runs on both above
def test_the_command_refuses_in_one_line_with_exit_2(config: Path, tmp_path: Path) -> None:
    assert run(config, tmp_path, "init").returncode == 0
    for purpose, needles in (
        ("service", ("purpose 'service' cannot be objected to", "rests on contract", "no right to object")),
        (
            "newsletter",
            (
                "purpose 'newsletter' cannot be objected to",
                "rests on consent",
                "record a withdrawal",
                "consentsync ledger record --purpose newsletter --status withdrawn",
            ),
        ),
    ):
        done = run(config, tmp_path, "objection", "raise", "--email", "nv2@example.com", "--purpose", purpose)
        assert done.returncode == exit_codes.CONFIG, (done.returncode, done.stdout, done.stderr)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("consentsync: error: "), done.stderr
        assert "Traceback" not in done.stderr and "nv2@example.com" not in done.stderr
        for needle in needles:
            assert needle in lines[0], lines[0]
        assert done.stdout == ""
    # Nothing recorded: no objection, no person made for the address.
    listed = run(config, tmp_path, "objection", "list", "--json")
    assert listed.returncode == 0 and listed.stdout.strip() == "[]", listed.stdout
    shown = run(config, tmp_path, "subject", "show", "nv2@example.com")
    assert shown.returncode != 0 and "no subject" in shown.stderr
    # An objection the person may make is still taken.
    taken = run(
        config, tmp_path, "objection", "raise", "--email", "nv2@example.com", "--purpose", "profiling"
    )
    assert taken.returncode == 0 and "pending review" in taken.stdout, taken.stderr
