"""What a person can do on their preference page, as service calls (the pages are in
``people``): see each purpose with its state, basis and notice; grant or withdraw per purpose and
channel; decline a consent that waits for confirmation; object (Art. 21); take a copy of their
record (Art. 15); ask for erasure (Art. 17) or restriction (Art. 18), each confirmed through a
mailed link.

Every action is evidence: the time, the notice version shown, and a keyed hash of the client
address and user agent (never the address or agent themselves)."""

from __future__ import annotations

import secrets
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import Connection, Row, select, update

from consentsync import audit
from consentsync.audit import AuditRecord
from consentsync.domain import (
    API_KEY_ACTOR_PREFIX,
    ConsentStatus,
    EffectiveState,
    Evidence,
    InvalidInput,
    LawfulBasis,
    Origin,
    Purpose,
    iso,
)
from consentsync.hub.capture import (
    GPC_EVIDENCE,
    NEW_LINK_KIND,
    PERSONS_NO_RULES,
    Hub,
    Mailed,
    PendingMail,
    PendingReceipt,
    _asked_lately,
    says_no,
    token_digest,
)
from consentsync.hub.confirmation_terms import open_confirmation, refuse_unless_bound
from consentsync.hub.i18n import translator
from consentsync.hub.keys import ApiKey
from consentsync.hub.links import (
    LinkRefused,
    bound,
    expired_uid,
    holds_now,
    mailed_tag,
    read_token,
    sent_elsewhere,
)
from consentsync.hub.mail import Mail, MailFailed
from consentsync.hub.notices import current
from consentsync.ledger.engine import reading
from consentsync.ledger.identity import Identity, SubjectResolver
from consentsync.ledger.schema import confirmations, consent_events, subjects
from consentsync.ledger.service import NotFound, RecordOutcome, RecordRequest, objectable
from consentsync.reconcile import Rule, serves_direct_marketing

log = structlog.get_logger("consentsync.hub.preferences")

# A new link for an expired one is mailed at most this often per person: whoever holds an old
# link cannot flood the person's mailbox with it.
NEW_LINK_INTERVAL = timedelta(minutes=10)
SOURCE = "preference_center"  # a trusted source by default (policy.trusted_sources)
GPC_MARK = "gpc:1"  # in the evidence of a choice made while the browser sent Sec-GPC: 1
ERASURE_REASON = "asked for by the person on the preference page, confirmed through a mailed link"
LIFTED_LINK = "this link is no longer in use: the restriction it confirmed was lifted since"
# Art. 15 asked on the preference page: the copy is not shown to whoever holds the page's link (a
# receipt mailed to the person carries it, and may be forwarded); a download link is mailed to
# the address the person holds now instead (``request_export``). It works EXPORT_LINK_VALIDITY
# after it is mailed, and from its first download on only EXPORT_REUSE_WINDOW more (to take the
# copy in another format), never past its expiry: a mail forwarded later opens nothing.
EXPORT_KIND = "export"
EXPORT_LINK_VALIDITY = timedelta(hours=24)
EXPORT_REUSE_WINDOW = timedelta(hours=1)
EXPORT_USED_LINK = "this download link is no longer in use: ask for a new one on your preference page"
# Art. 18(1): the grounds on which a person may have processing restricted, as the page offers
# them (the key is kept with the request; the ledger's reason names the paragraph).
RESTRICTION_GROUNDS = {
    "accuracy": ("a", "they contest the accuracy of their data, for as long as it is checked"),
    "unlawful": ("b", "they hold the processing unlawful and want it restricted, not erased"),
    "legal_claims": ("c", "they need the data for a legal claim, though its purposes no longer do"),
    "objection": ("d", "they objected (Art. 21), for as long as it is checked whose grounds prevail"),
}  # fmt: skip


def direct_marketing_for(purpose: Purpose, rules: Iterable[str | None] = ()) -> bool:
    """Whether an objection to ``purpose`` is one to direct marketing, absolute (Art. 21(2)):
    a purpose that serves it (``reconcile.serves_direct_marketing``: flagged so, profiling for
    direct marketing, or configured to follow the ePrivacy rules, ``eprivacy: true``, for
    marketing by electronic mail: docs/policy.md, "Soft opt-in"), or one whose state, by
    ``rules`` (those of its channels), rests on the soft opt-in now. Email marketing on the soft
    opt-in is direct marketing, and the person's refusal ends it (PECR reg. 22(3)(c), ePrivacy
    Art. 13(2)): never an Art. 21(1) objection that a review could reject, after which the
    marketing would resume."""
    return serves_direct_marketing(purpose) or any(rule == Rule.EPRIVACY_SOFT_OPT_IN for rule in rules)


def no_is_only_gpc(
    conn: Connection, subject_id: int, state: EffectiveState, gpc_purposes: Collection[str]
) -> bool:
    """Whether the no of ``state`` (``says_no``) is only a Global Privacy Control opt-out: every
    withdrawal or refusal ever recorded for its purpose and channel was recorded from the signal
    (``recorded_from_the_signal``: by this page or a capture, for a purpose ``gpc_purposes``
    names), and no objection, erasure or restriction holds the state. Such a no is the visiting
    browser's, not an act the person took, and CCPA regulations § 7025(c)(3) let the person
    consent despite the signal on the page: their grant is recorded as it always was (with its
    GPC mark, which ``honour_gpc`` then respects), not mailed to confirm. A withdrawal the person
    made on the page with the signal on is their own (its evidence names the page,
    ``Visitor.evidence_ref``).

    Every no ever, not those since the last grant: a grant recorded after the person's own no
    need not have lifted it (an untrusted source, a grant dated before it), and counting from it
    let a forwarded link's holder grant over the person's own withdrawal once any GPC opt-out
    came after it (session 63 review). A person who withdrew once and consented again since is
    asked to confirm by mail: the safe side."""
    if state.status is not ConsentStatus.WITHDRAWN or state.rule in PERSONS_NO_RULES:
        return False
    events = consent_events.c
    nos = conn.execute(
        select(
            events.purpose,
            events.status,
            events.origin,
            events.source,
            events.actor,
            events.notice_version,
            events.evidence_ref,
        ).where(
            events.subject_id == subject_id,
            events.purpose == state.purpose,
            events.channel == state.channel,
            events.status.in_((ConsentStatus.WITHDRAWN.value, ConsentStatus.REFUSED.value)),
        )
    ).all()
    return bool(nos) and all(recorded_from_the_signal(no, gpc_purposes) for no in nos)


