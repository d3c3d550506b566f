"""The ConsentPurpose archive provider of the SuperOffice sandbox:
``GET /api/v1/archive/ConsentPurpose?$select=&$filter=&$orderby=&$top=&$skip=``.

As SuperOffice documents it: the provider lists consent purposes, and, when a query names
``consentPerson/...`` columns, one row per consent joined with its person; ``$filter`` takes
OData-ish restrictions joined with ``and`` / ``or`` (``and`` binds tighter) and brackets; strings
are single-quoted with ``\\'`` for a quote and ``\\\\`` for a backslash. Dates in answers are ISO
strings in UTC. The operators depend on the column's restriction type (GET Archive/{provider},
"Filter Operators"; "Archive Provider Restriction Types"): numbers and text take ``eq ne gt ge
lt le``, ``= < <= > >=``, ``equals greater less unequals``, ``oneOf``/``in``, ``between``,
``begins contains``; a ``date`` column (``consentPerson/updatedDate``, the ConsentPurpose
provider's reference) takes only ``before``, ``date`` (equals), ``after``, ``dateBetween`` and the
unary ``beforeToday``, ``today``, ``afterToday``, and for it "only the date part is used": a
row's time and the value given are both cut to their day (UTC, the time zone the connector asks
for). Any other operator on a date column is 400 ArgumentException.

Where the documentation is silent the sandbox chooses (and says so): ``before`` and ``after`` are
strict (another day) unless the tenant's ``date_bounds_inclusive`` says they take the day itself
too, ``dateBetween`` takes both its days; date values are ISO (``'2026-11-23T03:21:24'``, with or
without ``Z``, fractions allowed; the time is dropped) or SuperOffice's dotted dates
(``'2026.11.23'``); a list column (legal basis, source) answers its display name and is
restricted by key, name or id; ``PrimaryKey`` of a joined row is the consent's id; an unknown
column is 400 ArgumentException.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from consentsync.sandbox.lexing import Token as _Token
from consentsync.sandbox.lexing import TokenStream, chained, tokenize
from consentsync_superoffice.sandbox.tenant import ConsentRow, ListItem, SuperOfficeTenant, TenantError

__all__ = ["ARCHIVE_COLUMNS", "ArchiveQuery", "format_so_datetime", "parse_so_datetime", "run_query"]


def format_so_datetime(moment: dt.datetime, *, tagged: bool = False) -> str:
    """A created/updated time: UTC whatever the tenant's base time zone or the request's
    SO-TimeZone (SuperOffice "SOTimezone": "Created and updated date ... are always UTC"), with no
    zone unless the request asked for ``includeTZOffset`` (then tagged as UTC)."""
    text = moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return text + "Z" if tagged else text


def parse_so_datetime(text: str) -> dt.datetime:
    """ISO (any fraction, ``Z`` or an offset; none means UTC) or ``YYYY.MM.DD``."""
    value = text.strip()
    dotted = re.fullmatch(r"(\d{4})\.(\d{1,2})\.(\d{1,2})", value)
    if dotted:
        year, month, day = (int(part) for part in dotted.groups())
        return dt.datetime(year, month, day, tzinfo=dt.UTC)
    match = re.fullmatch(
        r"(\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?)?)(\.\d+)?(Z|[+-]\d{2}:?\d{2})?", value
    )
    if match is None:
        raise ValueError(value)
    base, fraction, zone = match.groups()
    moment = dt.datetime.fromisoformat(base.replace(" ", "T"))
    if fraction:
        moment = moment.replace(microsecond=int((fraction[1:] + "000000")[:6]))
    if zone and zone != "Z":
        zone = zone if ":" in zone else zone[:3] + ":" + zone[3:]
        moment = moment.replace(tzinfo=dt.datetime.fromisoformat("2000-01-01T00:00:00" + zone).tzinfo)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


@dataclass(frozen=True, slots=True)
class _Row:
    purpose: ListItem
    consent: ConsentRow | None


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str  # int, bool, string, date, listAny
    read: Callable[[_Row, SuperOfficeTenant], Any]

    @property
    def joined(self) -> bool:
        return self.name.startswith("consentPerson/")


def _person_value(attribute: str) -> Callable[[_Row, SuperOfficeTenant], Any]:
    def read(row: _Row, tenant: SuperOfficeTenant) -> Any:
        assert row.consent is not None
        person = tenant.persons.get(row.consent.person_id)
        return getattr(person, attribute) if person is not None else None

    return read


def _consent(read: Callable[[ConsentRow], Any]) -> Callable[[_Row, SuperOfficeTenant], Any]:
    def wrapped(row: _Row, _tenant: SuperOfficeTenant) -> Any:
        assert row.consent is not None
        return read(row.consent)

    return wrapped


ARCHIVE_COLUMNS: dict[str, Column] = {
    column.name: column
    for column in (
        Column("consentPurposeId", "int", lambda r, _t: r.purpose.id),
        Column("active", "bool", lambda r, _t: r.purpose.active),
        Column("key", "string", lambda r, _t: r.purpose.key),
        Column("name", "string", lambda r, _t: r.purpose.name),
        Column("consentPerson/consentPersonId", "int", _consent(lambda c: c.id)),
        Column("consentPerson/personId", "int", _consent(lambda c: c.person_id)),
        Column(
            "consentPerson/active",
            "bool",
            lambda r, t: r.consent is not None and r.consent.legal_base.key != t.withdrawn_legal_base,
        ),
        Column("consentPerson/legalBase", "listAny", _consent(lambda c: c.legal_base)),
        Column("consentPerson/consentSource", "listAny", _consent(lambda c: c.source)),
        Column("consentPerson/comment", "string", _consent(lambda c: c.comment)),
        Column("consentPerson/hasComment", "bool", _consent(lambda c: bool(c.comment))),
        Column("consentPerson/updatedBy", "int", _consent(lambda c: c.updated_by)),
        Column("consentPerson/updatedDate", "date", _consent(lambda c: c.updated)),
        Column("consentPerson/consentPurpose/key", "string", _consent(lambda c: c.purpose.key)),
        Column("consentPerson/consentPurpose/name", "string", _consent(lambda c: c.purpose.name)),
        Column("consentPerson/person/personId", "int", _consent(lambda c: c.person_id)),
        Column("consentPerson/person/firstName", "string", _person_value("first_name")),
        Column("consentPerson/person/lastName", "string", _person_value("last_name")),
        Column("consentPerson/person/email/emailAddress", "string", _person_value("email")),
        Column("consentPerson/person/personUpdatedDate", "date", _person_value("updated")),
        Column("consentPerson/person/personRegisteredDate", "date", _person_value("registered")),
        Column("consentPerson/person/personNoMail", "bool", _person_value("no_mailings")),
    )
}


def _bad(message: str) -> TenantError:
    return TenantError(400, "ArgumentException", message)


def _column(name: str) -> Column:
    column = ARCHIVE_COLUMNS.get(name)
    if column is None:
        raise _bad(f"Unknown column '{name}' in archive provider ConsentPurpose")
    return column


# -- $filter ------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"(?:(?P<string>'(?:[^'\\]|\\.)*')|(?P<number>-?\d+(?:\.\d+)?)(?![\w/])|(?P<punct>[(),])"
    r"|(?P<symbol><=|>=|<>|=|<|>)|(?P<word>[A-Za-z_][A-Za-z0-9_/:.]*))"
)
_OPERATORS = {
    "eq": "eq", "=": "eq", "equals": "eq", "is": "eq",
    "ne": "ne", "<>": "ne", "unequals": "ne", "isnot": "ne",
    "gt": "gt", ">": "gt", "greater": "gt", "after": "gt",
    "ge": "ge", ">=": "ge",
    "lt": "lt", "<": "lt", "less": "lt", "before": "lt",
    "le": "le", "<=": "le",
    "oneof": "in", "in": "in", "notoneof": "notin",
    "between": "between", "datebetween": "between",
    "begins": "begins", "notbegins": "notbegins", "contains": "contains", "notcontains": "notcontains",
    "set": "eq",
}  # fmt: skip
_MULTI = {"in", "notin", "between"}
#: The operators of a ``date`` column (only the date part is used), and how many values each takes.
_DATE_OPERATORS = {
    "before": 1, "date": 1, "after": 1, "datebetween": 2,
    "beforetoday": 0, "today": 0, "aftertoday": 0,
}  # fmt: skip


def _tokens(text: str) -> list[_Token]:
    def refuse(at: int) -> Exception:
        return _bad(f"Cannot parse restriction at position {at}: {text[at : at + 20]!r}")

    return [
        _Token("string", re.sub(r"\\(.)", r"\1", token.text[1:-1]), token.position)
        if token.kind == "string"
        else token
        for token in tokenize(_TOKEN, text, refuse)
    ]


Predicate = Callable[[_Row, SuperOfficeTenant], bool]


class _Parser(TokenStream):
    def __init__(self, text: str) -> None:
        super().__init__(_tokens(text))
        self.joined = False

    def end_error(self) -> TenantError:
        return _bad("Restriction ends too early")

    def parse(self) -> Predicate:
        predicate = self.disjunction()
        if self.peek() is not None:
            raise _bad(f"Unexpected '{self.peek().text}' in restriction")  # type: ignore[union-attr]
        return predicate

    def _keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "word" and token.text.lower() == word:
            self.index += 1
            return True
        return False

    def disjunction(self) -> Predicate:
        return chained(self.conjunction, lambda: self._keyword("or"), any)

    def conjunction(self) -> Predicate:
        return chained(self.primary, lambda: self._keyword("and"), all)

    def primary(self) -> Predicate:
        token = self.take()
        if token.kind == "punct" and token.text == "(":
            inner = self.disjunction()
            closing = self.take()
            if closing.text != ")":
                raise _bad(f"Expected ')' but found '{closing.text}'")
            return inner
        if token.kind != "word":
            raise _bad(f"Expected a column name but found '{token.text}'")
        column = _column(token.text)
        self.joined = self.joined or column.joined
        op_token = self.take()
        if column.type == "date":
            return self.date_restriction(column, op_token.text)
        operator = _OPERATORS.get(op_token.text.lower())
        if operator is None:
            raise _bad(f"Unknown operator '{op_token.text}' for column '{column.name}'")
        values = self.values() if operator in _MULTI else [self.value()]
        typed = [_typed(column, v) for v in values]
        return _predicate(column, operator, typed)

    def date_restriction(self, column: Column, operator: str) -> Predicate:
        lowered = operator.lower()
        count = _DATE_OPERATORS.get(lowered)
        if count is None:
            raise _bad(
                f"Operator '{operator}' does not apply to date column '{column.name}': "
                "before, date, after, dateBetween, beforeToday, today, afterToday"
            )
        values = [] if count == 0 else self.values() if count > 1 else [self.value()]
        if len(values) != count:
            raise _bad(f"{operator} on '{column.name}' needs {count} value(s)")
        return _date_predicate(column, lowered, [_typed(column, v).date() for v in values])

    def value(self) -> str:
        token = self.take()
        if token.kind not in ("string", "number", "word"):
            raise _bad(f"Expected a value but found '{token.text}'")
        return token.text

    def values(self) -> list[str]:
        opening = self.take()
        if opening.text != "(":
            return [opening.text]
        out = [self.value()]
        while True:
            token = self.take()
            if token.text == ")":
                return out
            if token.text != ",":
                raise _bad(f"Expected ',' or ')' but found '{token.text}'")
            out.append(self.value())


def _typed(column: Column, text: str) -> Any:
    try:
        if column.type == "int":
            return int(text)
        if column.type == "date":
            return parse_so_datetime(text)
        if column.type == "bool":
            lowered = text.lower()
            if lowered in ("1", "true"):
                return True
            if lowered in ("0", "false"):
                return False
            raise ValueError(text)
    except ValueError:
        raise _bad(f"Cannot read '{text}' as a {column.type} value for column '{column.name}'") from None
    return text


def _comparable(value: Any, wanted: Any) -> Any:
    """A list item is compared by id (numbers) or by key or name (text)."""
    if isinstance(value, ListItem):
        if isinstance(wanted, str) and wanted.lstrip("-").isdigit():
            return value.id, int(wanted)
        if isinstance(wanted, str):
            matches = wanted.lower() in (value.key.lower(), value.name.lower())
            return (True, True) if matches else (value.key, wanted)
    return value, wanted


def _date_predicate(column: Column, operator: str, days: list[dt.date]) -> Predicate:
    """A restriction on a ``date`` column: only the date part (UTC) of the row's time is used."""

    def test(row: _Row, tenant: SuperOfficeTenant) -> bool:
        value = column.read(row, tenant)
        if value is None:
            return False
        day = value.astimezone(dt.UTC).date()
        inclusive = tenant.date_bounds_inclusive
        today = tenant.now().date()
        if operator == "before":
            return day <= days[0] if inclusive else day < days[0]
        if operator == "after":
            return day >= days[0] if inclusive else day > days[0]
        if operator == "date":
            return day == days[0]
        if operator == "datebetween":
            return days[0] <= day <= days[1]
        if operator == "today":
            return day == today
        return day < today if operator == "beforetoday" else day > today

    return test


