"""The data behind the SuperOffice sandbox: persons, consent purposes, the Privacy lists (legal
basis, source) and the consents between them (SuperOffice's ConsentPerson rows), in memory.

What SuperOffice documents, and the sandbox keeps:

* two default purposes, "Sales and service" and "E-marketing"; a person created without a consent
  gets "Sales and service" with the tenant's default legal basis (legitimate interest unless the
  administrator changed it) and a source set automatically;
* a consent is one row per person and purpose with a legal basis, a source, a comment and the
  times it was registered and last updated (UTC); a withdrawn consent stays a row whose legal
  basis is "Withdrawn" (HasConsent answers false for it);
* SetConsent ("Set a specified type of consent on the person") creates the person's consent for
  the purpose or changes the one there, a withdrawn one included (its legal basis, source and
  comment; registered kept, updated moved); RemoveConsent "turns off" the consent.

What it chooses where SuperOffice's documentation is silent (each is a constructor argument, so a
test can take the other view): the list keys (STORE, EMARKETING, CONSENT, LEGITIMATE, WITHDRAWN,
...); that RemoveConsent marks the consent withdrawn (``remove_mode="withdraw"``) rather than
deleting the row (``remove_mode="delete"``); that times are kept to the whole second, so many
rows share one updated time (``keep_fractions=True`` keeps microseconds instead, which the
archive sorts by but does not show, as SuperOffice's own sample times suggest it may); that the
archive's ``before``/``after`` on a date are strict (``date_bounds_inclusive=True`` takes the day
itself too). SetConsent refuses a comment longer than ConsentPerson.comment's 255 UTF-16 code
units (400 ArgumentException: the sandbox's choice of answer for what the database refuses).

A person begun with :meth:`SuperOfficeTenant.begin_late_person` (a save whose transaction commits
late) has its id and times from the start, but no read sees it or its consents until
:meth:`SuperOfficeTenant.commit_late`. A deleted person (``DELETE /api/v1/Person/{id}``, or the
user's delete) is gone from every read: SuperOffice's soft delete hides it from the API, and keeps
it in the recycle bin ("by default kept in the recycle bin for 14 days"), from where
:meth:`SuperOfficeTenant.restore_person` (a user's Restore, ``Agents/Person/Undelete``) brings it
back with its consent rows as they were, no updated time moved (SuperOffice documents none; the
ConsentPerson table has no deleted date);
:meth:`SuperOfficeTenant.purge_recycle_bin` purges it for good.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from consentsync.sandbox.server import SandboxError

__all__ = [
    "COMMENT_LENGTH",
    "DEFAULT_LEGAL_BASES",
    "DEFAULT_PURPOSES",
    "DEFAULT_SOURCES",
    "ConsentRow",
    "ListItem",
    "Person",
    "SuperOfficeTenant",
    "TenantError",
    "utf16_units",
]

KEY_RE = re.compile(r"^[A-Za-z0-9]+$")  # SuperOffice's own rule for list item keys
#: ConsentPerson.comment: String(255) (database reference, table ConsentPerson), an nvarchar
#: whose length counts UTF-16 code units (a character outside the BMP, an emoji, counts 2).
COMMENT_LENGTH = 255


def utf16_units(text: str) -> int:
    """The length of ``text`` as SQL Server's nvarchar counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


@dataclass(frozen=True, slots=True)
class ListItem:
    id: int
    key: str
    name: str
    active: bool = True


# (key, name): Privacy lists as a fresh tenant might hold them (keys unconfirmed, see the module doc).
DEFAULT_PURPOSES = (("STORE", "Sales and service"), ("EMARKETING", "E-marketing"))
DEFAULT_LEGAL_BASES = (
    ("CONSENT", "Consent"),
    ("LEGITIMATE", "Legitimate interest"),
    ("SOFTOPTIN", "Email - soft opt-in"),
    ("CONTRACT", "Contract"),
    ("LEGALOBLIGATION", "Legal obligation"),
    ("VITALINTEREST", "Vital interests"),
    ("PUBLICINTEREST", "Public interest"),
    ("WITHDRAWN", "Withdrawn"),
)
DEFAULT_SOURCES = (
    ("MANUAL", "Manually"),
    ("SYSTEM", "System"),
    ("FORM", "Form"),
    ("EMAIL", "E-mail"),
    ("IMPORT", "Import"),
)


