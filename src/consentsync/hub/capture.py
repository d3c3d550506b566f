"""What the hub does with a capture: checks it against the key's scope and the notice registry,
records it in the ledger (once, however often it is retried), starts a double opt-in where the
purpose asks for one, and answers whether a person may be contacted.

Pure of HTTP: ``api`` turns requests into these calls and their errors into statuses.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode

import orjson
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, and_, delete, exists, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from consentsync import audit
from consentsync.config import Config
from consentsync.domain import (
    ERASURE_REASON_MAX,
    ConsentStatus,
    EffectiveState,
    Evidence,
    InvalidInput,
    LawfulBasis,
    ObjectionStatus,
    Origin,
    as_read,
    as_utc,
    check_moment,
    check_reason,
    clock_lag_of,
    email_forms,
    iso,
    lookup_email,
    normalise_email,
)
from consentsync.hub import receipts
from consentsync.hub.confirmation_terms import disowned, open_confirmation, refuse_unless_bound
from consentsync.hub.i18n import channel_labels, translator
from consentsync.hub.keys import ApiKey
from consentsync.hub.links import LinkRefused, bound, holds_now, mailed_tag, make_token, sent_elsewhere
from consentsync.hub.mail import NOT_ONE_ADDRESS, Mail, Mailer, MailFailed, mailable
from consentsync.hub.notices import (
    check_grant_notice,
    check_language,
    check_shown,
    in_effect,
    languages_in_effect,
    text_shown_on_page,
)
from consentsync.hub.receipts import RECEIPTED
from consentsync.ledger.engine import reading
from consentsync.ledger.identity import Identity, SubjectResolver, derived_key, holding
from consentsync.ledger.schema import (
    capture_requests,
    confirmations,
    consent_events,
    objections,
    purposes,
    subject_identifiers,
    subjects,
)
from consentsync.ledger.service import (
    ERASED_REQUEST,
    ERASED_REQUEST_STATUS,
    HASHED_IDEMPOTENCY_KEY,
    Ledger,
    RecordRequest,
    capture_request_hashers,
    held_back_people,
    lifts_erasure,
    unliftable_erased_grant,
)
from consentsync.notice_texts import language_in_effect
from consentsync.reconcile import TO_THE_SECONDS_END, Rule, no_counts_at, no_counts_from

log = structlog.get_logger("consentsync.hub")

# What a capture may say a person did. "requested" is the hub's own (double opt-in pending).
CAPTURED_STATUSES = (ConsentStatus.GRANTED, ConsentStatus.WITHDRAWN, ConsentStatus.REFUSED)
BATCH_MAX = 500
GPC_EVIDENCE = "Sec-GPC: 1"
# The label as a reader takes it, whatever its case, width or spacing (``claims_the_gpc_signal``).
_GPC_EVIDENCE_FOLDED = "sec-gpc:1"
# A client's evidence_ref reading as GPC_EVIDENCE: the label the hub writes on the signal's own
# opt-outs only, which the preference page lets anyone holding the link grant over at once
# (preferences.no_is_only_gpc). A grant bearing it is refused; a no is recorded without it.
GPC_LABEL_RESERVED = (
    f"{GPC_EVIDENCE!r} is reserved for the Global Privacy Control opt-outs the hub records itself: "
    'send the signal as the Sec-GPC: 1 header or "gpc": true, and name here where the proof is kept'
)
# A capture's answer when it carried a GPC signal and ``hub.gpc_purposes`` names no purpose: the
# signal is a valid opt-out (CCPA regulations § 7025) and must not vanish unsaid; a field, not a
# refusal (the rest of the capture stands, and the person's signal is no client's mistake).
GPC_HONOURED_NOWHERE: dict[str, Any] = {
    "recorded": False,
    "code": "gpc_purposes_empty",
    "detail": "hub.gpc_purposes names no purpose: the Global Privacy Control signal opted the "
    "person out of nothing",
}
# The source of a consent the person confirmed through a mailed link (a trusted source by
# default: policy.trusted_sources).
DOUBLE_OPT_IN_SOURCE = "double_opt_in"
# Confirmations that grant consent when their link is followed (an erasure's is another matter).
CONSENT_CONFIRMATIONS = ("double_opt_in", "request", "renewal")
# A row that only marks when a new preference link was mailed (preferences.mail_new_link): no
# link opens it, and it is nothing to lapse.
NEW_LINK_KIND = "new_link"
# What a person says no with: recorded after a link was mailed, it voids the link (Art. 7(3)).
_SAYING_NO = (ConsentStatus.WITHDRAWN.value, ConsentStatus.REFUSED.value)
ERASED_LINK = "this link opens no record any more: the record was erased"
EXPIRED_LINK = "this confirmation link has expired: please sign up again"
# A link the person's own later no voided: not "expired, sign up again" to someone who said no.
SAID_NO_LINK = "this confirmation link is no longer in use: you said no after we sent it"
# The confirmations a person may say no to on the page their link opens (a renewal ends by
# itself when it is not confirmed).
DECLINABLE = ("double_opt_in", "request")
# A double opt-in link whose sign-up the person disowned ("No, I did not ask for this") while
# nothing waited for it: their consent to the purpose was in force (the sign-up recorded
# nothing, ``Hub._consented``), so no refusal was recorded; the link opens nothing any more,
# and still counts as a mail that went (``_asked_lately``).
DISOWNED_KIND = "disowned"
DISOWNED_LINK = "this confirmation link is no longer in use: you said you did not ask for it"
# A double opt-in mails the same address about the same purpose and channel at most this often
# while its link is open (and not voided by the person's no): a person who lost the mail gets
# another after this short wait, a form sent twice in a row mails once.
RESEND_INTERVAL = timedelta(minutes=10)
# And at most CONFIRMATION_MAILS links that went to one person for one purpose and channel within
# CONFIRMATION_WINDOW, whatever became of them: a bot re-submitting someone's address just past
# RESEND_INTERVAL, all day long, would otherwise mail ~140 a day. Enough for a person who lost a
# mail twice; a mail that did not go is not counted (nobody got it).
CONFIRMATION_MAILS = 3
CONFIRMATION_WINDOW = timedelta(hours=24)
# A mailed link's token is refused longer than this before any work (people.py): longer than any
# we make (a JWT of a uid, 43 characters, or 43 and a sealed address: ``_hold_back`` sees to it).
TOKEN_MAX = 1024
# A double opt-in sign-up with an address erased before (docs/hub.md, "A sign-up for an erased
# address"): until the person confirms, the ledger holds no trace of the address but its keyed
# hash. Its link carries it, sealed (AES-GCM under a key derived from the erasure key with this
# label, the link's random part as associated data): the one place it is kept, in the mail that
# went to that mailbox; read back only when that link is followed and confirmed.
ADDRESS_SEAL_LABEL = "consentsync/confirmations/address/v1"
SEAL_MARK = "."  # between a link's random part and the sealed address (token_urlsafe has none)
# The source of what closes such a sign-up when its confirmation's grant goes to whoever came
# back with the address meanwhile (``Hub._close_sign_up``): consentsync's own record, as the
# expiry sweep's (ledger.service.EXPIRY_SOURCE), never a person's word.
SIGN_UP_CLOSED_SOURCE = "consentsync:sign_up_closed"
# Receipts mailed to one person within RECEIPT_WINDOW, at most: whoever holds a preference link
# (or types the address into a form) could otherwise toggle a choice and mail a receipt each
# time. Enough for a person setting several purposes at once; the rest are recorded as ever and
# downloadable from the page, only not mailed.
RECEIPT_MAILS = 5
RECEIPT_WINDOW = timedelta(minutes=10)
# And at most RECEIPT_MAILS_PER_DAY receipts within RECEIPT_DAY, as a double opt-in's links are
# capped a day (CONFIRMATION_MAILS): whoever types a stranger's address into an opt-out form just
# often enough to stay under RECEIPT_MAILS (every 2 minutes) would otherwise mail them 720 a day,
# each with a link to their preference page. Counted across keys and pages, per person: each
# earlier choice whose receipt RECEIPT_MAILS let through counts, whether its mail went or not.
# Twice a burst of RECEIPT_MAILS: a person setting their choices twice in a day gets each receipt.
RECEIPT_MAILS_PER_DAY = 10
RECEIPT_DAY = timedelta(hours=24)
# How long an Idempotency-Key is kept with its answer (as Stripe keeps its keys): a retry within
# it gets the first answer, one after it is a new request, and the record is deleted. Records
# past it go at the hub's upkeep (``Hub.forget_old_requests``: the daemon's, and at most every
# REQUESTS_UPKEEP in the capture path of each process), and are never replayed meanwhile.
IDEMPOTENCY_WINDOW = timedelta(hours=24)
REQUESTS_UPKEEP = timedelta(hours=1)
# The ledger's events whose receipt the hub mails (what RECEIPT_MAILS counts): a person's grant,
# withdrawal or refusal captured through an API key, on the preference page ("preference_center",
# preferences.SOURCE) or on a confirmation link; not a GPC opt-out, which has no receipt.
_RECEIPTED_CHOICE = (
    consent_events.c.status.in_(RECEIPTED),
    consent_events.c.origin == Origin.CAPTURE.value,
    or_(consent_events.c.evidence_ref.is_(None), consent_events.c.evidence_ref != GPC_EVIDENCE),
    or_(
        consent_events.c.source.in_(("preference_center", DOUBLE_OPT_IN_SOURCE)),
        consent_events.c.actor.like("apikey:%"),
    ),
)


class Mailed(StrEnum):
    """What became of a confirmation mail (``Hub.send_confirmation``)."""

    SENT = "sent"
    FAILED = "failed"  # the mail server refused it or could not be reached: worth a retry
    # Not sent: the person was erased after the mail was decided on (the mail goes after the
    # capture's answer; an outreach run paces its mails over minutes). Not a failure: nothing
    # is to be retried, nothing more goes to an erased address (Art. 17).
    ERASED = "erased"
    # Not sent (an outreach run's request or renewal): since the run listed the person, they
    # were restricted (Art. 18), withdrew, refused or objected, or answered otherwise. Not a
    # failure either: asking them now would ignore what they just said.
    CHANGED = "changed"


class Forbidden(PermissionError):
    """The key may not do this (its actions or purposes)."""


class Conflict(ValueError):
    """An Idempotency-Key reused with another request."""


class ErasedRequest(ValueError):
    """An Idempotency-Key whose request recorded a person erased since (answered 410)."""


class SaidNoSince(Conflict):
    """An Idempotency-Key's request sent again unchanged past its window, after its person said
    no to what it granted (answered 409, as a key reused is): run again, it would reverse that no
    (``Hub._kept_answer``)."""


class ErasedAddress(ValueError):
    """A grant for an erased address nobody came back with, from a capture that cannot lift the
    erasure's suppression (``Hub._refuse_erased``): refused, nothing recorded, nothing mailed."""


