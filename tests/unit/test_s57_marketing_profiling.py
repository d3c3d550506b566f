"""Art. 21(2)-(3): an objection to direct marketing ends every processing for direct marketing,
"which includes profiling to the extent that it is related to such direct marketing".

A purpose of profiling for direct marketing is configured ``profiling_for_direct_marketing:
true``: it serves direct marketing (``reconcile.serves_direct_marketing``), so an objection to
direct marketing suppresses it, and it sends nothing, so the ePrivacy rules stay off it. A purpose
under the ePrivacy rules (``eprivacy: true``) serves direct marketing too, whatever its
``direct_marketing`` says: before, an objection to direct marketing raised elsewhere left it
mailing (the reconciler covered only purposes flagged ``direct_marketing``). The purposes here
are built by the configuration, as the daemon builds them.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consentsync.config import Config, ConfigError, parse_config
from consentsync.domain import (
    Evidence,
    ObjectionFact,
    ObjectionHandling,
    ObjectionStatus,
    Purpose,
    SubjectFlags,
)
from consentsync.reconcile import Rule, effective_state, serves_direct_marketing, summarise
from tests.unit.test_reconcile_properties import (
    CHANNELS,
    NOWS,
    POLICY,
    SETTINGS,
    evidence_lists,
    new_consents_after,
    times,
)

CONFIG = Path("/srv/consentsync/consentsync.yaml")
TEXT = """\
version: 1
ledger:
  url: sqlite:///ledger.db
channels: [email, post]
purposes:
  - key: email_marketing
    name: Email marketing
    direct_marketing: true
    default_basis: consent
  - key: segments
    name: Segmentation for our offers
    profiling_for_direct_marketing: true
    default_basis: legitimate_interests
    objection_handling: manual_review
  - key: mailings
    name: Offers by email
    eprivacy: true
    default_basis: legitimate_interests
  - key: fraud
    name: Fraud scoring
    default_basis: legitimate_interests
    objection_handling: manual_review
  - key: service
    name: Service messages
    default_basis: contract
"""


def configured(text: str = TEXT) -> Config:
    return parse_config(text, CONFIG)


PURPOSES = configured().purposes
SEGMENTS, MAILINGS, FRAUD = PURPOSES["segments"], PURPOSES["mailings"], PURPOSES["fraud"]
MARKETING = {key for key, purpose in PURPOSES.items() if serves_direct_marketing(purpose)}


def test_the_configuration_says_which_purposes_serve_direct_marketing() -> None:
    assert {"email_marketing", "segments", "mailings"} == MARKETING
    # Profiling sends nothing: the ePrivacy rules (consent or a soft opt-in by email) stay off.
    assert not SEGMENTS.eprivacy_applies("email")
    assert SEGMENTS.objection_handling is ObjectionHandling.MANUAL_REVIEW  # Art. 21(2) outranks it
    # Given explicitly, the operator's eprivacy stands; with direct_marketing, it follows that.
    both = configured(
        TEXT.replace(
            "    profiling_for_direct_marketing: true\n",
            "    profiling_for_direct_marketing: true\n    direct_marketing: true\n",
        )
    )
    assert both.purposes["segments"].eprivacy_applies("email")
    stated = configured(
        TEXT.replace(
            "    profiling_for_direct_marketing: true\n",
            "    profiling_for_direct_marketing: true\n    eprivacy: true\n",
        )
    )
    assert stated.purposes["segments"].eprivacy_applies("email")


def test_a_bad_value_is_one_line_naming_the_field() -> None:
    with pytest.raises(ConfigError) as raised:
        configured(
            TEXT.replace("profiling_for_direct_marketing: true", "profiling_for_direct_marketing: maybe")
        )
    message = str(raised.value)
    assert message.startswith(f"{CONFIG}:12: purposes[1].profiling_for_direct_marketing: "), message
    assert "\n" not in message and "maybe" in message


def test_the_cli_refuses_a_bad_value_in_one_line_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "consentsync.yaml"
    path.write_text(
        TEXT.replace("profiling_for_direct_marketing: true", "profiling_for_direct_marketing: [yes]")
    )
    done = subprocess.run(
        [str(Path(sys.executable).parent / "consentsync"), "--config", str(path), "objection", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "purposes[1].profiling_for_direct_marketing" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


@SETTINGS
@given(
    items=evidence_lists,
    raised_at=times,
    named=st.sampled_from(sorted(PURPOSES)),
    data=st.data(),
    now=st.sampled_from(NOWS),
)
def test_an_objection_to_direct_marketing_stops_profiling_for_it(
    items: list[Evidence], raised_at: datetime, named: str, data: st.DataObject, now: datetime
) -> None:
    """Art. 21(3): whatever purpose the objection to direct marketing names, every purpose
    serving direct marketing (profiling for it, marketing under the ePrivacy rules) is suppressed
    under ``objection_direct_marketing`` on every channel, in any order of recording, unless the
    person's own new consent came after; every other purpose is decided as without it."""
    objection = ObjectionFact(named, True, ObjectionStatus.UPHELD, raised_at)
    summary = summarise(data.draw(st.permutations(items), label="recording order"), POLICY)
    lifted = new_consents_after(items, raised_at)
    for purpose in PURPOSES.values():
        for channel in CHANNELS:
            result = effective_state(
                summary, purpose, channel, flags=SubjectFlags(), objections=[objection], now=now
            )
            if purpose.key in MARKETING or purpose.key == named:
                if not lifted:
                    assert (result.suppressed, result.rule) == (True, Rule.OBJECTION_DIRECT_MARKETING)
            else:
                assert result == effective_state(
                    summary, purpose, channel, flags=SubjectFlags(), objections=(), now=now
                )


def _decided(purpose: Purpose, objections: list[ObjectionFact]) -> tuple[bool, str]:
    state = effective_state(
        summarise([], POLICY), purpose, "email", flags=SubjectFlags(), objections=objections, now=NOWS[0]
    )
    return state.suppressed, state.rule


def test_examples() -> None:
    newsletter_no = [ObjectionFact("email_marketing", True, ObjectionStatus.UPHELD, NOWS[0])]
    # Profiling for direct marketing on legitimate interests runs until the person objects to
    # direct marketing anywhere; then it stops, as Art. 21(3) says.
    assert _decided(SEGMENTS, []) == (False, Rule.DEFAULT_BASIS)
    assert _decided(SEGMENTS, newsletter_no) == (True, Rule.OBJECTION_DIRECT_MARKETING)
    # Marketing by email under the ePrivacy rules is direct marketing: it stops too.
    assert _decided(MAILINGS, newsletter_no) == (True, Rule.OBJECTION_DIRECT_MARKETING)
    # Profiling for something else (fraud) is no direct marketing: untouched.
    assert _decided(FRAUD, newsletter_no) == (False, Rule.DEFAULT_BASIS)
    # A rejected objection binds nothing.
    rejected = [ObjectionFact("email_marketing", True, ObjectionStatus.REJECTED, NOWS[0])]
    assert _decided(SEGMENTS, rejected) == (False, Rule.DEFAULT_BASIS)
