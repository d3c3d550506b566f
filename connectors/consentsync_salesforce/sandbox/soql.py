"""A small SOQL implementation for the sandbox: a tokenizer, a recursive-descent parser and a
binder that checks names and literal types against the org's schema.

Supported, following the SOQL and SOSL Reference:

* ``SELECT f1, f2, ... | COUNT() FROM Object``
* ``WHERE`` with ``=``, ``!=``, ``<>``, ``<``, ``<=``, ``>``, ``>=``, ``LIKE``, ``IN (...)``,
  ``NOT IN (...)``, ``NOT``, ``AND``, ``OR`` and parentheses. Mixing AND with OR at one level
  without parentheses is a ``MALFORMED_QUERY`` ("unexpected token: OR"), as in Salesforce.
* literals: single-quoted strings with backslash escapes (``\\'``, ``\\\\``, ``\\n``, ``\\t``, ...,
  and ``\\%``/``\\_`` for LIKE), unquoted datetimes (``2026-11-23T03:21:24Z``, ``+00:00``,
  ``.000+0000``), dates, numbers, ``true``/``false``/``null``.
* ``ORDER BY f [ASC|DESC] [NULLS FIRST|LAST], ...`` (nulls first by default; text sorts
  case-insensitively), ``LIMIT n``, ``OFFSET n``.

Semantics: text ``=``/``IN``/``LIKE`` compare case-insensitively; ``!=`` and ``NOT IN`` also
match null; range comparisons never match null; a quoted literal compared with a datetime or
boolean field is rejected (``INVALID_FIELD``, "... should not be enclosed in quotes"); a string
that is not an id compared with an id field is ``INVALID_QUERY_FILTER_OPERATOR`` ("invalid ID
field"). Not supported (answered ``MALFORMED_QUERY``): relationship paths, sub-queries,
aggregate functions other than ``COUNT()``, date literals such as ``TODAY``, GROUP BY, bind
variables.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from consentsync_salesforce.sandbox.ids import to18

__all__ = ["BoundQuery", "Query", "SoqlError", "bind", "no_such_column", "parse", "parse_datetime_literal"]

TEXT_TYPES = frozenset({"string", "email", "picklist", "phone", "textarea", "url", "combobox"})
ID_TYPES = frozenset({"id", "reference"})

# SOQL's reserved words, by what they do (an identifier spelled as one, in any letter case, is it).
_CLAUSE_WORDS = ("SELECT", "FROM", "WHERE", "GROUP", "HAVING", "ORDER", "BY", "LIMIT", "OFFSET")
_OPERATOR_WORDS = ("AND", "OR", "NOT", "IN", "LIKE", "INCLUDES", "EXCLUDES")
_ORDERING_WORDS = ("ASC", "DESC", "NULLS", "FIRST", "LAST")
_OTHER_WORDS = ("TRUE", "FALSE", "NULL", "WITH", "FOR", "USING")
_KEYWORDS = frozenset((*_CLAUSE_WORDS, *_OPERATOR_WORDS, *_ORDERING_WORDS, *_OTHER_WORDS))

_DATETIME_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})")
_PARTIAL_DATETIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T[0-9:.]*")
_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_NUMBER_RE = re.compile(r"[+-]?\d+(?:\.\d+)?")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
#: A string literal's backslash escapes (the letters in either case: ``\N`` is ``\n``).
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}


class SoqlError(Exception):
    """A query Salesforce would refuse: ``error_code`` (MALFORMED_QUERY, INVALID_FIELD,
    INVALID_TYPE, INVALID_QUERY_FILTER_OPERATOR, ...) and the message in Salesforce's layout (the
    query excerpt, a caret, "ERROR at Row:r:Column:c", the reason)."""

    def __init__(self, error_code: str, reason: str, soql: str | None = None, pos: int | None = None):
        self.error_code = error_code
        self.reason = reason
        self.message = _render(reason, soql, pos)
        super().__init__(f"{error_code}: {self.message}")


def _render(reason: str, soql: str | None, pos: int | None) -> str:
    if soql is None or pos is None:
        return reason
    pos = max(0, min(pos, len(soql)))
    line_start = soql.rfind("\n", 0, pos) + 1
    line_end = soql.find("\n", pos)
    line_end = len(soql) if line_end == -1 else line_end
    row = soql.count("\n", 0, pos) + 1
    col = pos - line_start + 1
    start = max(line_start, pos - 60)
    excerpt = soql[start:line_end][:120]
    caret = " " * (pos - start) + "^"
    return f"\n{excerpt}\n{caret}\nERROR at Row:{row}:Column:{col}\n{reason}"


# --------------------------------------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # IDENT STRING NUMBER DATETIME DATE OP LPAREN RPAREN COMMA EOF
    text: str
    pos: int
    value: Any = None
    # For STRING: each character with whether it was backslash-escaped (LIKE needs to know).
    chars: tuple[tuple[str, bool], ...] = ()

    @property
    def keyword(self) -> str | None:
        if self.kind == "IDENT" and self.text.upper() in _KEYWORDS:
            return self.text.upper()
        return None


def parse_datetime_literal(text: str) -> dt.datetime | None:
    """Parse a SOQL datetime literal (``2026-11-23T03:21:24Z``, ``...+00:00``, ``...+0000``, with
    optional fractional seconds) to an aware UTC datetime; None when it is not one."""
    match = _DATETIME_RE.fullmatch(text)
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        micro = int((fraction or ".0")[1:].ljust(6, "0")[:6])
        value = dt.datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=dt.UTC
        )
    except ValueError:
        return None
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        offset = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        value = value - sign * offset
    return value


def tokenize(soql: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    n = len(soql)
    while i < n:
        char = soql[i]
        if char.isspace():
            i += 1
            continue
        if char == "'":
            token, i = _read_string(soql, i)
            tokens.append(token)
            continue
        if char.isdigit() or (char in "+-" and i + 1 < n and soql[i + 1].isdigit()):
            token, i = _read_number_like(soql, i)
            tokens.append(token)
            continue
        if char.isalpha() or char == "_":
            match = _IDENT_RE.match(soql, i)
            assert match is not None
            tokens.append(Token("IDENT", match.group(), i))
            i = match.end()
            continue
        two = soql[i : i + 2]
        if two in ("!=", "<>", "<=", ">="):
            tokens.append(Token("OP", two, i))
            i += 2
            continue
        if char in "=<>":
            tokens.append(Token("OP", char, i))
            i += 1
            continue
        if char in "(),":
            kind = {"(": "LPAREN", ")": "RPAREN", ",": "COMMA"}[char]
            tokens.append(Token(kind, char, i))
            i += 1
            continue
        if char == ":":
            raise SoqlError("MALFORMED_QUERY", "Bind variables only allowed in Apex code", soql, i)
        raise SoqlError("MALFORMED_QUERY", f"line 1:{i} no viable alternative at character '{char}'", soql, i)
    tokens.append(Token("EOF", "<EOF>", n))
    return tokens


def _read_string(soql: str, start: int) -> tuple[Token, int]:
    chars: list[tuple[str, bool]] = []
    i = start + 1
    n = len(soql)
    while i < n:
        char = soql[i]
        if char == "'":
            value = "".join(c for c, _ in chars)
            return Token("STRING", soql[start : i + 1], start, value, tuple(chars)), i + 1
        if char == "\\":
            if i + 1 >= n:
                break
            nxt = soql[i + 1]
            escaped = _ESCAPES.get(nxt.lower() if nxt in "NRTBF" else nxt)
            if escaped is not None:
                chars.append((escaped, True))
                i += 2
                continue
            if nxt in "%_":
                chars.append((nxt, True))
                i += 2
                continue
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", soql[i + 2 : i + 6] or ""):
                chars.append((chr(int(soql[i + 2 : i + 6], 16)), True))
                i += 6
                continue
            raise SoqlError(
                "MALFORMED_QUERY",
                f"Invalid string literal '{soql[start + 1 : i + 2]}'. "
                f"Illegal character sequence '\\{nxt}' in string literal.",
                soql,
                i,
            )
        chars.append((char, False))
        i += 1
    raise SoqlError("MALFORMED_QUERY", f"line 1:{n} mismatched character '<EOF>' expecting '''", soql, n)


def _read_number_like(soql: str, start: int) -> tuple[Token, int]:
    match = _DATETIME_RE.match(soql, start)
    if match:
        end = match.end()
        if end < len(soql) and (soql[end].isalnum() or soql[end] in ".:"):
            raise SoqlError(
                "MALFORMED_QUERY", f"line 1:{end} no viable alternative at character '{soql[end]}'", soql, end
            )
        text = match.group()
        value = parse_datetime_literal(text)
        if value is None:
            raise SoqlError("MALFORMED_QUERY", f"Invalid datetime: {text}", soql, start)
        return Token("DATETIME", text, start, value), end
    partial = _PARTIAL_DATETIME_RE.match(soql, start)
    if partial:
        end = partial.end()
        shown = soql[end] if end < len(soql) else "<EOF>"
        raise SoqlError(
            "MALFORMED_QUERY", f"line 1:{end} no viable alternative at character '{shown}'", soql, end
        )
    match = _DATE_RE.match(soql, start)
    if match:
        end = match.end()
        try:
            value = dt.date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
        except ValueError:
            raise SoqlError("MALFORMED_QUERY", f"Invalid date: {match.group()}", soql, start) from None
        return Token("DATE", match.group(), start, value), end
    match = _NUMBER_RE.match(soql, start)
    assert match is not None
    text = match.group()
    value: int | float = float(text) if "." in text else int(text)
    return Token("NUMBER", text, start, value), match.end()


# --------------------------------------------------------------------------------------------- syntax


@dataclass(frozen=True, slots=True)
class FieldRef:
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class Comparison:
    field: FieldRef
    op: str  # = != < <= > >= LIKE IN NOTIN
    values: tuple[Token, ...]
    op_pos: int


@dataclass(frozen=True, slots=True)
class Logical:
    op: str  # AND / OR
    items: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Any


@dataclass(frozen=True, slots=True)
class OrderItem:
    field: FieldRef
    descending: bool
    nulls_first: bool


@dataclass(frozen=True, slots=True)
class Query:
    soql: str
    fields: tuple[FieldRef, ...]
    is_count: bool
    sobject: str
    sobject_pos: int
    where: Any
    order_by: tuple[OrderItem, ...]
    limit: int | None
    offset: int | None


class _Parser:
    def __init__(self, soql: str) -> None:
        self.soql = soql
        self.tokens = tokenize(soql)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        token = self.tokens[self.i]
        if token.kind != "EOF":
            self.i += 1
        return token

    def unexpected(self, token: Token | None = None) -> SoqlError:
        token = token or self.tok
        shown = token.text if token.keyword in ("AND", "OR") else f"'{token.text}'"
        return SoqlError("MALFORMED_QUERY", f"unexpected token: {shown}", self.soql, token.pos)

    def expect_keyword(self, word: str) -> Token:
        if self.tok.keyword != word:
            raise self.unexpected()
        return self.advance()

    def field_ref(self) -> FieldRef:
        token = self.tok
        if token.kind != "IDENT" or token.keyword is not None:
            raise self.unexpected()
        self.advance()
        return FieldRef(token.text, token.pos)

    def parse(self) -> Query:
        self.expect_keyword("SELECT")
        fields: list[FieldRef] = []
        is_count = False
        if (
            self.tok.kind == "IDENT"
            and self.tok.text.upper() == "COUNT"
            and self.tokens[self.i + 1].kind == "LPAREN"
        ):
            self.advance()
            self.advance()
            if self.tok.kind != "RPAREN":
                raise SoqlError(
                    "MALFORMED_QUERY",
                    "only COUNT() is supported by this sandbox (no aggregate functions)",
                    self.soql,
                    self.tok.pos,
                )
            self.advance()
            is_count = True
        else:
            while True:
                if self.tok.kind == "LPAREN":
                    raise SoqlError(
                        "MALFORMED_QUERY",
                        "sub-queries are not supported by this sandbox",
                        self.soql,
                        self.tok.pos,
                    )
                ref = self.field_ref()
                if self.tok.kind == "LPAREN":
                    raise SoqlError(
                        "MALFORMED_QUERY",
                        f"function {ref.name}() is not supported by this sandbox",
                        self.soql,
                        ref.pos,
                    )
                fields.append(ref)
                if self.tok.kind != "COMMA":
                    break
                self.advance()
        self.expect_keyword("FROM")
        if self.tok.kind != "IDENT" or self.tok.keyword is not None:
            raise self.unexpected()
        obj = self.advance()
        where = None
        if self.tok.keyword == "WHERE":
            self.advance()
            where = self.condition()
        order: list[OrderItem] = []
        if self.tok.keyword == "ORDER":
            self.advance()
            self.expect_keyword("BY")
            while True:
                ref = self.field_ref()
                descending = False
                if self.tok.keyword in ("ASC", "DESC"):
                    descending = self.advance().keyword == "DESC"
                nulls_first = True
                if self.tok.keyword == "NULLS":
                    self.advance()
                    if self.tok.keyword not in ("FIRST", "LAST"):
                        raise self.unexpected()
                    nulls_first = self.advance().keyword == "FIRST"
                order.append(OrderItem(ref, descending, nulls_first))
                if self.tok.kind != "COMMA":
                    break
                self.advance()
        limit = offset = None
        if self.tok.keyword == "LIMIT":
            self.advance()
            limit = self.integer()
        if self.tok.keyword == "OFFSET":
            self.advance()
            offset = self.integer()
            if offset > 2000:
                raise SoqlError(
                    "NUMBER_OUTSIDE_VALID_RANGE",
                    "Maximum SOQL offset allowed is 2000",
                    self.soql,
                    self.tok.pos,
                )
        if self.tok.kind != "EOF":
            raise self.unexpected()
        return Query(
            soql=self.soql,
            fields=tuple(fields),
            is_count=is_count,
            sobject=obj.text,
            sobject_pos=obj.pos,
            where=where,
            order_by=tuple(order),
            limit=limit,
            offset=offset,
        )

    def integer(self) -> int:
        token = self.tok
        if token.kind != "NUMBER" or not isinstance(token.value, int) or token.value < 0:
            raise self.unexpected()
        self.advance()
        return token.value

    def condition(self) -> Any:
        items = [self.term()]
        op: str | None = None
        while self.tok.keyword in ("AND", "OR"):
            word = self.tok.keyword
            if op is None:
                op = word
            elif word != op:
                # SOQL refuses to guess the precedence: AND mixed with OR needs parentheses.
                raise self.unexpected()
            self.advance()
            items.append(self.term())
        return items[0] if op is None else Logical(op, tuple(items))

    def term(self) -> Any:
        if self.tok.keyword == "NOT":
            self.advance()
            return Not(self.term())
        if self.tok.kind == "LPAREN":
            self.advance()
            inner = self.condition()
            if self.tok.kind != "RPAREN":
                raise self.unexpected()
            self.advance()
            return inner
        return self.comparison()

    def comparison(self) -> Comparison:
        ref = self.field_ref()
        token = self.tok
        if token.keyword == "NOT" and self.tokens[self.i + 1].keyword == "IN":
            self.advance()
            self.advance()
            return Comparison(ref, "NOTIN", self.value_list(), token.pos)
        if token.keyword == "IN":
            self.advance()
            return Comparison(ref, "IN", self.value_list(), token.pos)
        if token.keyword == "LIKE":
            self.advance()
            return Comparison(ref, "LIKE", (self.value(),), token.pos)
        if token.kind == "OP":
            self.advance()
            op = "!=" if token.text == "<>" else token.text
            return Comparison(ref, op, (self.value(),), token.pos)
        if token.keyword in ("INCLUDES", "EXCLUDES"):
            raise SoqlError(
                "MALFORMED_QUERY", f"{token.keyword} is not supported by this sandbox", self.soql, token.pos
            )
        raise self.unexpected()

    def value_list(self) -> tuple[Token, ...]:
        if self.tok.kind != "LPAREN":
            raise self.unexpected()
        self.advance()
        values = [self.value()]
        while self.tok.kind == "COMMA":
            self.advance()
            values.append(self.value())
        if self.tok.kind != "RPAREN":
            raise self.unexpected()
        self.advance()
        return tuple(values)

    def value(self) -> Token:
        token = self.tok
        if token.kind in ("STRING", "NUMBER", "DATETIME", "DATE"):
            return self.advance()
        if token.keyword in ("TRUE", "FALSE", "NULL"):
            return self.advance()
        if token.kind == "IDENT" and token.keyword is None:
            raise SoqlError(
                "MALFORMED_QUERY",
                f"unexpected token: '{token.text}' (date literals and field-to-field comparisons are "
                "not supported by this sandbox)",
                self.soql,
                token.pos,
            )
        raise self.unexpected()


def parse(soql: str) -> Query:
    """Parse a SOQL statement (syntax only; names are checked by :func:`bind`)."""
    return _Parser(soql).parse()


# --------------------------------------------------------------------------------------------- binding


class FieldSchema(Protocol):
    name: str
    type: str


class ObjectSchema(Protocol):
    name: str

    def field(self, name: str) -> FieldSchema | None: ...


Record = dict[str, Any]
Predicate = Callable[[Record], bool]


@dataclass
class BoundQuery:
    """A query checked against the schema: ``fields`` are canonical field names."""

    query: Query
    sobject: ObjectSchema
    fields: list[str]
    predicate: Predicate
    order: list[tuple[str, str, bool, bool]] = field(default_factory=list)  # name, type, desc, nulls_first

    @property
    def is_count(self) -> bool:
        return self.query.is_count

    def run(self, records: Sequence[Record]) -> list[Record]:
        """Filter, order, offset and limit ``records`` (given in the org's default order)."""
        rows = [r for r in records if self.predicate(r)]
        if self.order:
            rows.sort(key=functools.cmp_to_key(self._compare))
        if self.query.offset:
            rows = rows[self.query.offset :]
        if self.query.limit is not None:
            rows = rows[: self.query.limit]
        return rows

    def _compare(self, a: Record, b: Record) -> int:
        for name, ftype, descending, nulls_first in self.order:
            va = _sort_value(ftype, a.get(name))
            vb = _sort_value(ftype, b.get(name))
            if va is None or vb is None:
                if va is None and vb is None:
                    continue
                a_first = (va is None) == nulls_first
                return -1 if a_first else 1
            if va == vb:
                continue
            result = -1 if va < vb else 1
            return -result if descending else result
        return 0


def _sort_value(ftype: str, value: Any) -> Any:
    if value is None:
        return None
    if ftype in TEXT_TYPES:
        return value.casefold()
    return value


def no_such_column(name: str, sobject: str) -> str:
    return (
        f"No such column '{name}' on entity '{sobject}'. If you are attempting to use a custom field, "
        "be sure to append the '__c' after the custom field name. Please reference your WSDL or the "
        "describe call for the appropriate names."
    )


def bind(query: Query, resolve: Callable[[str], ObjectSchema | None]) -> BoundQuery:
    """Check object and field names and literal types; compile the WHERE clause."""
    soql = query.soql
    obj = resolve(query.sobject)
    if obj is None:
        raise SoqlError(
            "INVALID_TYPE",
            f"sObject type '{query.sobject}' is not supported. If you are attempting to use a custom object, "
            "be sure to append the '__c' after the entity name. Please reference your WSDL or the describe "
            "call for the appropriate names.",
            soql,
            query.sobject_pos,
        )

    def lookup(ref: FieldRef) -> FieldSchema:
        found = obj.field(ref.name)
        if found is None:
            raise SoqlError("INVALID_FIELD", no_such_column(ref.name, obj.name), soql, ref.pos)
        return found

    names: list[str] = []
    for ref in query.fields:
        canonical = lookup(ref).name
        if canonical in names:
            raise SoqlError("MALFORMED_QUERY", f"duplicate field selected: {canonical}", soql, ref.pos)
        names.append(canonical)
    predicate = _compile(query.where, lookup, soql) if query.where is not None else (lambda _r: True)
    order = []
    for item in query.order_by:
        fschema = lookup(item.field)
        order.append((fschema.name, fschema.type, item.descending, item.nulls_first))
    return BoundQuery(query=query, sobject=obj, fields=names, predicate=predicate, order=order)


def _compile(node: Any, lookup: Callable[[FieldRef], FieldSchema], soql: str) -> Predicate:
    if isinstance(node, Logical):
        parts = [_compile(item, lookup, soql) for item in node.items]
        if node.op == "AND":
            return lambda r: all(p(r) for p in parts)
        return lambda r: any(p(r) for p in parts)
    if isinstance(node, Not):
        inner = _compile(node.item, lookup, soql)
        return lambda r: not inner(r)
    assert isinstance(node, Comparison)
    fschema = lookup(node.field)
    name, ftype = fschema.name, fschema.type
    if node.op == "LIKE":
        if ftype not in TEXT_TYPES:
            raise SoqlError(
                "INVALID_QUERY_FILTER_OPERATOR", f"invalid operator on {ftype} field: LIKE", soql, node.op_pos
            )
        token = node.values[0]
        if token.kind != "STRING":
            raise SoqlError(
                "INVALID_FIELD",
                f"value of filter criterion for field '{name}' must be of type string and should be enclosed "
                "in quotes",
                soql,
                token.pos,
            )
        pattern = _like_regex(token)
        return lambda r: (v := r.get(name)) is not None and pattern.fullmatch(v) is not None
    if ftype == "boolean" and node.op in ("<", "<=", ">", ">="):
        raise SoqlError(
            "INVALID_QUERY_FILTER_OPERATOR",
            f"invalid operator on boolean field: {node.op}",
            soql,
            node.op_pos,
        )
    literals = [_literal(token, name, ftype, soql) for token in node.values]

    def value_of(record: Record) -> Any:
        return _sort_value(ftype, record.get(name))

    if node.op in ("IN", "NOTIN"):
        members = set(literals)
        if node.op == "IN":
            return lambda r: value_of(r) in members
        return lambda r: value_of(r) not in members
    literal = literals[0]
    op = node.op
    if op == "=":
        return lambda r: value_of(r) == literal
    if op == "!=":
        return lambda r: value_of(r) != literal
    if literal is None:
        return lambda _r: False
    compare = {
        "<": lambda a: a < literal,
        "<=": lambda a: a <= literal,
        ">": lambda a: a > literal,
        ">=": lambda a: a >= literal,
    }[op]
    return lambda r: (v := value_of(r)) is not None and compare(v)


def _literal(token: Token, name: str, ftype: str, soql: str) -> Any:
    """Convert a literal token to the comparable value for a field of type ``ftype``."""
    if token.keyword == "NULL":
        return None

    def wrong_type(expected: str, rule: str = " and should not be enclosed in quotes") -> SoqlError:
        message = f"value of filter criterion for field '{name}' must be of type {expected}{rule}"
        return SoqlError("INVALID_FIELD", message, soql, token.pos)

    if ftype == "boolean":
        if token.keyword in ("TRUE", "FALSE"):
            return token.keyword == "TRUE"
        raise wrong_type("boolean", " and should not be enclosed in quotes" if token.kind == "STRING" else "")
    # The literal kind each type takes, and the type's name in Salesforce's message.
    typed = {"datetime": ("DATETIME", "dateTime"), "date": ("DATE", "date")}
    typed.update(dict.fromkeys(("int", "double", "currency", "percent"), ("NUMBER", ftype)))
    if ftype in typed:
        kind, expected = typed[ftype]
        if token.kind == kind:
            return token.value
        raise wrong_type(expected)
    if token.kind != "STRING":
        raise wrong_type("string", " and should be enclosed in quotes")
    if ftype in ID_TYPES:
        normalized = to18(token.value)
        if normalized is None:
            raise SoqlError(
                "INVALID_QUERY_FILTER_OPERATOR", f"invalid ID field: {token.value}", soql, token.pos
            )
        return normalized
    return token.value.casefold()


def _like_regex(token: Token) -> re.Pattern[str]:
    parts = []
    for char, escaped in token.chars:
        if not escaped and char == "%":
            parts.append(".*")
        elif not escaped and char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)
