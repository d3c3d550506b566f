"""Asking people: consent requests (a purpose applies to them and nothing is on record: Vtiger's
"applicable -> waiting") and renewals (a granted consent about to expire). Both mail a
confirmation link; following it grants, with the confirmation time as evidence.

Never to a person who may not be contacted about it: an erased address, a restricted person, an
objection, a withdrawal or refusal on record (only "no consent on record" is asked), nor twice
while a request is open. A request for consent to marketing is itself marketing by e-mail (PECR
reg. 22, docs/policy.md rule 6): it goes only to people the ledger lets us e-mail marketing on
another ground (``may_email_marketing``: ledger/service.py); the rest are counted, never mailed.

Mails go at most ``hub.mails_per_minute``, so a run lasts minutes: each person's state is read
again right before their mail, and one who was erased, restricted, or said no meanwhile is left
out (counted apart, not as a failure)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import structlog
from sqlalchemy import delete, select

from consentsync.domain import (
    ConsentStatus,
    EffectiveState,
    Evidence,
    InvalidInput,
    LawfulBasis,
    Origin,
    Purpose,
)
from consentsync.hub.capture import Hub, Mailed, PendingMail, token_digest
from consentsync.hub.confirmation_terms import open_confirmation
from consentsync.hub.links import bound
from consentsync.hub.mail import NOT_ONE_ADDRESS, mailable
from consentsync.hub.notices import current, text_shown_on_page
from consentsync.ledger.engine import reading
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import confirmations, consent_states, subjects
from consentsync.ledger.service import RecordRequest, latest_address, may_email_marketing
from consentsync.notice_texts import Notice
from consentsync.reconcile import Rule, serves_direct_marketing

log = structlog.get_logger("consentsync.hub.outreach")

REQUEST_SOURCE = "consent_request"
CHUNK = 500
# Why a person was not asked (the log's ``reason``): nothing lets us e-mail them marketing.
NO_MARKETING_GROUND = "no_email_marketing_ground"


@dataclass(frozen=True, slots=True)
class Outreach:
    """What a run did: mails sent, and how many failed; ``unmailable``: people left out because
    the address the ledger holds for them is not one address (kept from an older version);
    ``erased``: people left out because they were erased while the run went on (its mails are
    paced over minutes); ``changed``: people left out because, while it went on, they were
    restricted (Art. 18), withdrew, refused or objected (or, for a request, answered it
    otherwise; for a renewal, renewed): not failures, nothing to retry. ``no_ground``: requests
    for consent to marketing not mailed because nothing on record lets us e-mail the person
    marketing (``may_email_marketing``: ledger/service.py), counted in a dry run too."""

    kind: str
    sent: int
    failed: int
    candidates: int
    unmailable: int = 0
    erased: int = 0
    changed: int = 0
    no_ground: int = 0


def _open_confirmations(conn: Any, now: Any) -> set[tuple[int, str, str]]:
    rows = conn.execute(
        select(confirmations.c.subject_id, confirmations.c.purpose, confirmations.c.channel).where(
            confirmations.c.confirmed_at.is_(None),
            confirmations.c.lapsed_at.is_(None),
            confirmations.c.expires_at > now,
        )
    )
    return {(row.subject_id, row.purpose, row.channel) for row in rows}


def _asked(state: EffectiveState) -> bool:
    """Whether a consent request may go: only where nothing is on record. A refusal,
    withdrawal, objection, erasure or restriction is decided by another rule, never asked."""
    return state.rule == Rule.NO_CONSENT_ON_RECORD


def _renewal_due(state: EffectiveState, now: datetime, days: int) -> bool:
    """Whether a renewal may go: a consent that may still be used (suppressed by no rule:
    restriction, objection, withdrawal) and runs out within ``days``."""
    return (
        not state.suppressed
        and state.status is ConsentStatus.GRANTED
        and state.expires_at is not None
        and state.expires_at - now <= timedelta(days=days)
    )


def _people(conn: Any) -> Iterator[list[tuple[int, str, str]]]:
    """(subject id, uid, email) of every live person holding an address, in chunks: once each,
    at the address they were last known by (the old one may be someone else's now)."""
    address = latest_address()
    query = (
        select(subjects.c.id, subjects.c.uid, address.label("value"))
        .where(subjects.c.erased_at.is_(None), address.is_not(None))
        .order_by(subjects.c.id)
    )
    chunk: list[tuple[int, str, str]] = []
    for row in conn.execute(query):
        chunk.append((row.id, row.uid, row.value))
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Outreacher:
    def __init__(self, hub: Hub, sleep: Callable[[float], None] = time.sleep) -> None:
        self.hub = hub
        self.ledger = hub.ledger
        self.sleep = sleep
        # The language a request's or renewal's mail is written in and its link opens the
        # confirmation page in (``?lang=``): nobody asked for one, so the hub's default, the first
        # of hub.languages, as the capture API's. Passed to the mail and to the notice chosen, so
        # that what is recorded as shown follows it.
        self.mail_language = (list(hub.settings.languages) or ["en"])[0]

    def _asks_for_marketing(self, purpose: Purpose) -> bool:
        """Whether a mail asking for consent to ``purpose`` is itself direct marketing by e-mail
        (ICO, Direct marketing guidance; PECR reg. 22; docs/policy.md rule 6): so it is for a
        purpose serving direct marketing, profiling for it included (the answer asked for leads
        to marketing), unless the configuration says the ePrivacy rules do not reach the purpose
        (``eprivacy: false``: B2B marketing to corporate subscribers). A service notice, or any
        other purpose, is asked for as before."""
        configured = next(p for p in self.hub.config.settings.purposes if p.key == purpose.key)
        return serves_direct_marketing(purpose) and configured.eprivacy is not False

    def _pace(self, sent: int) -> None:
        if sent:
            self.sleep(60.0 / self.hub.settings.mails_per_minute)

    def request_consent(
        self, purpose_key: str, *, limit: int | None = None, dry_run: bool = False
    ) -> Outreach:
        """Asks everyone for whom ``purpose_key`` (consent-based) applies and nothing is on record."""
        purpose = self.ledger.purposes.get(purpose_key)
        if purpose is None:
            raise InvalidInput(
                f"unknown purpose {purpose_key!r}: configured are {', '.join(self.ledger.purposes)}"
            )
        if purpose.default_basis is not LawfulBasis.CONSENT:
            raise InvalidInput(f"purpose {purpose_key!r} is not based on consent: there is nothing to ask")
        notice = current(self.ledger, purpose.key, self.mail_language)
        if notice is None:
            raise InvalidInput(
                f"purpose {purpose_key!r} has no notice to show "
                f"(consentsync notice add {purpose_key} FILE --version VERSION)"
            )
        shown_in = self._shown_in(notice)
        marketing = self._asks_for_marketing(purpose)
        purposes = self.ledger.purposes
        now = self.ledger.clock()
        wanted: list[tuple[int, str, str, str]] = []
        no_ground = 0
        with self.ledger.engine.connect() as conn:
            busy = _open_confirmations(conn, now)
            for chunk in _people(conn):
                states = self.ledger.effective_states_in(conn, [person[0] for person in chunk])
                for subject_id, uid, email in chunk:
                    for channel in purpose.channels:
                        state = states[subject_id][(purpose.key, channel)]
                        # Only "nothing on record": a refusal, withdrawal, objection, erasure or
                        # restriction is decided by another rule and is never asked again.
                        if not _asked(state) or (subject_id, purpose.key, channel) in busy:
                            continue
                        if marketing and not may_email_marketing(states[subject_id], purposes):
                            no_ground += 1  # counted by reason, never named
                            continue
                        wanted.append((subject_id, uid, email, channel))
        if limit is not None:
            wanted = wanted[:limit]
        if no_ground:
            log.info(
                "hub.requests_left_out", purpose=purpose.key, reason=NO_MARKETING_GROUND, count=no_ground
            )
        if dry_run:
            return Outreach("request", 0, 0, len(wanted), no_ground=no_ground)
        sent = failed = unmailable = erased = changed = 0
        for subject_id, uid, _listed, channel in wanted:
            email, gone_now = self._address_now(uid)
            if gone_now:
                erased += 1
                continue
            if email is None or not self._mailable(uid, email):
                unmailable += 1
                continue
            token = bound(self.ledger, secrets.token_urlsafe(32), email)
            # The link is stored before the mail goes (it must work once the mail arrives), the
            # request recorded once the mail went: a mail that could not go asked nobody, and the
            # person stays among those asked by the next run. Stopped between the two, the open
            # link keeps the person from a second mail until it lapses; then they are asked again.
            with self.ledger.engine.begin() as conn:
                self._open(conn, "request", subject_id, purpose.key, channel, notice.version, shown_in, token)
            self._pace(sent + failed)
            # The list was made at the start: the person may have been restricted, withdrawn or
            # objected since (the run's mails are paced over minutes). Asked only if still so.
            states = self._states_now(subject_id)
            state = states.get((purpose.key, channel)) if states is not None else None
            gone = self._no_longer_due(uid, state, _asked)
            if gone is None and marketing and not may_email_marketing(states or {}, purposes):
                # The consent (or soft opt-in) that let us e-mail them ended meanwhile.
                log.info("hub.mail_skipped", subject=uid, reason=NO_MARKETING_GROUND)
                self._unsent(token)
                no_ground += 1
                continue
            if gone is not None:
                self._unsent(token)
                erased += gone is Mailed.ERASED
                changed += gone is not Mailed.ERASED
                continue
            mailed = self.hub.send_confirmation(
                PendingMail(email, uid, purpose.key, channel, token, self.mail_language), kind="request"
            )
            if mailed is not Mailed.SENT:
                # Not asked: nothing is recorded (an erased person gets no "requested" either).
                self._unsent(token)
                failed += mailed is Mailed.FAILED
                erased += mailed is Mailed.ERASED
                continue
            sent += 1
            evidence = Evidence.witnessed(
                self.ledger.clock(),
                purpose=purpose.key,
                channel=channel,
                status=ConsentStatus.REQUESTED,
                basis=LawfulBasis.CONSENT,
                source=REQUEST_SOURCE,
                origin=Origin.SYSTEM,
                actor="consentsync",
                notice_version=notice.version,
                notice_language=shown_in,
            )
            with self.ledger.engine.begin() as conn:
                self.ledger.record_in(conn, [RecordRequest(Identity(subject_id=subject_id), evidence)])
        log.info(
            "hub.requests_sent",
            purpose=purpose.key,
            sent=sent,
            failed=failed,
            unmailable=unmailable,
            erased=erased,
            changed=changed,
            no_ground=no_ground,
        )
        return Outreach("request", sent, failed, len(wanted), unmailable, erased, changed, no_ground)

    def renew(self, *, dry_run: bool = False) -> Outreach:
        """Mails a renewal link for every granted consent that expires within its purpose's
        ``renewal_days_before`` and may still be used (not suppressed by any rule)."""
        windows = {
            p.key: p.renewal_days_before
            for p in self.hub.config.settings.purposes
            if p.renewal_days_before and p.validity_days
        }
        if not windows:
            return Outreach("renewal", 0, 0, 0)
        now = self.ledger.clock()
        wanted: list[tuple[int, str, str, str, str]] = []
        with self.ledger.engine.connect() as conn:
            busy = _open_confirmations(conn, now)
            horizon = now + timedelta(days=max(windows.values()))
            rows = conn.execute(
                select(consent_states.c.subject_id, consent_states.c.purpose, consent_states.c.channel)
                .where(
                    consent_states.c.status == ConsentStatus.GRANTED.value,
                    consent_states.c.purpose.in_(sorted(windows)),
                    consent_states.c.expires_at > now,
                    consent_states.c.expires_at <= horizon,
                )
                .order_by(consent_states.c.subject_id)
            ).all()
            ids = sorted({row.subject_id for row in rows})
            states = self.ledger.effective_states_in(conn, ids) if ids else {}
            people = {
                row.subject_id: (row.uid, row.value)
                for row in conn.execute(
                    select(subjects.c.id.label("subject_id"), subjects.c.uid, latest_address().label("value"))
                    .where(subjects.c.id.in_(ids), latest_address().is_not(None))
                )
            } if ids else {}  # fmt: skip
        for row in rows:
            state = states[row.subject_id][(row.purpose, row.channel)]
            key = (row.subject_id, row.purpose, row.channel)
            if (
                _renewal_due(state, now, windows[row.purpose])
                and row.subject_id in people
                and key not in busy
            ):
                uid, email = people[row.subject_id]
                wanted.append((row.subject_id, uid, email, row.purpose, row.channel))
        if dry_run:
            return Outreach("renewal", 0, 0, len(wanted))
        sent = failed = unmailable = erased = changed = 0
        for subject_id, uid, _listed, purpose_key, channel in wanted:
            email, gone_now = self._address_now(uid)
            if gone_now:
                erased += 1
                continue
            if email is None or not self._mailable(uid, email):
                unmailable += 1
                continue
            token = bound(self.ledger, secrets.token_urlsafe(32), email)
            notice = current(self.ledger, purpose_key, self.mail_language)
            # Read before the write transaction: on SQLite a second connection waits on its lock.
            shown_in = self._shown_in(notice)
            with self.ledger.engine.begin() as conn:
                self._open(
                    conn,
                    "renewal",
                    subject_id,
                    purpose_key,
                    channel,
                    notice.version if notice else None,
                    shown_in,
                    token,
                )
            self._pace(sent + failed)
            # Read again, as for a request: one who withdrew, objected or was restricted while
            # the run went on is not asked to renew (nor one who renewed meanwhile).
            days = windows[purpose_key]
            still_due = partial(_renewal_due, now=self.ledger.clock(), days=days)
            gone = self._no_longer_due(uid, self._state_now(subject_id, purpose_key, channel), still_due)
            if gone is not None:
                self._unsent(token)
                erased += gone is Mailed.ERASED
                changed += gone is not Mailed.ERASED
                continue
            mailed = self.hub.send_confirmation(
                PendingMail(email, uid, purpose_key, channel, token, self.mail_language), kind="renewal"
            )
            sent += mailed is Mailed.SENT
            failed += mailed is Mailed.FAILED
            erased += mailed is Mailed.ERASED
            if mailed is not Mailed.SENT:
                self._unsent(token)  # due again at the next upkeep, not once the link lapsed
        log.info(
            "hub.renewals_sent",
            sent=sent,
            failed=failed,
            unmailable=unmailable,
            erased=erased,
            changed=changed,
        )
        return Outreach("renewal", sent, failed, len(wanted), unmailable, erased, changed)

    def _state_now(self, subject_id: int, purpose: str, channel: str) -> EffectiveState | None:
        """The person's state for ``purpose`` on ``channel`` as of now (None: they are gone)."""
        states = self._states_now(subject_id)
        return states.get((purpose, channel)) if states is not None else None

    def _states_now(self, subject_id: int) -> dict[tuple[str, str], EffectiveState] | None:
        """Each of the person's states as of now, by (purpose, channel) (None: they are gone)."""
        with reading(self.ledger.engine) as conn:
            states = self.ledger.effective_states_in(conn, [subject_id])
        return states.get(subject_id)

    @staticmethod
    def _no_longer_due(
        uid: str, state: EffectiveState | None, due: Callable[[EffectiveState], bool]
    ) -> Mailed | None:
        """None if the mail may still go; else why not, logged by uid and rule only:
        ``Mailed.ERASED`` (the person or their address was erased meanwhile), or
        ``Mailed.CHANGED`` (restricted, a withdrawal, refusal, objection or answer meanwhile)."""
        if state is not None and due(state):
            return None
        if state is None or state.rule == Rule.ERASURE:
            log.info("hub.mail_skipped", subject=uid, reason="erased")
            return Mailed.ERASED
        log.info("hub.mail_skipped", subject=uid, reason="changed", rule=state.rule)
        return Mailed.CHANGED

    def _address_now(self, uid: str) -> tuple[str | None, bool]:
        """Where the person's mail goes, read right before it (``Hub.address_now``): the list's
        latest address may be one a CRM record of theirs has left since (or before: a record
        corrected back from a mistyped one), and a mailbox they left may be anyone's. Its link
        is bound to it (``links.bound``); and whether they were erased meanwhile. None and not
        erased: they hold none now (every record of theirs shows another's address), and are left
        out as unmailable."""
        email = self.hub.address_now(uid)
        if email is not None:
            return email, False
        if self.hub._erased(uid):
            log.info("hub.mail_skipped", subject=uid, reason="erased")
            return None, True
        log.warning("hub.not_mailable", subject=uid, reason="no_address_held")
        return None, False

    @staticmethod
    def _mailable(uid: str, email: str) -> bool:
        """An address a mail can go to as itself; else the person is left out (logged by uid),
        not counted as a failure: no retry makes it mailable, and every run would fail on it."""
        if mailable(email):
            return True
        log.warning("hub.not_mailable", subject=uid, reason=NOT_ONE_ADDRESS)
        return False

    def _shown_in(self, notice: Notice | None) -> str | None:
        """The language of the text of ``notice``'s version the mail's link shows: the one the
        confirmation page opened in the mail's language shows, and confirming there records
        (``notices.text_shown_on_page``: the version's text in that language, else its first,
        the text ``notice_texts.text_shown`` names for an event recording none). Recorded with
        the request and kept with its link (migration 0021), so that the request's proof and the
        grant's name one text. None for a renewal whose purpose has no notice."""
        if notice is None:
            return None
        shown = text_shown_on_page(self.ledger, notice.purpose, notice.version, self.mail_language)
        return shown.language if shown is not None else None

    def _unsent(self, token: str) -> None:
        """Takes back the link of a mail that could not go: nobody holds it, and an open link
        would keep the person from being asked until it lapsed."""
        with self.ledger.engine.begin() as conn:
            conn.execute(delete(confirmations).where(confirmations.c.token_hash == token_digest(token)))

    def _open(
        self,
        conn: Any,
        kind: str,
        subject_id: int,
        purpose: str,
        channel: str,
        notice: str | None,
        notice_language: str | None,
        token: str,
    ) -> None:
        now = self.ledger.clock()
        # Its terms bound in the chain (``confirmation_terms``): an edited row opens nothing.
        open_confirmation(
            conn,
            now,
            token_hash=token_digest(token),
            kind=kind,
            subject_id=subject_id,
            purpose=purpose,
            channel=channel,
            notice_version=notice,
            notice_language=notice_language,
            source=REQUEST_SOURCE,
            expires_at=now + timedelta(days=self.hub.settings.confirmation_days),
            actor="consentsync",
        )