@dataclass(slots=True)
class Person:
    id: int
    first_name: str
    last_name: str
    email: str | None
    registered: dt.datetime
    updated: dt.datetime
    no_mailings: bool = False
    middle_name: str = ""
    title: str = ""
    # Phone numbers by PersonEntity list: MobilePhones, OfficePhones, PrivatePhones.
    phones: dict[str, list[str]] = field(default_factory=dict)


@dataclass(slots=True)
class ConsentRow:
    id: int
    person_id: int
    purpose: ListItem
    legal_base: ListItem
    source: ListItem
    comment: str
    registered: dt.datetime
    updated: dt.datetime
    registered_by: int
    updated_by: int


class TenantError(SandboxError):
    """A request the tenant refuses; ``status`` and ``code`` (SuperOffice's ErrorType) say how the
    server answers."""


def _items(pairs: Iterable[tuple[str, str]], start: int) -> list[ListItem]:
    return [ListItem(start + i, key, name) for i, (key, name) in enumerate(pairs)]


class SuperOfficeTenant:
    """One SuperOffice database. Thread-safe; every change stamps the tenant's clock."""

    def __init__(
        self,
        *,
        purposes: Iterable[tuple[str, str]] = DEFAULT_PURPOSES,
        legal_bases: Iterable[tuple[str, str]] = DEFAULT_LEGAL_BASES,
        sources: Iterable[tuple[str, str]] = DEFAULT_SOURCES,
        default_purpose: str = "STORE",
        default_legal_base: str | None = "LEGITIMATE",
        default_source: str = "SYSTEM",
        withdrawn_legal_base: str = "WITHDRAWN",
        remove_mode: Literal["withdraw", "delete"] = "withdraw",
        clock: Callable[[], dt.datetime] | None = None,
        associate_id: int = 5,
        keep_fractions: bool = False,
        date_bounds_inclusive: bool = False,
        sorts_dates_by_day: bool = False,
        recycle_bin_days: int = 14,
    ) -> None:
        self.purposes = _items(purposes, 1)
        self.legal_bases = _items(legal_bases, 1)
        self.sources = _items(sources, 1)
        self.default_purpose = default_purpose
        self.default_legal_base = default_legal_base
        self.default_source = default_source
        self.withdrawn_legal_base = withdrawn_legal_base
        self.remove_mode = remove_mode
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.associate_id = associate_id
        # Keep fractions of a second (the archive still shows whole seconds but sorts by them).
        self.keep_fractions = keep_fractions
        # Whether the archive's date restrictions ``before``/``after`` take their own day too
        # (SuperOffice does not say; the sandbox's default: strictly another day).
        self.date_bounds_inclusive = date_bounds_inclusive
        # Whether the archive orders a ``date`` column by its date part only, ties by the next
        # sort column (SuperOffice does not say; the restrictions use "only the date part").
        self.sorts_dates_by_day = sorts_dates_by_day
        self.persons: dict[int, Person] = {}
        self.consents: dict[int, ConsentRow] = {}
        # The recycle bin: persons deleted (soft-deleted, person.DeletedDate set) with their
        # consent rows and when, hidden from every read; restorable for ``recycle_bin_days``
        # (SuperOffice's default: 14), then purged for good.
        self.recycle_bin: dict[int, tuple[Person, list[ConsentRow], dt.datetime]] = {}
        self.recycle_bin_days = recycle_bin_days
        # Persons whose saving transaction has not committed: invisible to every read.
        self.uncommitted: set[int] = set()
        self._lock = threading.RLock()
        self._person_ids = itertools.count(1)
        self._consent_ids = itertools.count(1)

    # ------------------------------------------------------------------ lists

    def now(self) -> dt.datetime:
        """The tenant's time (UTC), to the whole second unless ``keep_fractions``."""
        return self._stamp(self.clock())

    def _stamp(self, moment: dt.datetime) -> dt.datetime:
        moment = moment.astimezone(dt.UTC)
        return moment if self.keep_fractions else moment.replace(microsecond=0)

    def _find(self, items: list[ListItem], key: str | None, what: str) -> ListItem:
        if not isinstance(key, str) or not key:
            raise TenantError(400, "ArgumentException", f"{what} is required")
        for item in items:
            if item.key.lower() == key.lower():
                return item
        raise TenantError(400, "ArgumentException", f"Unknown {what} '{key}'")

    def purpose(self, key: str | None) -> ListItem:
        return self._find(self.purposes, key, "consent purpose")

    def legal_base(self, key: str | None) -> ListItem:
        return self._find(self.legal_bases, key, "legal base")

    def source(self, key: str | None) -> ListItem:
        return self._find(self.sources, key, "consent source")

    def add_purpose(self, key: str, name: str) -> ListItem:
        if not KEY_RE.match(key):
            raise ValueError(f"a purpose key is letters and digits only: {key!r}")
        with self._lock:
            item = ListItem(max((p.id for p in self.purposes), default=0) + 1, key, name)
            self.purposes.append(item)
            return item

    # ------------------------------------------------------------------ persons

    def create_person(
        self, first_name: str, last_name: str, email: str | None, *, at: dt.datetime | None = None
    ) -> Person:
        """A new person; like SuperOffice, with the default purpose at the default legal basis."""
        with self._lock:
            stamp = self._stamp(at or self.clock())
            person = Person(next(self._person_ids), first_name, last_name, email, stamp, stamp)
            self.persons[person.id] = person
            if self.default_legal_base:
                self._set(
                    person.id, self.default_purpose, self.default_source, self.default_legal_base, "", stamp
                )
            return person

    def begin_late_person(
        self,
        first_name: str,
        last_name: str,
        email: str | None,
        consents: Iterable[tuple[str, str, str, str]] = (),
    ) -> Person:
        """A person (and its ``(purpose, source, legal basis, comment)`` consents) saved in a
        transaction that commits late: ids and times are given now, nothing shows until
        :meth:`commit_late`."""
        with self._lock:
            person = self.create_person(first_name, last_name, email)
            for purpose, source, legal_base, comment in consents:
                self._set(person.id, purpose, source, legal_base, comment, person.updated)
            self.uncommitted.add(person.id)
            return person

    def commit_late(self, person_id: int) -> None:
        with self._lock:
            if person_id not in self.uncommitted:
                raise KeyError(person_id)
            self.uncommitted.discard(person_id)

    def visible(self, person_id: int) -> bool:
        with self._lock:
            return person_id in self.persons and person_id not in self.uncommitted

    def person(self, person_id: Any) -> Person:
        if isinstance(person_id, bool) or not isinstance(person_id, int):
            raise TenantError(400, "ArgumentException", f"PersonId must be an integer, not {person_id!r}")
        with self._lock:
            found = self.persons.get(person_id) if person_id not in self.uncommitted else None
        if found is None:
            raise TenantError(404, "EntityNotFoundException", f"Person with id {person_id} not found")
        return found

    def delete_person(self, person_id: int) -> None:
        """A delete (``DELETE Person/{id}``, a user's delete): SuperOffice's soft delete. The
        person and its consent rows leave every read and wait in the recycle bin, restorable."""
        with self._lock:
            person = self.persons.pop(person_id, None)
            rows = [r for r in self.consents.values() if r.person_id == person_id]
            for row in rows:
                del self.consents[row.id]
            if person is not None:
                self.recycle_bin[person_id] = (person, rows, self.clock())

    def restore_person(self, person_id: Any) -> Person:
        """A restore from the recycle bin (the user's Recycle bin > Restore, or ``POST
        Agents/Person/Undelete {Id}``): the person and its consent rows come back as they were.
        SuperOffice documents nothing a restore stamps; ConsentPerson has no deleted date, so its
        rows are not touched: the sandbox moves no updated time (the person's included). 404
        where the id is not in the recycle bin (never deleted, or purged)."""
        if isinstance(person_id, bool) or not isinstance(person_id, int):
            raise TenantError(400, "ArgumentException", f"Id must be an integer, not {person_id!r}")
        with self._lock:
            self.purge_recycle_bin()
            held = self.recycle_bin.pop(person_id, None)
            if held is None:
                raise TenantError(
                    404, "EntityNotFoundException", f"Person with id {person_id} is not in the recycle bin"
                )
            person, rows, _deleted_at = held
            self.persons[person_id] = person
            for row in rows:
                self.consents[row.id] = row
            return person

    def purge_recycle_bin(self, *, everything: bool = False) -> list[int]:
        """Purges (deletes for good) the persons deleted longer than ``recycle_bin_days`` ago,
        or all of them: they can never be restored. Answers their ids."""
        with self._lock:
            limit = self.clock() - dt.timedelta(days=self.recycle_bin_days)
            gone = [
                person_id
                for person_id, (_person, _rows, deleted_at) in self.recycle_bin.items()
                if everything or deleted_at <= limit
            ]
            for person_id in gone:
                del self.recycle_bin[person_id]
            return gone

    def patch_person(self, person_id: Any, changes: dict[str, Any]) -> Person:
        """PATCH Person/{id}: ``changes`` by PersonEntity property (lower-cased): firstname,
        middlename, lastname, title (text or null), emails, mobilephones, officephones,
        privatephones (lists of ``{"Value": ...}``; empty or null clears). The person's updated
        time moves; its consents' do not."""
        texts = {
            "firstname": "first_name",
            "middlename": "middle_name",
            "lastname": "last_name",
            "title": "title",
        }
        lists = {"emails", "mobilephones", "officephones", "privatephones"}
        with self._lock:
            person = self.person(person_id)
            for name, value in changes.items():
                if name in texts:
                    if value is not None and not isinstance(value, str):
                        raise TenantError(400, "ArgumentException", f"{name} must be a string")
                    setattr(person, texts[name], value or "")
                elif name in lists:
                    values = _list_values(name, value)
                    if name == "emails":
                        person.email = values[0] if values else None
                    else:
                        person.phones[name] = values
                else:
                    raise TenantError(400, "ArgumentException", f"PersonEntity has no property '{name}'")
            if not (person.first_name or person.last_name):
                raise TenantError(400, "ArgumentException", "A person needs a first or last name")
            person.updated = self.now()
            return person

    # ------------------------------------------------------------------ consents

    def consent_rows(self, person_id: int | None = None) -> list[ConsentRow]:
        with self._lock:
            rows = [r for r in self.consents.values() if r.person_id not in self.uncommitted]
        return [r for r in rows if person_id is None or r.person_id == person_id]

    def consent(self, person_id: int, purpose_key: str) -> ConsentRow | None:
        purpose = self.purpose(purpose_key)
        with self._lock:
            for row in self.consents.values():
                if row.person_id == person_id and row.purpose.id == purpose.id:
                    return row
        return None

    def set_consent(
        self,
        person_id: Any,
        purpose_key: Any,
        source_key: Any,
        legal_base_key: Any,
        comment: Any = "",
        *,
        at: dt.datetime | None = None,
    ) -> ConsentRow:
        """SetConsent: creates the person's consent for the purpose, or changes its legal basis,
        source and comment; the updated time moves either way."""
        if comment is not None and not isinstance(comment, str):
            raise TenantError(400, "ArgumentException", "Comment must be a string")
        if comment and utf16_units(comment) > COMMENT_LENGTH:
            # ConsentPerson.comment is String(255), counted in UTF-16 code units (nvarchar).
            raise TenantError(
                400,
                "ArgumentException",
                f"Comment is {utf16_units(comment)} characters; ConsentPerson.comment holds {COMMENT_LENGTH}",
            )
        with self._lock:
            self.person(person_id)
            return self._set(person_id, purpose_key, source_key, legal_base_key, comment or "", at)

    def _set(
        self,
        person_id: int,
        purpose_key: Any,
        source_key: Any,
        legal_base_key: Any,
        comment: str,
        at: dt.datetime | None,
    ) -> ConsentRow:
        purpose = self.purpose(purpose_key)
        source = self.source(source_key)
        legal_base = self.legal_base(legal_base_key)
        stamp = self._stamp(at or self.clock())
        existing = next(
            (r for r in self.consents.values() if r.person_id == person_id and r.purpose.id == purpose.id),
            None,
        )
        if existing is None:
            row = ConsentRow(
                next(self._consent_ids),
                person_id,
                purpose,
                legal_base,
                source,
                comment,
                stamp,
                stamp,
                self.associate_id,
                self.associate_id,
            )
        else:
            row = replace(
                existing,
                legal_base=legal_base,
                source=source,
                comment=comment,
                updated=stamp,
                updated_by=self.associate_id,
            )
        self.consents[row.id] = row
        return row

    def remove_consent(self, person_id: Any, purpose_key: Any, *, at: dt.datetime | None = None) -> None:
        """RemoveConsent ("turn off consent"): the row is marked withdrawn, or deleted, as
        ``remove_mode`` says. Removing a consent the person does not have changes nothing."""
        with self._lock:
            self.person(person_id)
            row = self.consent(person_id, purpose_key)
            if row is None:
                return
            if self.remove_mode == "delete":
                del self.consents[row.id]
                return
            stamp = self._stamp(at or self.clock())
            self.consents[row.id] = replace(
                row,
                legal_base=self.legal_base(self.withdrawn_legal_base),
                updated=stamp,
                updated_by=self.associate_id,
            )

    def has_consent(self, person_id: Any, purpose_key: Any) -> bool:
        """HasConsent: a consent that is withdrawn answers false."""
        self.person(person_id)
        row = self.consent(person_id, purpose_key)
        return row is not None and row.legal_base.key != self.withdrawn_legal_base

    # ------------------------------------------------------------------ seeding

    def seed(self, persons: int, *, seed: int = 0, start: dt.datetime | None = None) -> dict[str, int]:
        """Persons with consents as a working tenant holds them: every one on Sales and service
        (mostly legitimate interest, some contract), about half with an e-marketing consent, some
        of those withdrawn, a few duplicates of an address and a few without one. Times crowd into
        few seconds (about 25 changes a second), as a bulk import leaves them."""
        rng = random.Random(seed)
        origin = (start or self.now() - dt.timedelta(days=1)).replace(microsecond=0)
        summary = {"persons": 0, "emarketing": 0, "withdrawn": 0}
        has_emarketing = any(p.key == "EMARKETING" for p in self.purposes)
        with self._lock:
            first = len(self.persons)
            for index in range(persons):
                stamp = origin + dt.timedelta(seconds=index // 25)
                number = first + index
                email: str | None = f"person{number}@example.com"
                if number % 37 == 5 and number > 5:
                    email = f"person{number - 1}@example.com"  # two persons, one address
                elif number % 53 == 7:
                    email = None
                person = self.create_person(f"Person{number}", f"Seed{seed}", email, at=stamp)
                summary["persons"] += 1
                if rng.random() < 0.1:
                    self._set(person.id, "STORE", "MANUAL", "CONTRACT", "", stamp)
                if has_emarketing and rng.random() < 0.5:
                    withdrawn = rng.random() < 0.2
                    legal = self.withdrawn_legal_base if withdrawn else "CONSENT"
                    self._set(person.id, "EMARKETING", "FORM", legal, "", stamp)
                    summary["emarketing"] += 1
                    summary["withdrawn"] += int(withdrawn)
        return summary


def _list_values(name: str, value: Any) -> list[str]:
    """A PersonEntity list (``[{"Value": ...}, ...]``) as its values; null is empty."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise TenantError(400, "ArgumentException", f"{name} must be a list of {{Value: ...}} objects")
    return [str(v.get("Value")) for v in value if v.get("Value")]