@dataclass(frozen=True, slots=True)
class ConsentCapture:
    """One consent statement as a capture source sends it (already parsed; checked here)."""

    email: str
    purpose: str
    status: str
    channel: str = "email"
    basis: str | None = None
    event_time: datetime | None = None
    notice_version: str | None = None
    evidence_ref: str | None = None
    language: str = "en"  # of the notice shown, and of the mails that follow


@dataclass(slots=True)
class PendingMail:
    """A confirmation to mail once the capture is committed."""

    email: str
    uid: str
    purpose: str
    channel: str
    token: str
    language: str = "en"


@dataclass(frozen=True, slots=True)
class PendingReceipt:
    """A receipt to mail once the capture is committed."""

    email: str
    uid: str
    record_id: str
    language: str = "en"


@dataclass(slots=True)
class CaptureResult:
    status_code: int
    body: dict[str, Any]
    replayed: bool = False
    mails: list[PendingMail] = field(default_factory=list)
    receipts: list[PendingReceipt] = field(default_factory=list)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def claims_the_gpc_signal(evidence_ref: str | None) -> bool:
    """Whether a client's ``evidence_ref`` reads as ``GPC_EVIDENCE`` in any case, width or spacing
    ("sec-gpc:1", a fullwidth colon): a reader of the evidence takes each for the signal's."""
    if evidence_ref is None:
        return False
    return "".join(unicodedata.normalize("NFKC", evidence_ref).casefold().split()) == _GPC_EVIDENCE_FOLDED