def recorded_from_the_signal(event: Row[Any], gpc_purposes: Collection[str]) -> bool:
    """Whether ``event`` (a consent event's purpose, status, origin, source, actor, notice version
    and evidence reference) is a GPC opt-out as the hub records the signal, and nothing else is:
    withdrawn, captured, no notice, labelled ``GPC_EVIDENCE``, for a purpose the signal opts out
    of now (``hub.gpc_purposes``), by this page (``honour_gpc``: its source, no actor) or through
    an API key (``Hub._gpc_evidence``: the key's actor). The label alone proves nothing: a client
    chose it for an explicit withdrawal (the capture API sets it aside since, session 67), and a
    withdrawal so labelled let whoever held the preference link grant over it at once. A no
    that is not plainly the signal's counts as the person's own: the safe side (a purpose
    taken out of ``hub.gpc_purposes`` since asks its grants to be confirmed by mail)."""
    return (
        event.status == ConsentStatus.WITHDRAWN.value
        and event.evidence_ref == GPC_EVIDENCE
        and event.origin == Origin.CAPTURE.value
        and event.notice_version is None
        and event.purpose in gpc_purposes
        and (
            (event.source == SOURCE and event.actor is None)
            or str(event.actor or "").startswith(API_KEY_ACTOR_PREFIX)
        )
    )


def objectable_for(purpose: Purpose, basis: str | None) -> bool:
    """Whether a person may object to ``purpose`` where the ledger holds one of its channels on
    ``basis`` (that channel's state's): the ledger's own rule (``ledger.service.objectable``),
    which refuses every other objection. Direct marketing whatever the basis (Art. 21(2)); else
    legitimate interests or a public task as the ledger holds it for the person (Art. 21(1)),
    such as a soft opt-in, which is no consent; never a contract, nor a consent (withdrawn
    instead), even under a legitimate-interests purpose.

    Asked here, not decided again: a rule of its own (it took a purpose's default basis for
    the person's) showed "Object" where the ledger refuses it. The ledger's rule holds for a
    purpose where it holds for any of its channels, so the page offers "Object" on a channel
    only where the ledger takes the objection."""
    return objectable(purpose, [basis], direct_marketing=False)


class NoticeChanged(ValueError):
    """A grant sent from a page that showed another notice than the one now current: recording
    it would name a text the person never saw as the one they agreed to."""


@dataclass(frozen=True, slots=True)
class Visitor:
    """Who acts on a page, as evidence: keyed hashes only."""

    client_hash: str
    agent_hash: str
    gpc: bool = False  # the browser sent a Global Privacy Control signal (Sec-GPC: 1)

    @property
    def evidence_ref(self) -> str:
        # A choice made with the signal on says so: a grant given over it is the person's own.
        signal = f" {GPC_MARK}" if self.gpc else ""
        return f"{SOURCE} client:{self.client_hash} agent:{self.agent_hash}{signal}"


@dataclass(frozen=True, slots=True)
class Person:
    uid: str
    email: str


