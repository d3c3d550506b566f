"""What the recording path's shortcuts must not change: ``domain.quick_init`` makes the same
frozen dataclasses as ``dataclass`` does, ``check_label``'s cache of accepted labels never
accepts what the check refuses, the email pattern's "@" first check finds and replaces what the
pattern alone does, and a keyed hasher made once hashes as ``email_hmac`` does."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from consentsync.domain import (
    EMAIL_IN_TEXT,
    ConsentStatus,
    EffectiveState,
    Evidence,
    InvalidInput,
    LawfulBasis,
    Origin,
    check_label,
    holds_email,
    quick_init,
    without_emails,
)
from consentsync.ledger.identity import email_hmac, keyed_hasher


@dataclass(frozen=True, slots=True)
class Plain:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)
    d: int | None = field(default=None, init=False)
    _: dataclasses.KW_ONLY
    e: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "d", self.a * 2)


@quick_init
@dataclass(frozen=True, slots=True)
class Quick:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)
    d: int | None = field(default=None, init=False)
    _: dataclasses.KW_ONLY
    e: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "d", self.a * 2)


def test_quick_init_makes_what_dataclass_makes() -> None:
    assert str(inspect.signature(Quick)) == str(inspect.signature(Plain))
    for args, kwargs in [((1,), {}), ((1, "x"), {"e": True}), ((3,), {"c": [1], "b": "y"})]:
        quick, plain = Quick(*args, **kwargs), Plain(*args, **kwargs)  # type: ignore[arg-type]
        assert dataclasses.astuple(quick) == dataclasses.astuple(plain)
        assert repr(quick).removeprefix("Quick") == repr(plain).removeprefix("Plain")
    assert Quick(1).c is not Quick(1).c  # a fresh default each time
    assert Quick(1) == Quick(1) != Quick(2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Quick(1).a = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        Quick(1, "b", [], True)  # type: ignore[misc]  # e is keyword-only
    with pytest.raises(TypeError):
        Quick()  # type: ignore[call-arg]
    assert dataclasses.replace(Quick(1), a=5).d == 10


def test_evidence_and_states_stay_frozen_dataclasses() -> None:
    moment = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    evidence = Evidence("p", "email", ConsentStatus.GRANTED, None, moment, moment, "web_form", Origin.CAPTURE)
    assert evidence.event_time == moment and evidence.event_time.tzinfo is UTC  # normalised
    assert evidence.fingerprint() == dataclasses.replace(evidence).fingerprint()
    with pytest.raises(dataclasses.FrozenInstanceError):
        evidence.source = "x"  # type: ignore[misc]
    state = EffectiveState("p", "email", ConsentStatus.GRANTED, LawfulBasis.CONSENT, False, "rule")
    assert state.detail == "" and state.evidence_status is None and state.basis_stated is False
    assert [f.name for f in dataclasses.fields(state)][-2:] == ["evidence_status", "basis_stated"]


def test_check_label_cache_accepts_only_what_was_checked() -> None:
    assert check_label("crm-import", "source", 20) == "crm-import"
    assert check_label("crm-import", "source", 20) == "crm-import"  # from the cache
    with pytest.raises(InvalidInput, match="at most 5"):
        check_label("crm-import", "source", 5)  # a tighter bound is checked again
    assert check_label("   ", "actor", 20) == "   "
    with pytest.raises(InvalidInput, match="must not be empty"):
        check_label("   ", "actor", 20, required=True)  # required is checked again
    for bad in ("a\x00b", "someone@example.org"):
        for _ in range(2):
            with pytest.raises(InvalidInput):
                check_label(bad, "source", 200)


def test_check_label_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from consentsync import domain

    monkeypatch.setattr(domain, "ACCEPTED_LABELS_MAX", 10)
    for index in range(50):
        check_label(f"label-{index}", "source", 200)
        assert len(domain._ACCEPTED_LABELS) <= 10


def test_sqlite_binds_none_and_bools_as_before() -> None:
    import sqlite3

    import consentsync.ledger.bulk  # noqa: F401  (registers the adapters)

    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (a, b, c)")
    db.executemany("INSERT INTO t VALUES (?, ?, ?)", [(None, True, False), (1, "x", None)])
    rows = db.execute("SELECT a, typeof(a), b, typeof(b), c, typeof(c) FROM t ORDER BY rowid").fetchall()
    assert rows == [(None, "null", 1, "integer", 0, "integer"), (1, "integer", "x", "text", None, "null")]


def test_iso_writes_what_isoformat_writes() -> None:
    from consentsync.domain import as_utc, iso

    for moment in [
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 60, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 6, 1, 0, 30, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 6, 1, 0, 30, 0, 1),  # naive: read as UTC
    ]:
        assert iso(moment) == as_utc(moment).isoformat().replace("+00:00", "Z")
    assert iso(None) is None


# Texts near the pattern's edges: an "@" with and without a dot after it, fullwidth and other
# look-alike signs (which the pattern does not take for an "@"), addresses inside other text.
_EMAILISH = st.text(
    alphabet=st.sampled_from(list("ab.@ \t<>,;:'\"/\\|-_+0\n\uff20\ufe6b\u0430é😀")), max_size=40
)


@given(_EMAILISH | st.text(max_size=40))
@example("write to ann@example.org, or b@c.d")
@example("ann\uff20example.org")
def test_the_at_sign_first_finds_and_replaces_what_the_pattern_does(text: str) -> None:
    assert holds_email(text) is (EMAIL_IN_TEXT.search(text) is not None)
    assert without_emails(text, "<x>") == EMAIL_IN_TEXT.sub("<x>", text)


def test_an_address_in_a_label_is_still_refused() -> None:
    with pytest.raises(InvalidInput, match="must not hold an email address"):
        check_label("Contact/003 (capture source: ann@example.org)", "evidence reference", 200)
    assert check_label("Contact/003 (capture source: web@form)", "evidence reference", 200)


@given(st.binary(min_size=1, max_size=200), st.lists(st.text(max_size=60), max_size=5))
def test_a_keyed_hasher_made_once_hashes_as_email_hmac(key: bytes, texts: list[str]) -> None:
    hashed = keyed_hasher(key)
    assert [hashed(text) for text in texts] == [email_hmac(key, text) for text in texts]
    assert [hashed(text) for text in texts] == [email_hmac(key, text) for text in texts]  # reusable