def _predicate(column: Column, operator: str, values: list[Any]) -> Predicate:
    def test(row: _Row, tenant: SuperOfficeTenant) -> bool:
        value = column.read(row, tenant)
        if value is None:
            return operator in ("ne", "notin", "notbegins", "notcontains")
        if operator in ("in", "notin"):
            found = any(a == b for a, b in (_comparable(value, v) for v in values))
            return found if operator == "in" else not found
        if operator == "between":
            if len(values) != 2:
                raise _bad(f"between on '{column.name}' needs two values")
            return values[0] <= value <= values[1]
        if operator in ("begins", "notbegins", "contains", "notcontains"):
            text, wanted = str(value).lower(), str(values[0]).lower()
            hit = text.startswith(wanted) if "begins" in operator else wanted in text
            return not hit if operator.startswith("not") else hit
        left, right = _comparable(value, values[0])
        try:
            return {
                "eq": left == right,
                "ne": left != right,
                "gt": left > right,
                "ge": left >= right,
                "lt": left < right,
                "le": left <= right,
            }[operator]
        except TypeError:
            raise _bad(f"Operator '{operator}' does not apply to column '{column.name}'") from None

    return test


# -- the query ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ArchiveQuery:
    select: list[str]
    where: str = ""
    order_by: str = ""
    top: int | None = None
    skip: int = 0

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> ArchiveQuery:
        lowered = {key.lower(): value for key, value in params.items()}
        select = [name.strip() for name in (lowered.get("$select") or "").split(",") if name.strip()]

        def whole(name: str) -> int | None:
            raw = lowered.get(name)
            if raw is None or raw == "":
                return None
            if not raw.isdigit():
                raise _bad(f"{name} must be a whole number, not '{raw}'")
            return int(raw)

        return cls(
            select=select or ["consentPurposeId", "key", "name"],
            where=lowered.get("$filter") or "",
            order_by=lowered.get("$orderby") or "",
            top=whole("$top"),
            skip=whole("$skip") or 0,
        )