class PreferenceCentre:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.ledger = hub.ledger
        self._hash = hub.ledger.keyed_hasher()

    def erasure_asked_of_holder(self, key: ApiKey, email: str) -> dict[str, Any] | None:
        """For an address its person left (``SubjectResolver.superseded``), an erasure asked
        for it is no word of theirs: whoever has the old mailbox now may be someone else, and an
        erasure cannot be undone. It is asked of the person as their preference page asks it:
        a confirmation link mailed to the address they hold now (``Hub.address_now``;
        ``Hub.erasure`` asks it first); nothing is erased until it is followed (docs/policy.md,
        "An address a person no longer holds").
        None for any other address: erased as asked. A withdrawal or an objection for a left
        address stays the person's (the safe side)."""
        with reading(self.ledger.engine) as conn:
            resolver = SubjectResolver(conn, self.ledger.erasure_key(), self.ledger.clock(), None)
            if not resolver.superseded({email}):
                return None
            subject_id = resolver.holder(email)
            uid = (
                None
                if subject_id is None
                else conn.execute(select(subjects.c.uid).where(subjects.c.id == subject_id)).scalar()
            )
        held = None if uid is None else self.ledger.email_of(uid)
        if uid is None or held is None:
            return None  # erased meanwhile: the erasure below finds what is left
        mailed = self.request_erasure(Person(uid, held), None, actor=f"apikey:{key.name}", source=key.source)
        log.info("hub.erasure_awaits_holder", subject=uid, reason="address_superseded", mailed=mailed)
        return {
            "erased": False,
            "subject_known": True,
            "suppression_id": None,
            "confirmation": "queued" if mailed else "failed",
        }

    def visitor(self, client_address: str | None, user_agent: str | None, *, gpc: bool = False) -> Visitor:
        return Visitor(
            self._hash(f"client:{client_address or ''}")[:16],
            self._hash(f"agent:{user_agent or ''}")[:16],
            gpc,
        )

    def honour_gpc(self, person: Person, visitor: Visitor) -> list[str]:
        """A Global Privacy Control signal sent while the person's own page is open: an opt-out
        of every purpose ``hub.gpc_purposes`` names, on each channel, for this person (CCPA
        regulations § 7025(c)(1): "if known, ... for the consumer"; the page knows them). As the
        capture API records it: withdrawn, evidence ``Sec-GPC: 1``, no receipt. Nothing is
        recorded where the state is a no already, nor over a grant the person gave on this
        page with the signal on (§ 7025(c)(3): they may consent despite it). Returns the
        purposes opted out now."""
        if not visitor.gpc or not self.hub.settings.gpc_purposes:
            return []
        view = self.ledger.subject_view(person.email)
        states = {(s["purpose"], s["channel"]): s["status"] for s in view["purposes"]}
        nos = (ConsentStatus.WITHDRAWN.value, ConsentStatus.REFUSED.value)
        # Whether the person said yes on this page with the signal on since their last no, in
        # the order written: not only as the latest event, which a renewal's "requested" or
        # another source's copy of the grant may follow, and the grant still stands.
        chose_over_signal: dict[tuple[str, str], bool] = {}
        for event in view["history"]:
            key = (event["purpose"], event["channel"])
            if event["status"] in nos:
                chose_over_signal[key] = False
            elif (
                event["status"] == ConsentStatus.GRANTED.value
                and event["source"] == SOURCE
                and str(event["evidence_ref"] or "").endswith(f" {GPC_MARK}")
            ):
                chose_over_signal[key] = True
        now = self.ledger.clock()
        stopped: list[str] = []
        opt_outs: list[Evidence] = []
        for key in self.hub.settings.gpc_purposes:
            purpose = self.ledger.purposes[key]
            for channel in purpose.channels:
                if states.get((key, channel)) in nos or chose_over_signal.get((key, channel), False):
                    continue
                evidence = Evidence.witnessed(
                    now,
                    purpose=key,
                    channel=channel,
                    status=ConsentStatus.WITHDRAWN,
                    basis=None,
                    source=SOURCE,
                    origin=Origin.CAPTURE,
                    evidence_ref=GPC_EVIDENCE,
                )
                opt_outs.append(evidence)
                if key not in stopped:
                    stopped.append(key)
        if opt_outs:
            self._record(person, opt_outs)
        if stopped:
            log.info("hub.gpc_honoured", subject=person.uid, purposes=stopped)
        return stopped

    def person(self, token: str) -> Person:
        """The person a preference link was made for (raises ``LinkRefused``: also once erased)."""
        uid = read_token(self.ledger, token)
        email = self.ledger.email_of(uid)
        if email is None:
            raise LinkRefused("this link opens no record any more: the record was erased")
        return Person(uid, email)

    def mail_new_link(self, token: str, language: str = "en") -> str:
        """Art. 7(3), Art. 12(2): an expired preference link must not leave the person to write
        in before they can withdraw. An expired link that is ours and unchanged asks for a new
        one, mailed to the address the person holds now (never shown; ``Hub.address_now``), at
        most once per ``NEW_LINK_INTERVAL``; so does a link mailed to an address they no longer
        hold (``links.sent_elsewhere``). Returns "mailed", "recently" (one went a moment ago) or
        "failed". Raises ``LinkRefused`` for any other link, and once the record is erased."""
        uid = expired_uid(self.ledger, token)
        if uid is None:
            read_token(self.ledger, token)  # changed or foreign: its own refusal
            raise LinkRefused("this link still works: open it to change your choices")
        if self.ledger.email_of(uid) is None:
            raise LinkRefused("this link opens no record any more: the record was erased")
        email = self.hub.address_now(uid)
        if email is None:  # they hold no address now: nowhere to mail it, answered the same
            log.info("hub.mail_skipped", subject=uid, kind="new_link", reason="no_address_held")
            return "mailed"
        # Kept in the ledger, taken in a writer's transaction before the mail goes: kept in the
        # serving process, the same old link pressed at once (or sent to each of several web
        # processes) passed the check before any of them had mailed, and mailed once each.
        # The row only holds the time (capture.NEW_LINK_KIND: no page opens it).
        held = self._request_by_mail(Person(uid, email), NEW_LINK_KIND, {}, action=None, to=email)
        if held is None:
            return "recently"
        _ = translator(language)
        text = _(
            "You asked for a new link to your privacy choices. Here it is:\n\n{preferences}\n\n"
            "If it was not you, ignore this mail: nothing changes.\n",
            preferences=self.hub.preference_link(uid, language, to=email),
        )
        try:
            self.hub.mailer.send(Mail(email, _("Your link to your privacy choices"), text))
        except MailFailed as error:
            log.warning("hub.mail_failed", subject=uid, kind="new_link", error=str(error))
            self._unsent(held)  # nobody got it: asking again mails one
            return "failed"
        log.info("hub.mail_sent", subject=uid, kind="new_link")
        return "mailed"

    def purposes(self, person: Person, language: str = "en") -> list[dict[str, Any]]:
        """Each purpose and channel with its current state, basis and the notice shown, and how
        the person stops it where the ledger lets us do it now (``stop``): "withdraw" a consent,
        "object" (Art. 21) to anything else that may be objected to (a soft opt-in, legitimate
        interests), None where nothing runs or it cannot be stopped here (a contract)."""
        view = self.ledger.subject_view(person.email)
        states = {(s["purpose"], s["channel"]): s for s in view["purposes"]}
        described = {p.key: p.description for p in self.hub.config.settings.purposes}
        shown: list[dict[str, Any]] = []
        for purpose in self.ledger.purposes.values():
            notice = current(self.ledger, purpose.key, language)
            # Per purpose, as an objection is: one to direct marketing if any channel is.
            marketing = direct_marketing_for(
                purpose, (states[(purpose.key, c)]["rule"] for c in purpose.channels)
            )
            for channel in purpose.channels:
                state = states[(purpose.key, channel)]
                on_consent = state["basis"] == LawfulBasis.CONSENT.value
                objectable = marketing or objectable_for(purpose, state["basis"])
                stop = None
                if not state["suppressed"]:  # the ledger lets us do it now: the way to stop it
                    if state["status"] == ConsentStatus.GRANTED.value and on_consent:
                        stop = "withdraw"
                    elif objectable:
                        stop = "object"
                shown.append(
                    {
                        "purpose": purpose.key,
                        "name": purpose.name,
                        "description": described.get(purpose.key),
                        "channel": channel,
                        "status": state["status"],
                        "basis": state["basis"],
                        "suppressed": state["suppressed"],
                        "rule": state["rule"],
                        # May the person grant here? Only where consent is the basis asked for.
                        "consent_based": purpose.default_basis is LawfulBasis.CONSENT or on_consent,
                        "objectable": objectable,
                        "direct_marketing": marketing,
                        "stop": stop,
                        "notice_version": notice.version if notice else None,
                        "notice_text": notice.text if notice else None,
                        "notice_sha256": notice.sha256 if notice else None,
                    }
                )
        return shown

    def choose(
        self,
        person: Person,
        purpose: str,
        channel: str,
        *,
        grant: bool,
        visitor: Visitor,
        language: str = "en",
        shown: str | None = None,
    ) -> dict[str, Any]:
        """Grants or withdraws one purpose on one channel, with the notice version shown.
        ``shown``: the version the page showed (its form sends it); a grant is refused with
        ``NoticeChanged`` when another is current now, since the one recorded must be the one
        read; so is a grant that names none."""
        status = ConsentStatus.GRANTED if grant else ConsentStatus.WITHDRAWN
        return self._choice(person, purpose, channel, status, visitor, language, shown)

    def decline(
        self, person: Person, purpose: str, channel: str, *, visitor: Visitor, language: str = "en"
    ) -> dict[str, Any]:
        """Says no to a consent the person is asked to confirm (a double opt-in someone else
        may have started with their address, or a consent request): recorded as a refusal
        (Art. 4(11), Art. 7), which voids the mailed confirmation link (``_refuse_if_void``).
        Only while it waits for confirmation: a consent given is withdrawn, not declined."""
        known = self.ledger.purposes.get(purpose)
        if known is None or channel not in known.channels:
            raise InvalidInput(f"unknown purpose or channel: {purpose!r} {channel!r}")
        state = self.ledger.decision_for(person.email, purpose, channel)[1]
        if state.status is not ConsentStatus.REQUESTED:
            raise InvalidInput(
                f"{purpose!r} on {channel!r} is {state.status.value}, not waiting for confirmation: "
                "there is nothing to decline"
            )
        return self._choice(person, purpose, channel, ConsentStatus.REFUSED, visitor, language)

    def _choice(
        self,
        person: Person,
        purpose: str,
        channel: str,
        status: ConsentStatus,
        visitor: Visitor,
        language: str,
        shown: str | None = None,
    ) -> dict[str, Any]:
        grant = status is ConsentStatus.GRANTED
        known = self.ledger.purposes.get(purpose)
        if known is None or channel not in known.channels:
            raise InvalidInput(f"unknown purpose or channel: {purpose!r} {channel!r}")
        if grant and known.default_basis is not LawfulBasis.CONSENT:
            # A grant records consent: on a purpose with another basis it would claim a consent
            # the person was never asked for (the page offers no such button either).
            raise InvalidInput(f"purpose {purpose!r} is not based on consent: it cannot be granted here")
        notice = current(self.ledger, purpose, language)
        if grant and notice is None:
            raise InvalidInput(f"purpose {purpose!r} has no notice to show: it cannot be granted here")
        if grant and notice is not None and shown != notice.version:
            # A version registered while the page was open: the grant would name a text the
            # person never read. Nothing is recorded; the page shows the new text to decide on.
            # So too for a form that does not say which text it showed (a page of an older
            # release, a hand-made client): the proof of a consent names the text read, never
            # the one current when the answer came.
            raise NoticeChanged(
                f"purpose {purpose!r}: the page showed notice {(shown or 'none named')[:100]!r}, "
                f"{notice.version!r} is current"
            )
        now = self.ledger.clock()
        evidence = Evidence.witnessed(
            now,
            purpose=purpose,
            channel=channel,
            status=status,
            basis=LawfulBasis.CONSENT if grant else None,
            source=SOURCE,
            origin=Origin.CAPTURE,
            notice_version=notice.version if notice else None,
            evidence_ref=visitor.evidence_ref,
            # The text the page showed (the version's in the page's language, else another of
            # its texts: ``current``): what every proof of this choice names.
            notice_language=notice.language if notice else None,
        )
        if grant:
            asked = self._grant(person, evidence, visitor, language)
            if asked is not None:
                return asked
        (outcome,) = self._record(person, [evidence])
        log.info("hub.preference", subject=person.uid, purpose=purpose, channel=channel, status=status.value)
        if not outcome.duplicate and self.hub.settings.mail_receipts:
            # To the address the person holds now (``mail_receipt`` checks again for an erasure
            # since), not the one the page was opened for.
            email = self.hub.address_now(person.uid)
            if email is not None:
                self.hub.mail_receipt(PendingReceipt(email, person.uid, evidence.fingerprint(), language))
        after = outcome.after
        return {
            "purpose": purpose,
            "channel": channel,
            "recorded": evidence.status.value,
            "status": after.status.value if after else None,
            "suppressed": after.suppressed if after else None,
            "at": iso(now),
            "notice_version": evidence.notice_version,
            "record_id": evidence.fingerprint(),
        }

    def _grant(
        self, person: Person, evidence: Evidence, visitor: Visitor, language: str
    ) -> dict[str, Any] | None:
        """A grant made on the page where the person's state in force is their no
        (``says_no``; not a GPC opt-out alone, ``no_is_only_gpc``): the page's link is in every
        receipt, and whoever it was forwarded to must not consent in the person's name,
        reversing their no (the page's source is a trusted one). It becomes a double opt-in, as
        a grant captured for an address the person left does (``Hub._await_holder``): a
        confirmation link mailed to the address they hold now, bound to it; nothing is recorded
        until it is confirmed (``Hub.confirm`` records the grant then, from ``double_opt_in``),
        and saying no to it only voids the link (``Hub.decline``: nothing waits). Returns the
        page's answer, or None where the state is no no of the person's: the grant is recorded
        as before. Judged and opened in the writer's transaction
        that would record it: a no committed meanwhile counts."""
        now = self.ledger.clock()
        with self.ledger.engine.begin() as conn:
            found = conn.execute(
                select(subjects.c.id, subjects.c.erased_at).where(subjects.c.uid == person.uid)
            ).one_or_none()
            if found is None or found.erased_at is not None:
                raise LinkRefused("this link opens no record any more: the record was erased")
            states = self.ledger.effective_states_in(conn, [found.id])[found.id]
            state = states.get((evidence.purpose, evidence.channel))
            gpc_purposes = self.hub.settings.gpc_purposes
            if state is None or not says_no(state) or no_is_only_gpc(conn, found.id, state, gpc_purposes):
                return None
            answer = {
                "purpose": evidence.purpose,
                "channel": evidence.channel,
                "recorded": None,
                "confirmation": "mailed",
            }
            to = holds_now(conn, self.ledger, found.id)
            if to is None:  # nowhere to mail it: answered as if it went (nothing to tell)
                log.info(
                    "hub.mail_skipped", subject=person.uid, kind="double_opt_in", reason="no_address_held"
                )
                return answer
            if _asked_lately(conn, found.id, evidence, now):
                return answer  # a link went a moment ago (or the day's went): that mail answers
            token = bound(self.ledger, secrets.token_urlsafe(32), to)
            # Its terms bound in the chain (``confirmation_terms``): an edited row opens nothing.
            open_confirmation(
                conn,
                now,
                token_hash=token_digest(token),
                kind="double_opt_in",
                subject_id=found.id,
                subject_uid=person.uid,
                purpose=evidence.purpose,
                channel=evidence.channel,
                notice_version=evidence.notice_version,
                notice_language=evidence.notice_language,
                source=SOURCE,
                expires_at=now + timedelta(days=self.hub.settings.confirmation_days),
                actor=visitor.evidence_ref[:200],
            )
        log.info(
            "hub.grant_awaits_confirmation",
            subject=person.uid,
            purpose=evidence.purpose,
            channel=evidence.channel,
            rule=state.rule,
        )
        pending = PendingMail(to, person.uid, evidence.purpose, evidence.channel, token, language)
        if self.hub.send_confirmation(pending) is Mailed.FAILED:  # its link closed: asking again mails
            answer["confirmation"] = "failed"
        return answer

    def _record(self, person: Person, evidence: list[Evidence]) -> list[RecordOutcome]:
        """Records the person's own choices on the person the link names, by id, in the
        transaction that finds them not erased (raises ``LinkRefused`` once they are), as a
        confirmation link does (``Hub.confirm``). Not by the address the page read before: an
        erasure committed in between leaves nobody holding it, and the resolver would make a
        new person with the erased address (a withdrawal too), which an "I agree", trusted and
        newer than the erasure, would also bring back into marketing (Art. 17)."""
        with self.ledger.engine.begin() as conn:  # the writer lock from BEGIN (engine.py)
            found = conn.execute(
                select(subjects.c.id, subjects.c.erased_at).where(subjects.c.uid == person.uid)
            ).one_or_none()
            if found is None or found.erased_at is not None:
                raise LinkRefused("this link opens no record any more: the record was erased")
            requests = [RecordRequest(Identity(subject_id=found.id), item) for item in evidence]
            _stats, outcomes = self.ledger.record_in(conn, requests)
        return outcomes

    def objectable(self, person: Person, purpose: str) -> bool:
        """Whether the person may object to ``purpose`` here (``objectable_for``, on the current
        basis of any of its channels); False for a purpose not configured."""
        known = self.ledger.purposes.get(purpose)
        if known is None:
            return False
        return any(objectable_for(known, s["basis"]) for s in self._states(person, purpose))

    def _states(self, person: Person, purpose: str) -> list[dict[str, Any]]:
        """The person's current states of ``purpose``, one per channel."""
        return [s for s in self.ledger.subject_view(person.email)["purposes"] if s["purpose"] == purpose]

    def object(self, person: Person, purpose: str, visitor: Visitor) -> dict[str, Any]:
        """An objection (Art. 21). To direct marketing (``direct_marketing_for``: also email
        marketing on the soft opt-in, or on a purpose set to follow the ePrivacy rules) it is
        absolute (Art. 21(2)): upheld at once, whatever the basis (a soft opt-in, legitimate
        interests, consent), never queued for review, and it stops all direct marketing to the
        person (Art. 21(3)); the ledger decides so (``Ledger.raise_objection_of``, told here that
        it is one). Raises ``InvalidInput`` for a purpose the person cannot object to
        (``objectable_for``: a contract, a consent outside direct marketing, which is withdrawn
        instead).

        Raised on the person the link names, by id, in the transaction that finds them not
        erased (``Ledger.raise_objection_of``), as a choice is (``_record``): erased since the
        page read them, it raises ``LinkRefused`` (410 Gone) and nothing is recorded, neither
        on nobody nor on someone who came back with the address since."""
        known = self.ledger.purposes.get(purpose)
        try:
            states = self._states(person, purpose) if known is not None else []
            if known is None or not any(objectable_for(known, s["basis"]) for s in states):
                raise InvalidInput(f"purpose {purpose[:64]!r} cannot be objected to here")
            marketing = direct_marketing_for(known, (s["rule"] for s in states))
            result = self.ledger.raise_objection_of(
                person.uid,
                purpose,
                direct_marketing=marketing,
                source=SOURCE,
                actor=visitor.evidence_ref[:200],
            )
        except NotFound:
            raise LinkRefused("this link opens no record any more: the record was erased") from None
        log.info("hub.objection", subject=person.uid, purpose=purpose, status=result["status"])
        return result

    def request_export(self, person: Person, visitor: Visitor, language: str = "en") -> str:
        """Art. 15 asked on the page: mails a link to download the copy (``export``) to the
        address the person holds now, bound to it, as an erasure's confirmation is (Art. 12(6):
        the page's link may have been forwarded; the mailbox proves the person). Returns
        "mailed" (also when one went a moment ago, ``NEW_LINK_INTERVAL``, or when the person
        holds no address) or "failed" (the mail did not go)."""
        to = self._mail_to(person, EXPORT_KIND)
        if to is None:
            return "mailed"
        token = self._request_by_mail(
            person, EXPORT_KIND, {}, action=None, to=to, expires_in=EXPORT_LINK_VALIDITY
        )
        if token is None:
            return "mailed"
        _ = translator(language)
        text = _(
            "You asked for a copy of everything we hold about you (Art. 15 GDPR). Download it "
            "through this link within {hours} hours:\n\n{link}\n\nIf it was not you, ignore this "
            "mail: nothing is shown to anyone until the link is followed.\n\nAll your choices, at "
            "any time: {preferences}\n",
            hours=int(EXPORT_LINK_VALIDITY.total_seconds() // 3600),
            link=self.hub.link_to("/p/export/", token, language),
            preferences=self.hub.preference_link(person.uid, language, to=to),
        )
        try:
            self.hub.mailer.send(Mail(to, _("Your link to download a copy of your data"), text))
        except MailFailed as error:
            log.warning("hub.mail_failed", subject=person.uid, kind=EXPORT_KIND, error=str(error))
            self._unsent(token)
            return "failed"
        log.info("hub.export_mailed", subject=person.uid, client=visitor.client_hash)
        return "mailed"

    def export_link(self, token: str) -> Person:
        """The person a mailed download link (``request_export``) opens the copy of; raises
        ``LinkRefused``: changed or not ours, mailed to an address the person left, expired,
        closed, spent (``EXPORT_REUSE_WINDOW`` after its first download), or erased since."""
        row = self._open_request(token, EXPORT_KIND, allow_confirmed=True)
        now = self.ledger.clock()
        if row.lapsed_at is not None or row.expires_at <= now:
            raise LinkRefused("this download link has expired: ask for a new one on your preference page")
        if row.confirmed_at is not None and row.confirmed_at + EXPORT_REUSE_WINDOW <= now:
            raise LinkRefused(EXPORT_USED_LINK)
        with self.ledger.engine.connect() as conn:
            uid = conn.execute(select(subjects.c.uid).where(subjects.c.id == row.subject_id)).scalar_one()
        email = self.ledger.email_of(uid)
        if email is None:
            raise LinkRefused("this link opens no record any more: the record was erased")
        return Person(uid, email)

    def export_by_link(self, token: str) -> dict[str, Any]:
        """The copy a mailed download link opens (``export_link``), its first use marked (the
        reuse window runs from it)."""
        person = self.export_link(token)
        with self.ledger.engine.begin() as conn:
            conn.execute(
                update(confirmations)
                .where(
                    confirmations.c.token_hash == token_digest(token),
                    confirmations.c.kind == EXPORT_KIND,
                    confirmations.c.confirmed_at.is_(None),
                )
                .values(confirmed_at=self.ledger.clock())
            )
        return self.export(person)

    def export(self, person: Person) -> dict[str, Any]:
        """Art. 15: the same view of the record that ops export, with when, by whom and why
        processing was restricted (Art. 18) and lifted; the read is audited. On the pages only
        through a mailed link (``export_by_link``)."""
        from consentsync.export import with_restrictions  # openpyxl is slow to import: only here

        view = with_restrictions(self.ledger, self.ledger.subject_view(person.email))
        self.ledger.audit_read(person.uid, "subject.exported", actor="data subject", source=SOURCE)
        return view

    def request_erasure(
        self,
        person: Person,
        visitor: Visitor | None,
        language: str = "en",
        *,
        actor: str = "data subject",
        source: str = SOURCE,
    ) -> bool:
        """Art. 17: mails a confirmation link, to the address the person holds now; nothing is
        erased until it is followed. Returns whether the mail went out. ``actor`` and ``source``:
        who asked, where the capture API passes on an erasure asked for an address the person
        left (``Hub._erasure_awaits_holder``; ``visitor`` None)."""
        to = self._mail_to(person, "erasure")
        if to is None:
            return True
        token = self._request_by_mail(
            person, "erasure", {}, action="subject.erasure_requested", to=to, actor=actor, source=source
        )
        if token is None:
            return True
        _ = translator(language)
        text = _(
            "You asked us to erase your data. Please confirm by opening this link within {days} "
            "days:\n\n{link}\n\nIf it was not you, ignore this mail: nothing is erased until the link "
            "is followed.\n\nAll your choices, at any time: {preferences}\n",
            days=self.hub.settings.confirmation_days,
            link=self.hub.link_to("/p/erase/", token, language),
            preferences=self.hub.preference_link(person.uid, language, to=to),
        )
        try:
            self.hub.mailer.send(Mail(to, _("Please confirm the erasure of your data"), text))
        except MailFailed as error:
            log.warning("hub.mail_failed", subject=person.uid, kind="erasure", error=str(error))
            self._unsent(token)
            return False
        log.info("hub.erasure_requested", subject=person.uid, client=visitor.client_hash if visitor else None)
        return True

    def _mail_to(self, person: Person, kind: str) -> str | None:
        """The address a request's link goes to (``Hub.address_now``); None, logged, while the
        person holds none (the page answers as if it went: nothing to tell whoever asks)."""
        to = self.hub.address_now(person.uid)
        if to is None:
            log.info("hub.mail_skipped", subject=person.uid, kind=kind, reason="no_address_held")
        return to

    def _request_by_mail(
        self,
        person: Person,
        kind: str,
        row: dict[str, Any],
        *,
        action: str | None,
        what: dict[str, Any] | None = None,
        to: str | None = None,
        actor: str = "data subject",
        source: str = SOURCE,
        expires_in: timedelta | None = None,
    ) -> str | None:
        """Keeps a request (``kind``: erasure, restriction, export, new_link) whose mailed link is to
        confirm it, and its audit entry (``action``; None: none, for a new link, which changes
        nothing); returns the link's token, bound to ``to``, the address it is mailed to
        (``links.bound``), or None if one was asked for within ``NEW_LINK_INTERVAL`` and is
        still open (whoever holds the page's link could press the button again and again: the
        mail sent a moment ago is the answer). ``expires_in``: how long the link works
        (default ``hub.confirmation_days``)."""
        token = secrets.token_urlsafe(32)
        if to is not None:
            token = bound(self.ledger, token, to)
        now = self.ledger.clock()
        days = self.hub.settings.confirmation_days
        with self.ledger.engine.begin() as conn:
            subject_id = conn.execute(select(subjects.c.id).where(subjects.c.uid == person.uid)).scalar_one()
            asked = conn.execute(
                select(confirmations.c.id)
                .where(
                    confirmations.c.subject_id == subject_id,
                    confirmations.c.kind == kind,
                    confirmations.c.confirmed_at.is_(None),
                    confirmations.c.lapsed_at.is_(None),  # an unsent one answers nothing
                    confirmations.c.requested_at > now - NEW_LINK_INTERVAL,
                )
                .limit(1)
            ).first()
            if asked is not None:
                return None
            # Its terms bound in the chain (``confirmation_terms``): an edited row opens nothing.
            open_confirmation(
                conn,
                now,
                token_hash=token_digest(token),
                kind=kind,
                subject_id=subject_id,
                subject_uid=person.uid,
                source=source,
                expires_at=now + (expires_in or timedelta(days=days)),
                actor=actor,
                **row,
            )
            if action is None:
                return token
            # On record from the moment it is asked, confirmed or not (Art. 5(2), Art. 12(3):
            # the controller shows when each request came and answers within a month).
            audit.append(
                conn,
                [
                    AuditRecord(
                        action,
                        {**(what or {}), "confirmation_days": days},
                        source=source,
                        actor=actor,
                        subject_uid=person.uid,
                        subject_id=subject_id,
                    )
                ],
                now,
            )
        return token

    def _unsent(self, token: str) -> None:
        """A request whose mail did not go: its link, which nobody has, is closed, so that the
        person asking again gets a mail (not "we sent you one a moment ago"). The request
        itself stays in the audit log: it was made."""
        with self.ledger.engine.begin() as conn:
            conn.execute(
                update(confirmations)
                .where(confirmations.c.token_hash == token_digest(token))
                .values(lapsed_at=self.ledger.clock())
            )

    # -- restriction of processing (Art. 18) ---------------------------------------------------

    def restricted(self, person: Person) -> bool:
        return bool(self.ledger.subject_view(person.email)["restricted"])

    def request_restriction(self, person: Person, ground: str, visitor: Visitor, language: str = "en") -> str:
        """Art. 18: mails a confirmation link; processing is restricted once it is followed, as
        an erasure is (the page's link may have been passed on: the mailbox confirms). Returns
        "mailed" (also when one went a moment ago), "failed" (the mail did not go: the request
        stays on record) or "already" (restricted now: nothing is asked)."""
        if ground not in RESTRICTION_GROUNDS:
            raise InvalidInput(f"unknown ground of restriction: {ground!r}")
        if self.restricted(person):
            return "already"
        to = self._mail_to(person, "restriction")
        if to is None:
            return "mailed"
        # The ground is kept in the confirmation's channel column: the table has no other.
        token = self._request_by_mail(
            person,
            "restriction",
            {"channel": ground},
            action="subject.restriction_requested",
            what={"ground": ground},
            to=to,
        )
        if token is None:
            return "mailed"
        _ = translator(language)
        text = _(
            "You asked us to restrict the processing of your data (Art. 18 GDPR). Please confirm by "
            "opening this link within {days} days:\n\n{link}\n\nOnce you confirm, we only store your "
            "data and contact you for nothing, until the restriction is lifted; we tell you before we "
            "lift it. If it was not you, ignore this mail: nothing changes until the link is "
            "followed.\n\nAll your choices, at any time: {preferences}\n",
            days=self.hub.settings.confirmation_days,
            link=self.hub.link_to("/p/restrict/", token, language),
            preferences=self.hub.preference_link(person.uid, language, to=to),
        )
        subject = _("Please confirm the restriction of the processing of your data")
        try:
            self.hub.mailer.send(Mail(to, subject, text))
        except MailFailed as error:
            log.warning("hub.mail_failed", subject=person.uid, kind="restriction", error=str(error))
            self._unsent(token)
            return "failed"
        log.info("hub.restriction_requested", subject=person.uid, client=visitor.client_hash)
        return "mailed"

    def restriction_pending(self, token: str) -> dict[str, Any]:
        """The open restriction request a link confirms: its ground and whether it was
        confirmed (raises ``LinkRefused``: also once the restriction it confirmed was lifted,
        so that the used link never shows a restriction that no longer holds)."""
        row = self._used_restriction_link(token)
        return {"ground": row.channel, "confirmed": row.confirmed_at is not None}

    def _used_restriction_link(self, token: str) -> Any:
        """The restriction request ``token`` opens; a link already used is refused
        (``LIFTED_LINK``) once the restriction it confirmed was lifted."""
        row = self._open_request(token, "restriction", allow_confirmed=True)
        if row.confirmed_at is not None:
            with self.ledger.engine.connect() as conn:
                now = conn.execute(
                    select(subjects.c.restricted).where(subjects.c.id == row.subject_id)
                ).scalar()
            if not now:
                raise LinkRefused(LIFTED_LINK)
        return row

    def confirm_restriction(self, token: str) -> dict[str, Any]:
        """The person followed the link and confirmed: processing is restricted (Art. 18), the
        reason naming the ground. Confirming again, or once restricted otherwise, changes nothing;
        a used link whose restriction was lifted since is refused, never answered "restricted"."""
        row = self._used_restriction_link(token)
        if row.confirmed_at is not None:
            return {"restricted": True, "already": True}
        with self.ledger.engine.connect() as conn:
            uid = conn.execute(select(subjects.c.uid).where(subjects.c.id == row.subject_id)).scalar_one()
        email = self.ledger.email_of(uid)
        if email is None:
            raise LinkRefused("this link opens no record any more: the record was erased")
        letter, why = RESTRICTION_GROUNDS.get(row.channel, ("", "no ground kept"))
        reason = (
            f"asked for by the person on the preference page (Art. 18(1)({letter}): {why}), "
            "confirmed through a mailed link"
        )
        already = False
        try:
            self.ledger.restrict(email, restricted=True, reason=reason, actor="data subject", source=SOURCE)
        except InvalidInput:  # restricted meanwhile (by ops, or through another link)
            already = True
        with self.ledger.engine.begin() as conn:
            conn.execute(
                update(confirmations)
                .where(confirmations.c.id == row.id, confirmations.c.confirmed_at.is_(None))
                .values(confirmed_at=self.ledger.clock())
            )
        log.info("hub.restriction_confirmed", subject=uid, already=already)
        return {"restricted": True, "already": already}

    def _open_request(self, token: str, kind: str, *, allow_confirmed: bool = False) -> Any:
        with self.ledger.engine.connect() as conn:
            row = conn.execute(
                select(confirmations).where(
                    confirmations.c.token_hash == token_digest(token), confirmations.c.kind == kind
                )
            ).one_or_none()
            erased = (
                None
                if row is None
                else conn.execute(
                    select(subjects.c.erased_at).where(subjects.c.id == row.subject_id)
                ).scalar()
            )
            if row is not None:
                refuse_unless_bound(conn, row)
        if row is None:
            raise LinkRefused("this confirmation link is not valid: it may have been cut or changed")
        if erased is not None:
            raise LinkRefused("this link opens no record any more: the record was erased")
        self._refuse_if_sent_elsewhere(row, token)
        if row.confirmed_at is not None and allow_confirmed:
            return row
        if row.expires_at <= self.ledger.clock():
            raise LinkRefused("this confirmation link has expired: ask again on your preference page")
        return row

    def erasure_pending(self, token: str) -> None:
        """Raises ``LinkRefused`` unless ``token`` is an open erasure confirmation."""
        self._open_erasure(token)

    def _open_erasure(self, token: str) -> Any:
        with self.ledger.engine.connect() as conn:
            row = conn.execute(
                select(confirmations).where(
                    confirmations.c.token_hash == token_digest(token), confirmations.c.kind == "erasure"
                )
            ).one_or_none()
            if row is not None:
                refuse_unless_bound(conn, row)
        if row is None:
            raise LinkRefused("this confirmation link is not valid: it may have been cut or changed")
        if row.confirmed_at is not None:
            raise LinkRefused("this erasure was confirmed already: the data is gone")
        if row.expires_at <= self.ledger.clock():
            raise LinkRefused("this confirmation link has expired: ask again on your preference page")
        self._refuse_if_sent_elsewhere(row, token)
        return row

    def _refuse_if_sent_elsewhere(self, row: Any, token: str) -> None:
        """A request's link mailed to an address its person no longer holds (``links.
        sent_elsewhere``) is refused as an expired one: whoever has that mailbox now may be
        someone else, and must not erase or restrict the person."""
        with reading(self.ledger.engine) as conn:
            elsewhere = sent_elsewhere(conn, self.ledger, row.subject_id, mailed_tag(token))
        if elsewhere:
            raise LinkRefused("this confirmation link has expired: ask again on your preference page")

    def confirm_erasure(self, token: str) -> dict[str, Any]:
        row = self._open_erasure(token)
        with self.ledger.engine.connect() as conn:
            uid = conn.execute(select(subjects.c.uid).where(subjects.c.id == row.subject_id)).scalar_one()
        email = self.ledger.email_of(uid)
        # Erased first, then marked: a stop in between leaves a link that finds the record gone.
        result = (
            None if email is None else self.ledger.erase(email, reason=ERASURE_REASON, actor="data subject")
        )
        with self.ledger.engine.begin() as conn:
            conn.execute(
                update(confirmations)
                .where(confirmations.c.id == row.id)
                .values(confirmed_at=self.ledger.clock())
            )
        log.info("hub.erasure_confirmed", subject=uid)
        if result is None:  # erased meanwhile by other means
            return {"erased": True, "already": True}
        return {"erased": True, "already": False, "suppression_id": result["suppression_id"]}