def request_digest(payload: Any) -> str:
    """The identity of a request's content, to refuse an Idempotency-Key reused for another.
    Stored only as its keyed hash (``Hub._stored_request``): the body holds the address."""
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Hub:
    """The capture service over one ledger and configuration."""

    def __init__(self, config: Config, ledger: Ledger, mailer: Mailer | None = None) -> None:
        self.config = config
        self.ledger = ledger
        self.settings = config.settings.hub
        self.mailer = mailer or Mailer(self.settings.smtp, sender_name=self.settings.branding.name)
        self._double_opt_in = {p.key for p in config.settings.purposes if p.double_opt_in}
        # When this process last forgot the idempotency records past their window.
        self._requests_upkept_at: datetime | None = None

    def url(self, path: str) -> str:
        return self.settings.public_url.rstrip("/") + path

    def warn_if_gpc_honoured_nowhere(self) -> None:
        """Said once as the hub's pages and API start: with ``hub.gpc_purposes`` empty a Global
        Privacy Control signal, a valid opt-out (CCPA regulations § 7025), records nothing."""
        if not self.settings.gpc_purposes:
            log.warning(
                "hub.gpc_honoured_nowhere",
                setting="hub.gpc_purposes",
                detail="empty: a Sec-GPC: 1 signal opts people out of nothing (docs/hub.md, GPC)",
            )

    def preference_link(self, uid: str, language: str | None = None, *, to: str | None = None) -> str:
        """A person's signed link to their preference page; with ``language``, the page opens
        in it (the language of the mail it is sent in), whatever the browser prefers. Bound to
        ``to``, the address it is mailed to (``links.sent_elsewhere``); by default the one the
        person holds now."""
        to = to or self.address_now(uid)
        token = make_token(self.ledger, uid, days=self.settings.link_days, to=to)
        return self.url("/p/preferences/" + token) + _in_language(language)

    def address_now(self, uid: str) -> str | None:
        """The address a mail with a link of person ``uid``'s goes to (``links.holds_now``): the
        latest they took that no CRM record of theirs has since left for another. None once
        erased, or while they hold none (nothing is mailed then)."""
        with reading(self.ledger.engine) as conn:
            subject_id = conn.execute(select(subjects.c.id).where(subjects.c.uid == uid)).scalar()
            return None if subject_id is None else holds_now(conn, self.ledger, int(subject_id))

    def link_to(self, path: str, token: str, language: str | None = None) -> str:
        """A mailed link (``/p/confirm/``, ``/p/erase/``, ...) opening in the mail's language."""
        return self.url(path + token) + _in_language(language)

    # -- double opt-in -------------------------------------------------------------------------

    def send_confirmation(self, pending: PendingMail, kind: str = "double_opt_in") -> Mailed:
        """Mails a confirmation link: a double opt-in, a consent request or a renewal.
        ``Mailed.FAILED`` (logged, never raised) if the mail could not go: a double opt-in stays
        open until it lapses; the outreach (hub/outreach.py) takes back an unsent request or
        renewal. ``Mailed.ERASED``: not sent, the person was erased since it was decided on."""
        if self._erased(pending.uid):
            log.info("hub.mail_skipped", subject=pending.uid, kind=kind, reason="erased")
            return Mailed.ERASED
        _ = translator(pending.language)
        purpose = self.ledger.purposes[pending.purpose]
        # The purpose and the channel in the person's words, as the page names them.
        values = {
            "purpose": _(purpose.name),
            "channel": channel_labels(_).get(pending.channel, pending.channel),
            "days": self.settings.confirmation_days,
            "link": self.link_to("/p/confirm/", pending.token, pending.language),
        }
        # A sign-up with an erased address, held back (``_hold_back``): its person holds no
        # address until this link is confirmed, and may never (whoever came back with the address
        # meanwhile takes the grant: ``_close_sign_up``), so a link to their preference page
        # would open "the record was erased". None is offered; the receipt of the confirmation
        # carries the link of whoever holds the address then.
        held = kind == "double_opt_in" and SEAL_MARK in pending.token
        if not held:
            values["preferences"] = self.preference_link(pending.uid, pending.language, to=pending.email)
        if kind == "request":
            subject = _("May we send you {purpose}?", **values)
            text = _(
                "We would like to send you {purpose} by {channel}. If you agree, open this link within "
                "{days} days and confirm:\n\n{link}\n\nIf you do not, ignore this mail: nothing is "
                "sent to you.\n\nAll your choices, at any time: {preferences}\n",
                **values,
            )
        elif kind == "renewal":
            subject = _("Renew your consent: {purpose}", **values)
            text = _(
                "Your consent to receive {purpose} by {channel} runs out soon. To keep receiving it, "
                "open this link within {days} days and confirm:\n\n{link}\n\nIf you do not, it "
                "ends and we stop.\n\nAll your choices, at any time: {preferences}\n",
                **values,
            )
        elif held:
            subject = _("Please confirm: {purpose}", **values)
            text = _(
                "You asked to receive {purpose} by {channel}. Please confirm by opening this link "
                "within {days} days:\n\n{link}\n\nIf it was not you, ignore this mail: nothing changes "
                "until the link is followed.\n",
                **values,
            )
        else:
            subject = _("Please confirm: {purpose}", **values)
            text = _(
                "You asked to receive {purpose} by {channel}. Please confirm by opening this link "
                "within {days} days:\n\n{link}\n\nIf it was not you, ignore this mail: nothing changes "
                "until the link is followed.\n\nAll your choices, at any time: {preferences}\n",
                **values,
            )
        try:
            self.mailer.send(Mail(pending.email, subject, text))
        except MailFailed as error:
            log.warning("hub.mail_failed", subject=pending.uid, kind=kind, error=str(error))
            if kind == "double_opt_in":
                # Nobody has this link: closed, so that the same sign-up sent again mails one
                # (RESEND_INTERVAL counts only links that went). The consent stays "requested".
                with self.ledger.engine.begin() as conn:
                    conn.execute(
                        update(confirmations)
                        .where(
                            confirmations.c.token_hash == token_digest(pending.token),
                            confirmations.c.confirmed_at.is_(None),
                        )
                        .values(lapsed_at=self.ledger.clock())
                    )
            return Mailed.FAILED
        log.info("hub.mail_sent", subject=pending.uid, kind=kind, purpose=pending.purpose)
        return Mailed.SENT

    def _erased(self, uid: str) -> bool:
        """Whether person ``uid`` was erased (or is gone): read right before a mail goes."""
        with reading(self.ledger.engine) as conn:
            row = conn.execute(select(subjects.c.erased_at).where(subjects.c.uid == uid)).first()
        return row is None or row.erased_at is not None

    def receipt(self, uid: str, record_id: str, language: str | None = None) -> dict[str, Any]:
        """The consent receipt of one record of person ``uid`` in ``language``, one of
        hub.languages (default: the first); raises ``NotFound``, or ``InvalidInput`` for a
        language not configured (a receipt states the language it is in)."""
        offered = list(self.settings.languages) or ["en"]
        language = language or offered[0]
        if language not in offered:
            raise InvalidInput(f"language: {language[:16]!r} is not one of {', '.join(offered)}")
        return receipts.find(self.ledger, self.settings.branding, uid, record_id, language)

    def _receipt_allowed(self, uid: str, record_id: str) -> bool | None:
        """Whether the receipt of ``record_id`` may be mailed: fewer than ``RECEIPT_MAILS`` of the
        person's choices that are receipted were recorded within ``RECEIPT_WINDOW`` before it, and
        fewer than ``RECEIPT_MAILS_PER_DAY`` receipts could go within ``RECEIPT_DAY`` before it.
        None: no such record, its person was erased since it was recorded (the mail goes after
        the answer: an address erased meanwhile is mailed nothing more, Art. 17), or its person
        holds no address (a no said for an erased address: the ledger keeps it as a keyed hash
        only, and nothing goes to it). Counted from the ledger, not in the serving process: a
        count per process let whoever sends the same toggles to several web processes (or after a
        restart) mail that many times the cap."""
        with reading(self.ledger.engine) as conn:
            event = conn.execute(
                select(
                    consent_events.c.id,
                    consent_events.c.subject_id,
                    consent_events.c.recorded_at,
                    subjects.c.erased_at,
                )
                .join(subjects, subjects.c.id == consent_events.c.subject_id)
                .where(subjects.c.uid == uid, consent_events.c.fingerprint == record_id)
            ).first()
            if event is None or event.erased_at is not None:
                return None
            holds = conn.execute(
                select(subject_identifiers.c.id)
                .where(
                    subject_identifiers.c.subject_id == event.subject_id,
                    subject_identifiers.c.kind == "email",
                )
                .limit(1)
            ).first()
            if holds is None:
                return None
            choices = (
                consent_events.c.subject_id == event.subject_id,
                consent_events.c.id < event.id,
                *_RECEIPTED_CHOICE,
            )
            earlier = conn.execute(
                select(func.count())
                .select_from(consent_events)
                .where(*choices, consent_events.c.recorded_at > event.recorded_at - RECEIPT_WINDOW)
            ).scalar_one()
            if earlier >= RECEIPT_MAILS:
                return False
            today = conn.execute(
                select(func.count())
                .select_from(consent_events)
                .where(*choices, consent_events.c.recorded_at > event.recorded_at - RECEIPT_DAY)
            ).scalar_one()
            if today < RECEIPT_MAILS_PER_DAY:
                return True  # fewer choices than the cap: fewer receipts too, read no further
            # Each choice of the day (and what came RECEIPT_WINDOW before it, to judge it).
            times = list(
                conn.execute(
                    select(consent_events.c.recorded_at)
                    .where(
                        *choices,
                        consent_events.c.recorded_at > event.recorded_at - RECEIPT_DAY - RECEIPT_WINDOW,
                    )
                    .order_by(consent_events.c.recorded_at, consent_events.c.id)
                ).scalars()
            )
        return _receipts_let_through(times, event.recorded_at - RECEIPT_DAY) < RECEIPT_MAILS_PER_DAY

    def mail_receipt(self, pending: PendingReceipt) -> bool:
        """Mails a consent receipt (JSON attached); False (logged, never raised) if it could not go,
        if ``RECEIPT_MAILS`` of the person's choices were recorded within ``RECEIPT_WINDOW`` before
        this one (the record stands and its receipt stays downloadable from the preference page),
        or if the person was erased meanwhile."""
        allowed = self._receipt_allowed(pending.uid, pending.record_id)
        if not allowed:
            reason = "rate" if allowed is False else "gone"
            log.info("hub.receipt_not_mailed", subject=pending.uid, record=pending.record_id, reason=reason)
            return False
        _ = translator(pending.language)
        document = self.receipt(pending.uid, pending.record_id, pending.language)
        purpose = document["purposes"][0]
        state = document["events"][0]["event_state"]
        # The purpose and the channel in the person's words (the receipt keeps the configured ones).
        name = _(purpose["purpose"])
        text = _(
            "This is your receipt: {purpose} by {channel}, {state} at {time}.\n\nThe receipt is "
            "attached (JSON, ISO/IEC TS 27560). All your choices, at any time: {preferences}\n",
            purpose=name,
            channel=channel_labels(_).get(purpose["channel"], purpose["channel"]),
            state=_(state),
            time=document["events"][0]["event_time"],
            preferences=self.preference_link(pending.uid, pending.language, to=pending.email),
        )
        mail = Mail(
            pending.email,
            _("Your consent receipt: {purpose}", purpose=name),
            text,
            attachment=receipts.as_attachment(document),
        )
        try:
            self.mailer.send(mail)
        except MailFailed as error:
            log.warning("hub.mail_failed", subject=pending.uid, kind="receipt", error=str(error))
            return False
        log.info("hub.mail_sent", subject=pending.uid, kind="receipt", record=pending.record_id)
        return True

    def pending_confirmation(self, token: str) -> dict[str, Any]:
        """What a confirmation link asks the person to confirm (raises ``LinkRefused``)."""
        row = self._confirmation(token)
        with reading(self.ledger.engine) as conn:
            # Whether "No, I did not ask for this" would refuse (a sign-up waiting) or only void
            # the link (a consent in force stays: ``decline``): the page says which.
            waiting = (
                row.kind != "double_opt_in"
                or row.confirmed_at is not None
                or _waiting(self.ledger, conn, row)
            )
        return {
            "kind": row.kind,
            "declinable": row.kind in DECLINABLE,
            "waiting": waiting,
            "purpose": row.purpose,
            "channel": row.channel,
            # The notice the grant will name: the page shows it, so that what is recorded as
            # shown was shown (a consent request or renewal never showed it anywhere else).
            "notice_version": row.notice_version,
            "confirmed_at": iso(row.confirmed_at) if row.confirmed_at else None,
        }

    def _confirmation(self, token: str) -> Any:
        with self.ledger.engine.connect() as conn:
            row = conn.execute(
                select(confirmations).where(
                    confirmations.c.token_hash == token_digest(token),
                    confirmations.c.kind.in_((*CONSENT_CONFIRMATIONS, DISOWNED_KIND)),
                )
            ).one_or_none()
            if row is None:
                raise LinkRefused("this confirmation link is not valid: it may have been cut or changed")
            if row.kind == DISOWNED_KIND:
                raise LinkRefused(DISOWNED_LINK)
            refuse_unless_bound(conn, row)
            # Mailed to an address its person no longer holds: whoever has that mailbox now may
            # be someone else, and neither confirms nor declines for them (a sealed token's
            # person holds no address yet: the one it carries is the one to prove).
            if SEAL_MARK not in token and sent_elsewhere(
                conn, self.ledger, row.subject_id, mailed_tag(token)
            ):
                raise LinkRefused(EXPIRED_LINK)
            _refuse_if_void(conn, row)
        if row.confirmed_at is None and (row.lapsed_at is not None or row.expires_at <= self.ledger.clock()):
            raise LinkRefused(EXPIRED_LINK)
        return row

    def _page_text_language(self, row: Any, language: str) -> str | None:
        """The language of the notice text the confirmation page showed in ``language`` (the
        version's text in it, else its first: ``notices.text_shown_on_page``), recorded with
        what the person answers there; None where it names no version."""
        if row.notice_version is None:
            return None
        shown = text_shown_on_page(self.ledger, row.purpose, row.notice_version, language)
        return shown.language if shown is not None else None

    def confirm(self, token: str, language: str = "en") -> dict[str, Any]:
        """The person followed the link and confirmed: the consent is granted, with the
        confirmation time as evidence. A second confirmation changes nothing. The receipt is
        mailed in ``language``, the one the person confirmed in."""
        row = self._confirmation(token)
        if row.confirmed_at is not None:
            return {"purpose": row.purpose, "channel": row.channel, "already": True}
        now = self.ledger.clock()
        evidence = Evidence.witnessed(
            now,
            purpose=row.purpose,
            channel=row.channel,
            status=ConsentStatus.GRANTED,
            basis=LawfulBasis.CONSENT,
            source=DOUBLE_OPT_IN_SOURCE,
            origin=Origin.CAPTURE,
            notice_version=row.notice_version,
            double_opt_in_at=now,
            evidence_ref=f"confirmation:{row.id}",
            notice_language=self._page_text_language(row, language),
        )
        with self.ledger.engine.begin() as conn:
            _refuse_if_void(conn, row)  # a withdrawal or an erasure committed since it was read
            done = conn.execute(
                update(confirmations)
                .where(confirmations.c.id == row.id, confirmations.c.confirmed_at.is_(None))
                .values(confirmed_at=now)
            ).rowcount
            if not done:  # confirmed meanwhile, by the same link followed twice at once
                return {"purpose": row.purpose, "channel": row.channel, "already": True}
            # A sign-up with an erased address: the person proved the mailbox is theirs, the
            # address enters the ledger now (``_hold_back``), before the grant that brings them back.
            person = self._take_address(conn, row, token) if SEAL_MARK in token else row.subject_id
            _stats, outcomes = self.ledger.record_in(
                conn, [RecordRequest(Identity(subject_id=person), evidence)]
            )
            if person != row.subject_id:  # the grant went to the address's holder
                self._close_sign_up(conn, row, outcomes[0].subject_uid, now)
        log.info("hub.confirmed", subject=outcomes[0].subject_uid, purpose=row.purpose)
        if self.settings.mail_receipts:
            email = self.address_now(outcomes[0].subject_uid)
            if email is not None:
                self.mail_receipt(
                    PendingReceipt(email, outcomes[0].subject_uid, evidence.fingerprint(), language)
                )
        return {
            "purpose": row.purpose,
            "channel": row.channel,
            "already": False,
            "subject": outcomes[0].subject_uid,
        }

    def decline(self, token: str, language: str = "en") -> dict[str, Any]:
        """The person followed the link and said no ("it was not me", "no, thank you"): a
        refusal of the purpose and channel, which voids the link (``_refuse_if_void``). A link
        already confirmed records nothing (the preference page withdraws).

        "No, I did not ask for this" on a double opt-in says the sign-up was not the person's,
        not that they end what they gave: when nothing waits for confirmation (their consent
        was in force when the form was sent, so the sign-up recorded nothing; or it is since),
        the link is voided (``DISOWNED_KIND``) and nothing is recorded, ``"recorded": False``.
        Else whoever types a subscriber's address into a form ends their subscription through
        the person's own click on a mail that asked "did you ask for this?"."""
        row = self._confirmation(token)
        if row.kind not in DECLINABLE:
            raise LinkRefused("this confirmation link is not valid: it may have been cut or changed")
        if row.confirmed_at is not None:
            return {"purpose": row.purpose, "channel": row.channel, "already": True}
        now = self.ledger.clock()
        evidence = Evidence.witnessed(
            now,
            purpose=row.purpose,
            channel=row.channel,
            status=ConsentStatus.REFUSED,
            basis=None,
            source=DOUBLE_OPT_IN_SOURCE,
            origin=Origin.CAPTURE,
            notice_version=row.notice_version,
            evidence_ref=f"confirmation:{row.id}",
            notice_language=self._page_text_language(row, language),
        )
        with self.ledger.engine.begin() as conn:
            _refuse_if_void(conn, row)  # a no or an erasure committed since it was read
            # Read in the transaction that records: a consent confirmed meanwhile (the same mail
            # opened twice) is not ended by the no that follows it.
            if row.kind == "double_opt_in" and not _waiting(self.ledger, conn, row):
                changed = conn.execute(
                    update(confirmations)
                    .where(confirmations.c.id == row.id, confirmations.c.confirmed_at.is_(None))
                    .values(kind=DISOWNED_KIND)
                ).rowcount
                uid = conn.execute(select(subjects.c.uid).where(subjects.c.id == row.subject_id)).scalar_one()
                if changed:  # the row's kind is one of its bound terms: the chain says it changed
                    audit.append(conn, [disowned(row, DISOWNED_KIND, uid)], now)
                log.info("hub.disowned", subject=uid, purpose=row.purpose, channel=row.channel)
                return {
                    "purpose": row.purpose,
                    "channel": row.channel,
                    "already": False,
                    "recorded": False,
                    "subject": uid,
                }
            _stats, outcomes = self.ledger.record_in(
                conn, [RecordRequest(Identity(subject_id=row.subject_id), evidence)]
            )
        uid = outcomes[0].subject_uid
        log.info("hub.declined", subject=uid, purpose=row.purpose, kind=row.kind)
        if self.settings.mail_receipts and not outcomes[0].duplicate:
            email = self.address_now(uid)
            if email is not None:
                self.mail_receipt(PendingReceipt(email, uid, evidence.fingerprint(), language))
        return {
            "purpose": row.purpose,
            "channel": row.channel,
            "already": False,
            "recorded": True,
            "subject": uid,
        }

    def lapse_unconfirmed(self) -> int:
        """Marks double opt-ins past their link's expiry as lapsed: the consent stays
        "requested" (no one may be contacted on it), and the link opens nothing. The hub's
        upkeep (the daemon's, ``consentsync hub lapse``): idempotency records past their window
        go too (``forget_old_requests``)."""
        self.forget_old_requests()
        now = self.ledger.clock()
        with self.ledger.engine.begin() as conn:
            return conn.execute(
                update(confirmations)
                .where(
                    confirmations.c.kind != NEW_LINK_KIND,
                    confirmations.c.confirmed_at.is_(None),
                    confirmations.c.lapsed_at.is_(None),
                    confirmations.c.expires_at <= now,
                )
                .values(lapsed_at=now)
            ).rowcount

    # -- consents ------------------------------------------------------------------------------

    def capture(
        self,
        key: ApiKey,
        items: Sequence[ConsentCapture],
        *,
        gpc: bool = False,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> CaptureResult:
        """Records ``items`` (and a GPC opt-out, if signalled) in one transaction. With an
        ``idempotency_key`` the first answer is kept with it and given again on a retry."""
        if not key.may("consents"):
            raise Forbidden(f"API key {key.name!r} may not record consents")
        if not items and not gpc:
            raise InvalidInput("consents: at least one consent (or a GPC signal) is needed")
        if len(items) > BATCH_MAX:
            raise InvalidInput(f"consents: {len(items)} in one request, at most {BATCH_MAX}")
        now = self.ledger.clock()
        requests, doi = self._evidence(key, items, now)
        self._await_holder(requests, doi)
        languages = {index: item.language for index, item in enumerate(items)}
        emails = {r.identity.email for r in requests}
        # The signal's opt-outs follow the items: their place marks them (``"gpc": true``, no
        # receipt), never their label, which a client could choose for an item of its own.
        signal_from = len(requests)
        if gpc:
            for email in sorted(e for e in emails if e) or []:
                requests += self._gpc_evidence(key, email, now)
        if gpc and not emails:
            raise InvalidInput("gpc: a GPC signal needs the person's email in a consent of the request")
        standing = self._consented(requests, doi)
        # The key and the request as stored: keyed hashes, never the key as sent (a client may
        # put the person's address in it) nor the body's plain digest (guessable from candidate
        # addresses, the rest of a body being predictable).
        stored: tuple[str, str] | None = None
        if idempotency_key is not None:
            stored = self._stored_request(idempotency_key, fingerprint or "")
            upkept = self._requests_upkept_at
            if upkept is None or not upkept <= now < upkept + REQUESTS_UPKEEP:
                # Not this key's own record: past its window it still tells whether the request
                # is an old one sent again (``_kept_answer``), which a purge here would forget.
                self.forget_old_requests(sparing=(key.id, stored[0]))
        try:
            with self.ledger.engine.begin() as conn:
                if stored is not None:
                    kept = self._kept_answer(conn, key, stored, now)
                    if kept is not None:
                        return kept
                # Read under the writer lock the transaction holds: an erasure committed since
                # the request was checked counts.
                self._refuse_erased(conn, key, requests, doi)
                # Sign-ups with an erased address wait for confirmation without it: index ->
                # address, the requests now naming their person by id.
                held = self._hold_back(conn, requests, doi, standing)
                recorded = [r for index, r in enumerate(requests) if index not in standing]
                _stats, kept_outcomes = self.ledger.record_in(conn, recorded) if recorded else (None, [])
                found = iter(kept_outcomes)
                outcomes = [
                    _Standing(conn, *standing[index]) if index in standing else next(found)
                    for index in range(len(requests))
                ]
                # A no for an erased address was recorded on the erased person (by its keyed
                # hash, SubjectResolver): answered without their id, and mailed nothing.
                # A person waiting for their confirmation (held) is no erased person.
                waiting = {outcomes[index].subject_id for index in held}
                gone = (
                    _erased_among(conn, {o.subject_id for o in kept_outcomes} - waiting)
                    if any(r.identity.says_no for r in recorded)
                    else set()
                )
                results: list[dict[str, Any]] = []
                mails: list[PendingMail] = []
                to_receipt: list[PendingReceipt] = []
                for index, (request, outcome) in enumerate(zip(requests, outcomes, strict=True)):
                    evidence = request.evidence
                    erased = outcome.subject_id in gone
                    entry: dict[str, Any] = {
                        "subject": None if erased else outcome.subject_uid,
                        "purpose": evidence.purpose,
                        "channel": evidence.channel,
                        "recorded": None if index in standing else evidence.status.value,
                        "duplicate": outcome.duplicate,
                        "state": outcome.after.decision() if outcome.after else None,
                    }
                    if erased:
                        entry["erased"] = True
                    if index >= signal_from:
                        entry["gpc"] = True
                    elif erased:
                        pass  # no receipt: nothing goes to an erased address (Art. 17)
                    elif not outcome.duplicate and evidence.status.value in RECEIPTED:
                        entry["record_id"] = evidence.fingerprint()
                        # The receipt carries a link to the person's page: it goes to the
                        # address they hold now, never to an older one of theirs a form was
                        # given (a mailbox they left may be another's now); none while they
                        # hold none (the answer says the same either way).
                        to = _current_address(conn, self.ledger, outcome.subject_id) or held.get(index)
                        if to is not None:
                            to_receipt.append(
                                PendingReceipt(
                                    to,
                                    outcome.subject_uid,
                                    evidence.fingerprint(),
                                    languages.get(index, "en"),
                                )
                            )
                    asks = index in doi and (not outcome.duplicate or index in standing)
                    if asks and _asked_lately(conn, outcome.subject_id, evidence, now):
                        # A link went to this address a moment ago and still works: no second mail.
                        # Whoever submits a sign-up form with someone else's address again and
                        # again must not flood that mailbox with mails the person never asked for.
                        entry["confirmation"] = "recently"
                    elif asks:
                        # To the address the person holds now, as a receipt: its link grants
                        # consent for the whole person, and an older address of theirs may be a
                        # mailbox they left. The link is bound to it (``links.sent_elsewhere``).
                        to = held.get(index) or _current_address(conn, self.ledger, outcome.subject_id)
                        token = secrets.token_urlsafe(32)
                        if index in held:  # the address goes with the link, not into the ledger
                            token = self._sealed(token, held[index])
                        elif to is not None:
                            token = bound(self.ledger, token, to)
                        # Its terms bound in the chain (``confirmation_terms``): an edited row opens nothing.
                        open_confirmation(
                            conn,
                            now,
                            token_hash=token_digest(token),
                            kind="double_opt_in",
                            subject_id=outcome.subject_id,
                            subject_uid=outcome.subject_uid,
                            purpose=evidence.purpose,
                            channel=evidence.channel,
                            notice_version=evidence.notice_version,
                            notice_language=evidence.notice_language,
                            source=key.source,
                            expires_at=now + timedelta(days=self.settings.confirmation_days),
                            actor=f"apikey:{key.name}",
                        )
                        if _void_at_birth(conn, token, now):
                            # The same request said no to it (a GPC signal opting out of this
                            # purpose, or a withdrawal beside it): the link would only ever say
                            # "you said no". Nothing is mailed; closed as an unsent link is.
                            entry["confirmation"] = "void"
                            results.append(entry)
                            continue
                        if to is None:
                            # They hold no address now (every record of theirs shows another's):
                            # the link goes nowhere and lapses; the answer is the same.
                            log.info(
                                "hub.mail_skipped", subject=outcome.subject_uid, reason="no_address_held"
                            )
                        else:
                            mails.append(
                                PendingMail(
                                    to,
                                    outcome.subject_uid,
                                    evidence.purpose,
                                    evidence.channel,
                                    token,
                                    languages.get(index, "en"),
                                )
                            )
                        # Not "mailed": the mail goes after this answer (and may fail: the log
                        # says hub.mail_failed). The answer says only what is true when given.
                        entry["confirmation"] = "queued"
                    results.append(entry)
                body = {"recorded": sum(not r["duplicate"] for r in results), "results": results}
                if gpc and not self.settings.gpc_purposes:
                    body["gpc"] = dict(GPC_HONOURED_NOWHERE)
                status_code = 201
                if stored is not None:
                    conn.execute(
                        insert(capture_requests).values(
                            key_id=key.id,
                            idempotency_key=stored[0],
                            request_sha256=stored[1],
                            status_code=status_code,
                            response=orjson.dumps(body).decode(),
                            created_at=now,
                        )
                    )
        except IntegrityError:
            # The same key raced in from another request and committed first: its answer is ours.
            if stored is None:
                raise
            with self.ledger.engine.connect() as conn:
                kept = self._kept_answer(conn, key, stored, now)
            if kept is None:
                raise
            return kept
        log.info(
            "hub.captured",
            apikey=key.name,
            recorded=body["recorded"],
            received=len(requests),
            double_opt_in=len(mails),
            gpc=gpc,
        )
        if "gpc" in body:
            log.warning("hub.gpc_honoured_nowhere", apikey=key.name, setting="hub.gpc_purposes")
        return CaptureResult(
            status_code, body, mails=mails, receipts=to_receipt if self.settings.mail_receipts else []
        )

    def _kept_answer(
        self, conn: Any, key: ApiKey, stored: tuple[str, str], now: datetime
    ) -> CaptureResult | None:
        """The answer kept with the key (``stored``: the key's and the request's keyed hashes),
        None if there is none in its window."""
        row = conn.execute(
            select(capture_requests).where(
                capture_requests.c.key_id == key.id, capture_requests.c.idempotency_key == stored[0]
            )
        ).one_or_none()
        if row is None:
            return None
        if row.status_code == ERASED_REQUEST_STATUS:
            # Closed by an erasure (Ledger.erase): run again, a sign-up retried late would
            # bring the person back, dated now, and the first answer named them. Past its window
            # too, as long as it is known: the request's digest went with the answer, so a
            # retry of it cannot be told from a new request under the same key.
            log.info("hub.capture_refused", apikey=key.name, reason="erased_request")
            raise ErasedRequest(
                "Idempotency-Key: the request it names recorded a person who was erased since "
                "(GDPR Art. 17): its answer is gone and it is not run again; nothing was recorded"
            )
        if row.created_at <= now - IDEMPOTENCY_WINDOW:
            # Past its window, not yet forgotten: the key names a new request, unless it is the
            # same request sent again (a queue's backlog) after its person said no to what it
            # granted. Run again, its grant would be dated now and reverse that no
            # (trusted_opt_in_reverses), as a late retry after an erasure would bring them back.
            said_no_to = (
                _said_no_since(
                    conn,
                    orjson.loads(row.response),
                    row.created_at,
                    lambda subject_id: self.ledger.effective_states_in(conn, [subject_id])[subject_id],
                )
                if row.request_sha256 == stored[1]
                else None
            )
            if said_no_to is not None:
                log.info("hub.capture_refused", apikey=key.name, reason="said_no_since")
                raise SaidNoSince(
                    "Idempotency-Key: the request it names was first recorded over a day ago, and the "
                    f"person said no to {said_no_to!r} since (a withdrawal, refusal, objection or "
                    "erasure): run again it would reverse that no, so it is not; nothing was recorded"
                )
            conn.execute(delete(capture_requests).where(capture_requests.c.id == row.id))
            return None
        if row.request_sha256 != stored[1]:
            raise Conflict(
                "Idempotency-Key was used before with another request: a key names one request; "
                "send a new key for a new request"
            )
        return CaptureResult(row.status_code, orjson.loads(row.response), replayed=True)

    def _request_hashers(self) -> tuple[Callable[[str], str], Callable[[str], str]]:
        """The keyed hashes of an Idempotency-Key and of a request's digest (the erasure key read
        once)."""
        return capture_request_hashers(self.ledger.erasure_key())

    def _stored_request(self, idempotency_key: str, fingerprint: str) -> tuple[str, str]:
        """An Idempotency-Key and a request's digest (``request_digest``) as stored."""
        key_hash, request_hash = self._request_hashers()
        return HASHED_IDEMPOTENCY_KEY + key_hash(idempotency_key), request_hash(fingerprint)

    def forget_old_requests(self, *, sparing: tuple[int, str] | None = None) -> int:
        """Deletes the idempotency records past ``IDEMPOTENCY_WINDOW``; returns how many. Those an
        older version wrote within it (the key as sent, the body's plain digest) are stored as
        this version stores them, the replay of their request kept, and closed as an erasure
        closes them now (``Ledger.erase``) where their answer names a person erased since.
        ``sparing`` (an API key's id and a stored Idempotency-Key) keeps the record a capture is
        about to read: ``_kept_answer`` deletes it, or refuses a late retry with it."""
        now = self.ledger.clock()
        expired = capture_requests.c.created_at <= now - IDEMPOTENCY_WINDOW
        if sparing is not None:
            expired = and_(
                expired,
                ~and_(
                    capture_requests.c.key_id == sparing[0],
                    capture_requests.c.idempotency_key == sparing[1],
                ),
            )
        with self.ledger.engine.begin() as conn:
            gone = conn.execute(delete(capture_requests).where(expired)).rowcount or 0
            older = conn.execute(
                select(capture_requests).where(
                    ~capture_requests.c.idempotency_key.startswith(HASHED_IDEMPOTENCY_KEY, autoescape=True)
                )
            ).all()
            if older:
                _store_keyed(conn, older, self._request_hashers())
        self._requests_upkept_at = now
        if gone or older:
            log.info("hub.capture_requests_upkept", expired=gone, rekeyed=len(older))
        return gone

    def _refuse_erased(
        self, conn: Connection, key: ApiKey, requests: list[RecordRequest], doi: set[int]
    ) -> None:
        """Refuses the request (``ErasedAddress``) where it grants for an address on the
        suppression list that nobody came back with (``SubjectResolver.erased_since``: its keyed
        hash under any of its forms) and none of its grants for that address could lift the
        suppression: a new consent from a trusted capture source, evidenced, dated after the
        erasure (``Policy.reverses_sticky``; for a double opt-in, the confirmation it mails, so
        the sign-up must be one the confirmation could lift). Such a grant would store the
        erased address on a new person, suppressed all the same, and mail it a receipt or a
        link (docs/hub.md, "A grant for an erased address"). Only a no for the address alone is read as
        before: kept as its keyed hash (``Identity.says_no``)."""
        # The ledger's rule (unliftable_erased_grant), as `consentsync ledger record` applies it.
        refused = unliftable_erased_grant(
            SubjectResolver(conn, self.ledger.erasure_key(), self.ledger.clock(), None),
            requests,
            lambda index, since: self._lifts(requests[index].evidence, index in doi, since),
        )
        if refused is None:
            return
        log.info("hub.capture_refused", apikey=key.name, reason="erased", item=refused)
        raise ErasedAddress(
            f"consents[{refused}].email: the address was erased; a grant from source "
            f"{key.source!r} does not bring it back (only a new consent from a trusted "
            "source, policy.trusted_sources, dated after the erasure does): nothing was recorded"
        )

    def _hold_back(
        self, conn: Connection, requests: list[RecordRequest], doi: set[int], standing: dict[int, Any]
    ) -> dict[int, str]:
        """The double opt-in sign-ups with an address on the suppression list that nobody came
        back with (``SubjectResolver.is_erased_only``; ``_refuse_erased`` let them through: their
        confirmation would lift the erasure), by index, with the address. Until the person
        confirms, the sign-up is anyone's word (a form takes any address): the ledger keeps no
        trace of the address but its keyed hash (Art. 17; docs/hub.md, "A sign-up for an erased
        address"). Each such request, and each no beside it for the same address, is recorded
        on a person made for the sign-up that holds no address (``create_unaddressed``; the one
        an earlier sign-up with it made while it waits, ``held_back_people``, so that the caps
        on its mails count as for anyone), named by id in ``requests``. The address goes out
        with the mail only, sealed in its link (``_sealed``); ``confirm`` stores it. A grant
        beside it for the same address (a purpose without double opt-in) brings the person back
        at once, address and all, as ever: nothing is held back then."""
        by_address: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            if request.identity.email:
                by_address.setdefault(request.identity.email, []).append(index)
        resolver = SubjectResolver(conn, self.ledger.erasure_key(), self.ledger.clock(), None)
        held: dict[int, str] = {}
        for email, indexes in by_address.items():
            signs_up = any(index in doi and index not in standing for index in indexes)
            grants = any(index not in doi and not requests[index].identity.says_no for index in indexes)
            if not signs_up or grants or not resolver.is_erased_only(email):
                continue
            address = str(email)  # the one form (a LookupAddress names the form it was read in)
            if len(self._sealed(secrets.token_urlsafe(32), address)) > TOKEN_MAX:
                # Its link could not be opened (people.py refuses longer tokens): nothing recorded.
                first = next(index for index in indexes if index in doi)
                raise ErasedAddress(
                    f"consents[{first}].email: the address was erased, and is too long to be held "
                    "back until it is confirmed: nothing was recorded"
                )
            digests = [resolver.hashed(form) for form in email_forms(email)]
            waiting = held_back_people(conn, digests)
            person = waiting[0] if waiting else resolver.create_unaddressed(email)
            for index in indexes:
                requests[index] = replace(requests[index], identity=Identity(subject_id=person))
                held[index] = address
        if resolver.audit:  # the ``subject.created`` of each person made (binding nothing)
            audit.append(conn, resolver.audit, self.ledger.clock())
        if held:
            log.info("hub.sign_up_held_back", items=sorted(held))
        return held

    def _seal_key(self) -> AESGCM:
        return AESGCM(derived_key(self.ledger.erasure_key(), ADDRESS_SEAL_LABEL))

    def _sealed(self, token: str, address: str) -> str:
        """A link's token (``token``, its random part) carrying ``address``, sealed: only this
        install (its erasure key) reads it back, and only from this link."""
        nonce = os.urandom(12)
        sealed = self._seal_key().encrypt(nonce, address.encode("utf-8"), token.encode("ascii"))
        return token + SEAL_MARK + base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")

    def _unsealed(self, token: str) -> str | None:
        """The address a token made by ``_sealed`` carries; None if it carries none readable."""
        random_part, _mark, sealed = token.partition(SEAL_MARK)
        try:
            data = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
            plain = self._seal_key().decrypt(data[:12], data[12:], random_part.encode("ascii"))
            return plain.decode("utf-8")
        except (ValueError, InvalidTag, UnicodeError):
            return None

    def _take_address(self, conn: Connection, row: Any, token: str) -> int:
        """On the confirmation of a sign-up held back (``_hold_back``): stores the address its
        link carries for the person made for it (bound in the chain, ``subject.identifier_added``)
        and returns who the grant is recorded on: that person, or whoever holds the address by
        now (the person came back otherwise meanwhile: the address is theirs, one holder; the
        sign-up left waiting on the person made for it is closed, ``_close_sign_up``)."""
        address = self._unsealed(token)
        if address is None:  # the erasure key changed since: nothing to bring back
            raise LinkRefused("this confirmation link is not valid: it may have been cut or changed")
        # Its folded form only where a folding CRM's record brought it (``holding``).
        holder = conn.execute(select(subject_identifiers.c.subject_id).where(holding(address))).scalar()
        if holder is not None:
            return int(holder)
        resolver = SubjectResolver(conn, self.ledger.erasure_key(), self.ledger.clock(), None)
        resolver.add_email(row.subject_id, address)
        audit.append(conn, resolver.audit, self.ledger.clock())
        return int(row.subject_id)

    def _close_sign_up(self, conn: Connection, row: Any, holder: str, now: datetime) -> None:
        """On the confirmation of a sign-up held back (``_hold_back``) whose address another
        person holds by now (someone came back with it meanwhile: ``holder``, by uid, who takes
        the grant, ``_take_address``): the person made for the sign-up stays without it, and the
        "requested" the sign-up recorded on them would wait for ever (the lapse closes only
        links never confirmed). It is closed: "applicable" (nothing on record, as a request the
        outreach takes back leaves it) recorded for the link's purpose and channel, from
        ``SIGN_UP_CLOSED_SOURCE``, its ``consent.recorded`` entry naming the confirmation and
        the holder's uid (no address). Only while the sign-up waits there (``_waiting``); another
        sign-up of theirs is closed when its own link is confirmed."""
        if not _waiting(self.ledger, conn, row):
            return
        closing = Evidence.witnessed(
            now,
            purpose=row.purpose,
            channel=row.channel,
            status=ConsentStatus.APPLICABLE,
            basis=LawfulBasis.CONSENT,
            source=SIGN_UP_CLOSED_SOURCE,
            origin=Origin.SYSTEM,
            actor="consentsync",
            evidence_ref=f"confirmation:{row.id}; granted to subject {holder}",
        )
        _stats, (outcome,) = self.ledger.record_in(
            conn, [RecordRequest(Identity(subject_id=row.subject_id), closing)]
        )
        log.info(
            "hub.sign_up_closed",
            subject=outcome.subject_uid,
            holder=holder,
            purpose=row.purpose,
            channel=row.channel,
        )

    def _lifts(self, evidence: Evidence, double_opt_in: bool, since: datetime) -> bool:
        """Whether ``evidence`` (a grant as captured) lifts an erasure's suppression made at
        ``since``, as the ledger reads it (``effective_state``): a new consent newer than it. A
        double opt-in records "requested"; its confirmation (source ``DOUBLE_OPT_IN_SOURCE``)
        is the grant, and only for a sign-up that is a new consent itself."""
        policy = self.ledger.policy
        if double_opt_in:
            if DOUBLE_OPT_IN_SOURCE not in policy.trusted_sources:
                return False
            evidence = replace(evidence, status=ConsentStatus.GRANTED)
        return lifts_erasure(policy, evidence, since)

    def _await_holder(self, requests: list[RecordRequest], doi: set[int]) -> None:
        """Makes each grant for an address its person no longer holds (``SubjectResolver.
        superseded``: a CRM record of theirs took another one) a double opt-in sign-up, in
        ``requests`` and ``doi``: "requested" is recorded on the person and the link goes to
        the address they hold now (``_current_address``), so only their own confirmation
        grants. Taken as sent, the grant of whoever has the old mailbox now (recycled, a former
        employer's alias) reversed the person's no, and the next sync cleared the opt-out on
        the record holding their new address (bb61 F5). Not a new person for the address: it
        stays the person's (one holder per address, bound in the chain), and a no for it is
        still theirs (the safe side). Read before the transaction, as ``_consented`` reads: a
        sync re-addressing the person meanwhile is a change the ledger learns after the grant."""
        grants = {
            index: request
            for index, request in enumerate(requests)
            if index not in doi
            and request.identity.email
            and not request.identity.says_no
            and request.evidence.status is ConsentStatus.GRANTED
        }
        if not grants:
            return
        with reading(self.ledger.engine) as conn:
            resolver = SubjectResolver(conn, self.ledger.erasure_key(), self.ledger.clock(), None)
            # As entered (a LookupAddress): the person an older version holds it under, too.
            superseded = resolver.superseded({r.identity.email for r in grants.values() if r.identity.email})
        awaiting = sorted(index for index, r in grants.items() if r.identity.email in superseded)
        for index in awaiting:
            request = requests[index]
            requests[index] = replace(
                request, evidence=replace(request.evidence, status=ConsentStatus.REQUESTED)
            )
            doi.add(index)
        if awaiting:
            log.info("hub.grant_awaits_holder", items=awaiting, reason="address_superseded")

    def _consented(self, requests: list[RecordRequest], doi: set[int]) -> dict[int, tuple[str, Any]]:
        """The double opt-in sign-ups (by index) of people whose consent to that purpose and
        channel stands now (``_stands``): uid and state. Recording "requested" for them would
        suspend it, on the word of a form anyone can fill in with their address (and the next
        sync would push the suspension to their CRMs as an opt-out); the sign-up records
        nothing, and its link (a grant once confirmed, under the notice now shown) is mailed as
        for anyone else."""
        found: dict[int, tuple[str, Any]] = {}
        now = self.ledger.clock()
        for index in sorted(doi):
            evidence = requests[index].evidence
            # The address as entered (a LookupAddress, not str() of it): a person an older
            # version holds under the form it came in is the one whose consent stands.
            uid, state = self.ledger.decision_for(
                requests[index].identity.email or "", evidence.purpose, evidence.channel
            )
            if uid is not None and _stands(state, now):
                found[index] = (uid, state)
        return found

    def _evidence(
        self, key: ApiKey, items: Sequence[ConsentCapture], now: datetime
    ) -> tuple[list[RecordRequest], set[int]]:
        """Checks every item, naming the first bad one; returns the evidence and which items
        start a double opt-in."""
        notices = in_effect(self.ledger)
        texts = languages_in_effect(self.ledger)
        requests: list[RecordRequest] = []
        doi: set[int] = set()
        for index, item in enumerate(items):
            at = f"consents[{index}]"
            try:
                email = _entered(item.email)
            except InvalidInput as error:
                raise InvalidInput(f"{at}.email: {error}") from None
            if not mailable(email):  # its confirmation and receipts would go to others too
                raise InvalidInput(f"{at}.email: not one address a mail can go to: {NOT_ONE_ADDRESS}")
            if item.purpose not in self.ledger.purposes:
                raise InvalidInput(
                    f"{at}.purpose: unknown purpose {item.purpose!r}: configured are "
                    f"{', '.join(self.ledger.purposes)}"
                )
            if not key.covers(item.purpose):
                raise Forbidden(f"{at}.purpose: API key {key.name!r} may not record purpose {item.purpose!r}")
            status = _status(item.status, f"{at}.status")
            basis = _basis(item.basis, f"{at}.basis")
            evidence_ref = item.evidence_ref
            if claims_the_gpc_signal(evidence_ref):
                if status is ConsentStatus.GRANTED:
                    raise InvalidInput(f"{at}.evidence_ref: {GPC_LABEL_RESERVED}")
                # A no is never turned away for it (as for its time, below): recorded as the
                # person's own no, which only the person's confirmation reverses, and receipted.
                # Kept with the label, it read as the signal's, and whoever held the preference
                # link granted over it at once (preferences.no_is_only_gpc).
                log.warning("hub.gpc_label_set_aside", key=key.name, field=f"{at}.evidence_ref")
                evidence_ref = None
            if status is ConsentStatus.GRANTED and basis not in (None, LawfulBasis.CONSENT):
                raise InvalidInput(f"{at}.basis: a capture grants consent; other bases are not captured")
            if status is ConsentStatus.GRANTED:  # the rule ``ledger record`` follows too
                check_grant_notice(item.purpose, item.notice_version, notices, f"{at}.notice_version")
            requested = status is ConsentStatus.GRANTED and item.purpose in self._double_opt_in
            try:  # a time its offset takes off the calendar (year 1 at +14:00) is bad input
                event_time = as_utc(item.event_time) if item.event_time is not None else now
                if status is not ConsentStatus.GRANTED:
                    check_moment(event_time, "event time", now, self.ledger.max_clock_skew_seconds)
            except InvalidInput as error:
                if status is ConsentStatus.GRANTED:
                    accepted = "an event time is accepted from 1970-01-01T00:00:00Z to now"
                    raise InvalidInput(f"{at}.event_time: {error}; {accepted}") from None
                # A no is never turned away for its time (an unsubscribe webhook from a sender
                # whose clock is wrong): recorded as received, as late as a no can count.
                log.warning("hub.no_time_set_aside", key=key.name, field=f"{at}.event_time")
                event_time = now
            if status is ConsentStatus.GRANTED and item.notice_version is not None:
                # A grant dated before the text it names was shown proves nothing (Art. 7(1)).
                since = notices[(item.purpose, item.notice_version)]
                check_shown(item.purpose, item.notice_version, since, event_time, f"{at}.event_time")
                # Nor does one in a language that version had no text in then: the proof names
                # the version's text shown by then, whatever language anyone asks it in later.
                check_language(
                    item.purpose,
                    item.notice_version,
                    texts.get((item.purpose, item.notice_version), {}),
                    item.language,
                    event_time,
                    f"{at}.language",
                )
            # The text shown, recorded for every proof to name (a grant's was checked just now;
            # a no is never refused for it: recorded only where that text was in effect).
            shown_in = (
                language_in_effect(
                    texts.get((item.purpose, item.notice_version), {}), item.language, event_time
                )
                if item.notice_version is not None
                else None
            )
            evidence = Evidence(
                purpose=item.purpose,
                channel=item.channel,
                status=ConsentStatus.REQUESTED if requested else status,
                basis=LawfulBasis.CONSENT if status is ConsentStatus.GRANTED else basis,
                event_time=event_time,
                observed_at=now,
                source=key.source,
                origin=Origin.CAPTURE,
                actor=f"apikey:{key.name}",
                notice_version=item.notice_version,
                evidence_ref=evidence_ref,
                notice_language=shown_in,
            )
            try:
                self.ledger.validate(evidence)
            except InvalidInput as error:
                raise InvalidInput(f"{at}: {error}") from None
            if requested:
                doi.add(len(requests))
            # A no (withdrawn, refused) for an erased address is kept as its keyed hash, on the
            # erased person: only a grant brings a person back (SubjectResolver, says_no).
            says_no = status is not ConsentStatus.GRANTED
            requests.append(RecordRequest(Identity(email=email, says_no=says_no), evidence))
        return requests, doi

    def _gpc_evidence(self, key: ApiKey, email: str, now: datetime) -> list[RecordRequest]:
        """A Global Privacy Control signal: an opt-out of every purpose ``hub.gpc_purposes``
        names, on each of its channels. Recorded whatever the key's purposes: it is the person's
        own signal, and an opt-out can only protect them."""
        found: list[RecordRequest] = []
        for key_name in self.settings.gpc_purposes:
            purpose = self.ledger.purposes[key_name]
            for channel in purpose.channels:
                found.append(
                    RecordRequest(
                        Identity(email=email, says_no=True),
                        Evidence.witnessed(
                            now,
                            purpose=purpose.key,
                            channel=channel,
                            status=ConsentStatus.WITHDRAWN,
                            basis=None,
                            source=key.source,
                            origin=Origin.CAPTURE,
                            actor=f"apikey:{key.name}",
                            evidence_ref=GPC_EVIDENCE,
                        ),
                    )
                )
        return found

    # -- objections and erasure ----------------------------------------------------------------

    def objection(
        self, key: ApiKey, email: str, purpose: str, *, direct_marketing: bool = False
    ) -> dict[str, Any]:
        if not key.may("objections"):
            raise Forbidden(f"API key {key.name!r} may not record objections")
        if purpose in self.ledger.purposes and not key.covers(purpose):
            raise Forbidden(f"purpose: API key {key.name!r} may not record purpose {purpose!r}")
        entered = _entered(email)
        # An erased address nobody came back with is answered suppressed, nothing recorded
        # (Ledger.raise_objection). A purpose the person has no right to object to (its basis
        # for them neither legitimate interests nor a public task, and no direct marketing) is
        # refused by the ledger as the CLI and the preference page are: ``NotObjectable``, an
        # ``InvalidInput`` (422), nothing recorded.
        return self.ledger.raise_objection(
            entered,
            purpose,
            direct_marketing=direct_marketing,
            source=key.source,
            actor=f"apikey:{key.name}",
        )

    def erasure(
        self,
        key: ApiKey,
        email: str,
        reason: str,
        *,
        asked_of_holder: Callable[[ApiKey, str], dict[str, Any] | None],
    ) -> dict[str, Any]:
        """Art. 17 asked through the API. ``asked_of_holder``: for an address its person left,
        the request mailed to the address they hold now, its answer
        (``PreferenceCentre.erasure_asked_of_holder``); None: erased as asked."""
        if not key.may("erasure"):
            raise Forbidden(f"API key {key.name!r} may not request erasure")
        entered = lookup_email(email)
        if not reason.strip():  # checked before anything else, as ``Ledger.erase`` checks it
            raise InvalidInput("reason: must say why the subject is erased")
        check_reason(reason, "reason:", ERASURE_REASON_MAX, erasable=False)
        awaiting = asked_of_holder(key, entered)
        if awaiting is not None:
            return awaiting
        # Bad input named as the body names it (``reason: ...``), not as the CLI's --reason.
        result = self.ledger.erase(entered, reason=reason, actor=f"apikey:{key.name}", reason_field="reason:")
        return {
            "erased": True,
            "subject_known": result["subject_known"],
            "suppression_id": result["suppression_id"],
        }

    # -- the decision endpoint -----------------------------------------------------------------

    def decide(self, key: ApiKey, email: str, purpose: str, channel: str) -> dict[str, Any]:
        """May this person be contacted for this purpose on this channel now, and why."""
        if not key.may("decisions"):
            raise Forbidden(f"API key {key.name!r} may not ask for decisions")
        if purpose in self.ledger.purposes and not key.covers(purpose):
            raise Forbidden(f"purpose: API key {key.name!r} may not ask about purpose {purpose!r}")
        uid, state = self.ledger.decision_for(lookup_email(email), purpose, channel)
        return {
            "contact": not state.suppressed,
            "purpose": purpose,
            "channel": channel,
            "status": state.status.value,
            "basis": state.basis.value,
            "rule": state.rule,
            "detail": state.detail,
            "since": iso(state.since) if state.since else None,
            "expires_at": iso(state.expires_at) if state.expires_at else None,
            "known": uid is not None,
            "as_of": iso(self.ledger.clock()),
        }


def _store_keyed(
    conn: Connection, rows: Sequence[Any], hashers: tuple[Callable[[str], str], Callable[[str], str]]
) -> None:
    """Idempotency records an older version wrote, as this one writes them: the key's keyed
    hash, the keyed hash of the request's digest (this version's is the keyed hash of the same
    plain digest, so a retry of the request still replays), and closed where their answer names
    a person erased since."""
    key_hash, request_hash = hashers
    named: dict[int, set[str]] = {}
    for row in rows:
        try:
            answer = orjson.loads(row.response)
        except orjson.JSONDecodeError:
            answer = {}
        results = answer.get("results") if isinstance(answer, dict) else None
        named[row.id] = {
            r["subject"] for r in results or () if isinstance(r, dict) and isinstance(r.get("subject"), str)
        }
    every = set().union(*named.values())
    erased = (
        set(
            conn.execute(
                select(subjects.c.uid).where(subjects.c.uid.in_(every), subjects.c.erased_at.is_not(None))
            ).scalars()
        )
        if every
        else set()
    )
    for row in rows:
        hashed = HASHED_IDEMPOTENCY_KEY + key_hash(row.idempotency_key)
        mine = (capture_requests.c.id == row.id, capture_requests.c.idempotency_key == row.idempotency_key)
        taken = conn.execute(
            select(capture_requests.c.id).where(
                capture_requests.c.key_id == row.key_id, capture_requests.c.idempotency_key == hashed
            )
        ).first()
        if taken is not None:
            # The request was retried since, and its record written as this version writes it.
            conn.execute(delete(capture_requests).where(*mine))
        elif named[row.id] & erased:
            conn.execute(
                update(capture_requests)
                .where(*mine)
                .values(
                    idempotency_key=hashed,
                    status_code=ERASED_REQUEST_STATUS,
                    request_sha256="",
                    response=ERASED_REQUEST,
                )
            )
        else:
            conn.execute(
                update(capture_requests)
                .where(*mine)
                .values(idempotency_key=hashed, request_sha256=request_hash(row.request_sha256))
            )


def _entered(raw: str) -> str:
    """An address a person or a form gives: it enters the ledger in its one form
    (``normalise_email``), and finds the person an older version holds under the form it came in
    (a domain in NFD, fullwidth letters: ``as_read``), as the sync path does, so that their
    withdrawal or objection reaches the record their CRMs are linked to rather than making a
    second person who has said nothing (docs/policy.md, "One address, one form")."""
    return as_read(normalise_email(raw), raw) or ""


def _receipts_let_through(times: list[datetime], after: datetime) -> int:
    """How many of a person's receipted choices recorded at ``times`` (in order) after ``after``
    passed the ``RECEIPT_MAILS`` in ``RECEIPT_WINDOW`` test: at least as many receipts as went
    then (one the daily cap held back counts too, so a flood stays held back)."""
    passed = 0
    for index, moment in enumerate(times):
        if moment > after and index - bisect_right(times, moment - RECEIPT_WINDOW, 0, index) < RECEIPT_MAILS:
            passed += 1
    return passed


def _in_language(language: str | None) -> str:
    return "?" + urlencode({"lang": language}) if language else ""


class _Standing:
    """In place of a record's outcome, for a sign-up that recorded nothing (``Hub._consented``)."""

    duplicate = True

    def __init__(self, conn: Connection, uid: str, state: Any) -> None:
        self.subject_uid = uid
        self.subject_id = conn.execute(select(subjects.c.id).where(subjects.c.uid == uid)).scalar_one()
        self.after = state


def _current_address(conn: Connection, ledger: Ledger, subject_id: int) -> str | None:
    """The address the person holds now (``links.holds_now``, in the capture's transaction)."""
    return holds_now(conn, ledger, subject_id)


def _erased_among(conn: Connection, subject_ids: set[int]) -> set[int]:
    """Which of ``subject_ids`` are erased people: erased themselves, or standing on a
    suppression entry with no address of their own (the keyed hash of an address erased before
    anyone held it, as a CRM record showing it makes one)."""
    if not subject_ids:
        return set()
    holds_address = (
        select(subject_identifiers.c.id)
        .where(subject_identifiers.c.subject_id == subjects.c.id, subject_identifiers.c.kind == "email")
        .exists()
    )
    return set(
        conn.execute(
            select(subjects.c.id).where(
                subjects.c.id.in_(sorted(subject_ids)),
                subjects.c.erased_at.is_not(None) | (subjects.c.suppression_id.is_not(None) & ~holds_address),
            )
        ).scalars()
    )


# The rules by which the reconciler holds a purpose back on the person's own no other than a
# withdrawal or refusal on record: an objection (pending, upheld, or to direct marketing), and
# the erasure of a form of their address. A trusted grant lifts each but a pending objection;
# one made on the preference page, whose link may have been forwarded, must be confirmed first.
# A restriction (Art. 18) is among them: it may hide an objection or an erasure behind it, which
# a grant recorded now would reverse once the restriction is lifted.
PERSONS_NO_RULES = frozenset(
    {
        Rule.OBJECTION_DIRECT_MARKETING,
        Rule.OBJECTION_UPHELD,
        Rule.OBJECTION_PENDING,
        Rule.ERASURE,
        Rule.RESTRICTION,
    }
)


def says_no(state: EffectiveState) -> bool:
    """Whether the person's state in force for a purpose and channel is their no, as the
    reconciler reads it: a withdrawal or refusal (sticky, whatever rule holds it), an objection,
    an erasure's suppression. A grant on the preference page does not reverse it by itself
    (``PreferenceCentre._grant``)."""
    no = (ConsentStatus.WITHDRAWN, ConsentStatus.REFUSED)
    return state.status in no or state.rule in PERSONS_NO_RULES


def _said_no_since(
    conn: Connection,
    answer: dict[str, Any],
    since: datetime,
    states_of: Callable[[int], dict[tuple[str, str], EffectiveState]],
) -> str | None:
    """The purpose of a grant in ``answer`` (an idempotency record's kept answer, first given at
    ``since``) that its person said no to after it and whose no stands: their state in force for
    its purpose and channel (``states_of``: by subject id) is a no (``says_no``: a
    withdrawal or refusal, an objection, an erasure, a restriction), and they acted since (an
    erasure, a withdrawal or refusal on its channel, an objection not rejected, to any purpose:
    one to direct marketing binds every purpose serving it, Art. 21(3), as the state then says).
    None where there is none: a no the person reversed since with a new consent of their own, or
    an objection the controller rejected, leaves nothing for the retry to undo. A grant is what
    the request asked for (granted, a double opt-in's "requested", or a sign-up over a consent
    that stood: nothing recorded), not a no the same request recorded beside it for the same
    person, purpose and channel (its own GPC opt-out: recorded in its transaction, after
    ``since``)."""
    results = [r for r in answer.get("results") or [] if isinstance(r, dict) and r.get("subject")]
    own_nos = {
        (r["subject"], r.get("purpose"), r.get("channel")) for r in results if r.get("recorded") in _SAYING_NO
    }
    grants = [
        (r["subject"], r.get("purpose"), r.get("channel"))
        for r in results
        if r.get("recorded") in (None, ConsentStatus.GRANTED.value, ConsentStatus.REQUESTED.value)
        and not r.get("gpc")
    ]
    grants = [grant for grant in grants if grant not in own_nos]
    if not grants:
        return None
    people = {
        row.uid: row
        for row in conn.execute(
            select(subjects.c.uid, subjects.c.id, subjects.c.erased_at).where(
                subjects.c.uid.in_(sorted({uid for uid, _purpose, _channel in grants}))
            )
        )
    }
    for uid, purpose, channel in grants:
        person = people.get(uid)
        if person is None:
            continue
        state = states_of(person.id).get((str(purpose), str(channel)))
        if state is None or not says_no(state):
            continue
        if person.erased_at is not None and person.erased_at > since:
            return str(purpose)
        events, raised = consent_events.c, objections.c
        withdrawn = select(events.id).where(
            events.subject_id == person.id,
            events.purpose == purpose,
            events.channel == channel,
            events.status.in_(_SAYING_NO),
            events.recorded_at > since,
        )
        objected = select(raised.id).where(
            raised.subject_id == person.id,
            raised.status != ObjectionStatus.REJECTED.value,
            raised.recorded_at > since,
        )
        if conn.execute(select(or_(exists(withdrawn), exists(objected)))).scalar():
            return str(purpose)
    return None


def _asked_lately(conn: Connection, subject_id: int, evidence: Evidence, now: datetime) -> bool:
    """Whether a new double opt-in mail for this person, purpose and channel must wait: either
    ``CONFIRMATION_MAILS`` links went within ``CONFIRMATION_WINDOW``, or one was made within
    ``RESEND_INTERVAL`` and still works: not confirmed, not expired, not closed because its mail
    did not go, and not voided by the person's no (a sign-up after "No, I did not ask for this"
    or a withdrawal is a new request, and gets its own mail, within the daily cap)."""
    same = (
        confirmations.c.subject_id == subject_id,
        confirmations.c.kind.in_(("double_opt_in", DISOWNED_KIND)),
        confirmations.c.purpose == evidence.purpose,
        confirmations.c.channel == evidence.channel,
    )
    # The daily cap first: it counts every link that went, confirmed, voided or open. A link
    # closed before its expiry was closed because its mail failed (``_send``; the only other
    # closing, ``lapse_unconfirmed``, comes at or after expires_at, days later).
    went = conn.execute(
        select(func.count())
        .select_from(confirmations)
        .where(
            *same,
            confirmations.c.requested_at > now - CONFIRMATION_WINDOW,
            or_(confirmations.c.lapsed_at.is_(None), confirmations.c.lapsed_at >= confirmations.c.expires_at),
        )
    ).scalar_one()
    if went >= CONFIRMATION_MAILS:
        return True
    rows = conn.execute(
        select(confirmations).where(
            *same,
            confirmations.c.kind == "double_opt_in",  # a disowned link works no more
            confirmations.c.confirmed_at.is_(None),
            confirmations.c.lapsed_at.is_(None),
            confirmations.c.expires_at > now,
            confirmations.c.requested_at > now - RESEND_INTERVAL,
        )
    ).all()
    for row in rows:
        try:
            _refuse_if_void(conn, row)
        except LinkRefused:
            continue
        return True
    return False


def _stands(state: EffectiveState, now: datetime) -> bool:
    """Whether a person's ``state`` for a purpose and channel is one a double opt-in sign-up
    must leave as it is (``Hub._consented``): what the ledger treats as in force now, by the
    test the decision API answers ``contact`` with (``Hub.decide``: not suppressed), a granted
    consent read from a CRM without a date as much as one confirmed here, and a soft opt-in; or
    a consent granted, and not past its validity, that only a rule about the whole person holds
    back (a restriction, an objection, the erasure of another form of the address): recorded
    over, it would be "requested" once that rule is lifted.

    Both halves of that second test are the reconciler's own. The rule is one of the person-wide
    ones (``Rule.RESTRICTION``, ``Rule.ERASURE``, the objections), which ``effective_state``
    applies before any other and which hold back whatever status and basis are on record. The
    grant is a consent (``reconcile._is_consent``): on consent, or on no basis stated at all. A
    grant held back by another rule is not in force and is not waiting for one to be lifted: a
    grant on legitimate interests for email marketing (a CRM's "subscribed" with that basis) is
    suppressed by ``eprivacy_consent_required``, no consent, and a sign-up over it asks for one
    (session 59b: it stood, answered "duplicate" as if the person had consented). Nor does a
    grant on another basis, or a soft opt-in, stand under a person-wide rule: whether it would
    be in force once the rule is lifted depends on the purpose's ePrivacy rule (for email
    marketing it would not be, without a soft opt-in), which the state does not tell; recorded
    over, the person is asked, as anyone with no consent on record is.

    Until session 59 only an evidenced grant stood (dated, with a notice or a reference). The
    thought was that a grant nobody can prove is no consent to keep. But the ledger acts on such
    a grant as on any other (the decision API answers ``contact: true``, and the CRMs are told
    so): the sign-up, anyone's word, suspended it, pushed an opt-out to the other CRMs, and its
    "No, I did not ask for this" then recorded a refusal that unsubscribed the person. Nothing
    the evidence test protected is lost: the sign-up's link is mailed all the same, and
    confirming it records the evidenced grant (``double_opt_in_at``), which is how a consent
    without proof gets its proof. A state that is not in force (nothing on record, a no, an
    expiry, a sign-up waiting) is recorded over as before: there the sign-up asks for a consent
    nobody holds."""
    from consentsync.reconcile import Rule  # here: only this function of the module needs it

    if not state.suppressed:
        return True
    person_wide = state.rule in (
        Rule.RESTRICTION,
        Rule.ERASURE,
        Rule.OBJECTION_DIRECT_MARKETING,
        Rule.OBJECTION_UPHELD,
        Rule.OBJECTION_PENDING,
    )
    # On consent: stated so, or with no basis stated (the purpose's default filled in for none).
    consent = state.basis is LawfulBasis.CONSENT or not state.basis_stated
    return (
        person_wide
        and state.status is ConsentStatus.GRANTED
        and consent
        and (state.expires_at is None or now < state.expires_at)
    )


def _waiting(ledger: Ledger, conn: Connection, row: Any) -> bool:
    """Whether the purpose and channel of confirmation ``row`` wait for the person's answer: the
    state in force is "requested" (what a sign-up records), not a consent already given."""
    # A purpose or channel no longer configured has no state: nothing waits (its page is refused).
    state = ledger.effective_states_in(conn, [row.subject_id])[row.subject_id].get((row.purpose, row.channel))
    return state is not None and state.status is ConsentStatus.REQUESTED


def _void_at_birth(conn: Connection, token: str, now: datetime) -> bool:
    """Whether the double opt-in link just made is void already (``_refuse_if_void``) by what the
    same transaction recorded; if so it is closed (``lapsed_at`` before its expiry: the mark of a
    link whose mail did not go, counted by no cap)."""
    row = conn.execute(select(confirmations).where(confirmations.c.token_hash == token_digest(token))).one()
    try:
        _refuse_if_void(conn, row)
    except LinkRefused:
        conn.execute(update(confirmations).where(confirmations.c.id == row.id).values(lapsed_at=now))
        return True
    return False


def _refuse_if_void(conn: Connection, row: Any) -> None:
    """Refuses a confirmation link (``LinkRefused``) that the person's own later acts voided:
    their erasure (Art. 17: nothing is recorded about an erased person again, and an old link
    must not bring a consent back), or, for a link not yet followed, a withdrawal or refusal of
    its purpose and channel that came after what the link asks to confirm (Art. 7(3): the
    request was withdrawn; a new sign-up mails a new link). "After" is by event time, at or
    after the request's (a tie is read as the no), a no stamped to the whole second counting
    from the end of that second as the reconciler reads it, so a withdrawal the person made
    before signing up again does not void the new link."""
    erased = conn.execute(select(subjects.c.erased_at).where(subjects.c.id == row.subject_id)).scalar()
    if erased is not None:
        raise LinkRefused(ERASED_LINK)
    if row.confirmed_at is not None:
        return
    same_key = (
        consent_events.c.subject_id == row.subject_id,
        consent_events.c.purpose == row.purpose,
        consent_events.c.channel == row.channel,
    )
    # The request's own event time (a capture may date it before it reached the hub); a renewal
    # or a request that recorded nothing counts from when the link was made.
    asked = conn.execute(
        select(func.min(consent_events.c.event_time)).where(
            *same_key,
            consent_events.c.status == ConsentStatus.REQUESTED.value,
            consent_events.c.recorded_at == row.requested_at,
        )
    ).scalar()
    since = min(asked, row.requested_at) if asked is not None else row.requested_at
    # A no counts from when the reconciler reads it as made (``no_counts_at``, docs/policy.md):
    # stamped to the whole second, from the end of that second (an unsubscribe stamped 12:00:00
    # voids a link asked for at 12:00:00.5); stamped by a CRM clock running behind ours, up to
    # its lag later, never after it was recorded. Read from up to a second before, or, for a no
    # with a lag, recorded since; each judged so.
    said_no = conn.execute(
        select(
            consent_events.c.event_time, consent_events.c.recorded_at, consent_events.c.clock_lag_ms
        ).where(
            *same_key,
            consent_events.c.status.in_(_SAYING_NO),
            or_(
                func.coalesce(consent_events.c.event_time, consent_events.c.recorded_at)
                >= since - TO_THE_SECONDS_END,
                and_(consent_events.c.clock_lag_ms.is_not(None), consent_events.c.recorded_at >= since),
            ),
        )
    ).all()
    if any(
        (
            no_counts_at(no.event_time, clock_lag_of(no.clock_lag_ms), no.recorded_at)
            if no.event_time is not None
            else no.recorded_at
        )
        >= since
        for no in said_no
    ):
        raise LinkRefused(SAID_NO_LINK)
    # An objection is a no too (Art. 21): to the link's purpose, or to direct marketing when the
    # purpose serves direct marketing (absolute, Art. 21(2) and (3)); pending or upheld, not one
    # ops rejected. Raised after the request, it voided it as a withdrawal would: confirming the
    # old link would record a trusted consent that lifts the objection. Serving direct marketing
    # as ``reconcile.serves_direct_marketing`` reads it, from the purposes' mirror: flagged so
    # (profiling for direct marketing is), or under the ePrivacy rules (the mirror's eprivacy is
    # the one in force, following direct_marketing where the configuration leaves it out).
    is_direct_marketing = exists().where(
        purposes.c.key == row.purpose,
        or_(purposes.c.direct_marketing.is_(True), purposes.c.eprivacy.is_(True)),
    )
    objected = conn.execute(
        select(objections.c.raised_at).where(
            objections.c.subject_id == row.subject_id,
            objections.c.status != ObjectionStatus.REJECTED.value,
            or_(
                objections.c.purpose == row.purpose,
                and_(objections.c.direct_marketing.is_(True), is_direct_marketing),
            ),
            objections.c.raised_at >= since - TO_THE_SECONDS_END,
        )
    ).scalars()
    if any(no_counts_from(raised_at) >= since for raised_at in objected):
        raise LinkRefused(SAID_NO_LINK)


def _status(value: str, where: str) -> ConsentStatus:
    accepted = [s.value for s in CAPTURED_STATUSES]
    if value not in accepted:
        raise InvalidInput(f"{where}: {value!r} is not one of {', '.join(accepted)}")
    return ConsentStatus(value)


def _basis(value: str | None, where: str) -> LawfulBasis | None:
    if value is None:
        return None
    try:
        return LawfulBasis(value)
    except ValueError:
        raise InvalidInput(
            f"{where}: {value!r} is not one of {', '.join(b.value for b in LawfulBasis)}"
        ) from None