def _sort_key(value: Any, by_day: bool = False) -> tuple[int, Any]:
    if value is None:
        return (0, 0)
    if isinstance(value, ListItem):
        return (1, value.name)
    if by_day and isinstance(value, dt.datetime):
        return (1, value.astimezone(dt.UTC).date())
    return (1, value)


def run_query(
    tenant: SuperOfficeTenant, query: ArchiveQuery, *, max_top: int, tag_times: bool = False
) -> tuple[list[dict[str, Any]], bool]:
    """The page of rows the query asks for, and whether more follow it."""
    columns = [_column(name) for name in query.select]
    predicate: Predicate = lambda _r, _t: True  # noqa: E731
    joined = any(c.joined for c in columns)
    if query.where.strip():
        parser = _Parser(query.where)
        predicate = parser.parse()
        joined = joined or parser.joined
    order: list[tuple[Column, bool]] = []
    for part in (p.strip() for p in query.order_by.split(",") if p.strip()):
        name, _, direction = part.partition(" ")
        direction = direction.strip().lower() or "asc"
        if direction not in ("asc", "desc"):
            raise _bad(f"Unknown sort direction '{direction}'")
        column = _column(name.strip())
        joined = joined or column.joined
        order.append((column, direction == "desc"))
    with tenant._lock:
        if joined:
            # A person whose save has not committed shows no row (see SuperOfficeTenant.uncommitted).
            rows = [
                _Row(c.purpose, c)
                for c in sorted(tenant.consents.values(), key=lambda c: c.id)
                if c.person_id not in tenant.uncommitted
            ]
        else:
            rows = [_Row(p, None) for p in tenant.purposes]
        chosen = [row for row in rows if predicate(row, tenant)]
        for column, descending in reversed(order):
            by_day = tenant.sorts_dates_by_day and column.type == "date"
            chosen.sort(
                key=lambda row, c=column, d=by_day: _sort_key(c.read(row, tenant), d), reverse=descending
            )
        top = min(query.top if query.top is not None else max_top, max_top)
        page = chosen[query.skip : query.skip + top]
        more = len(chosen) > query.skip + top
        out = []
        for row in page:
            item: dict[str, Any] = {
                "PrimaryKey": row.consent.id if row.consent is not None else row.purpose.id,
                "EntityName": "consentPurpose",
            }
            for column in columns:
                item[column.name] = _display(column.read(row, tenant), tag_times)
            out.append(item)
    return out, more


def _display(value: Any, tag_times: bool = False) -> Any:
    if isinstance(value, ListItem):
        return value.name
    if isinstance(value, dt.datetime):
        return format_so_datetime(value, tagged=tag_times)
    if value is None:
        return ""
    return value
