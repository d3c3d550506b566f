"""VTQL, Vtiger's webservice query language, as the Vtiger sandbox understands it.

Written from Vtiger's own lexer and grammar (``include/Webservices/VTQL_Lexer.php`` and
``VTQL_Parser.php``):

    SELECT * | count(*) | col, col ... FROM Module
        [WHERE col op value [AND|OR col op value] ...]
        [ORDER BY col, col ... [ASC|DESC]]
        [LIMIT n | LIMIT offset, n] ;

* The statement must end with ``;``.
* Operators: ``=``, ``!=``, ``<``, ``>``, ``<=``, ``>=``, ``LIKE``, ``IN (v, v ...)``. There are no
  parentheses around conditions (the grammar never got them); the conditions are handed to MySQL
  as written, so AND binds tighter than OR.
* Values are integers or single-quoted strings. A quote inside a string is written twice
  (``'O''Brien'``), which is what Vtiger's lexer accepts; the text then reaches MySQL inside
  quotes, so MySQL's backslash escapes apply too (``\\\\`` is one backslash, ``\\'`` a quote). An
  empty string ``''`` does not lex.
* ``ASC``/``DESC`` is appended after the last ORDER BY column, so MySQL applies it to that column
  only.
* At most 100 rows whatever LIMIT says: ``LIMIT n`` is capped at 100, ``LIMIT offset, n`` keeps the
  offset and caps n; without LIMIT, 100.

Comparisons follow MySQL with a case-insensitive collation: text compares without regard to case,
an empty (NULL) field matches no comparison at all (``!=`` included), NULLs sort first, and ties in
ORDER BY come back in record-id order. The ``id`` column compares by the record's number: a value
``'12x5'`` means record 5.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from consentsync.sandbox.lexing import Token as _Token
from consentsync.sandbox.lexing import TokenStream, tokenize

__all__ = ["MAX_ROWS", "Condition", "Query", "VtqlError", "parse", "quote"]

MAX_ROWS = 100

_TOKEN = re.compile(
    r"""(?:
        (?P<string>'(?:[^']|'')+')
      | (?P<number>[+-]?\d+(?![A-Za-z_]))
      | (?P<word>\w+)
      | (?P<op><=|>=|!=|=|<|>)
      | (?P<punct>[(),*;])
    )""",
    re.VERBOSE,
)
_MYSQL_ESCAPES = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a"}
_OPERATORS = ("=", "!=", "<", ">", "<=", ">=")


class VtqlError(Exception):
    """A query Vtiger refuses: ``code`` is the webservice error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _syntax(message: str) -> VtqlError:
    return VtqlError("QUERY_SYNTAX_ERROR", message)


def quote(value: str) -> str:
    """A string literal for VTQL: quotes doubled, backslashes doubled (for MySQL)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def unquote(literal: str) -> str:
    """The text a quoted literal stands for, as MySQL reads it."""
    body = literal[1:-1]
    out: list[str] = []
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\" and index + 1 < len(body):
            nxt = body[index + 1]
            out.append(_MYSQL_ESCAPES.get(nxt, nxt))
            index += 2
        elif char == "'" and body[index + 1 : index + 2] == "'":
            out.append("'")
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Condition:
    column: str
    operator: str  # =, !=, <, >, <=, >=, LIKE, IN
    values: tuple[str | int, ...]


@dataclass
class Query:
    module: str
    columns: list[str]  # ["*"] or ["count(*)"] or names
    where: list[list[Condition]] = field(default_factory=list)  # OR of ANDs
    order_by: list[str] = field(default_factory=list)
    descending: bool = False
    offset: int = 0
    limit: int = MAX_ROWS

    @property
    def is_count(self) -> bool:
        return self.columns == ["count(*)"]

    def referenced_columns(self) -> list[str]:
        names = [] if self.columns in (["*"], ["count(*)"]) else list(self.columns)
        names += [c.column for group in self.where for c in group]
        return names + list(self.order_by)


def _tokens(text: str) -> list[_Token]:
    """The query's tokens (string, number, word, op, punct), then an ``end`` token."""
    tokens = tokenize(_TOKEN, text, lambda at: _syntax(f"Unexpected input at line1: {text[at]}"))
    return [*tokens, _Token("end", "", len(text))]


class _Parser(TokenStream):
    def __init__(self, text: str) -> None:
        super().__init__(_tokens(text))

    @property
    def current(self) -> _Token:
        """The next token: the ``end`` token at the end (never taken for good)."""
        token = self.peek()
        if token is None:
            raise self.end_error()
        return token

    def end_error(self) -> VtqlError:
        return _syntax("Syntax Error on line 1: the query ends too early")

    def fail(self, expected: str) -> VtqlError:
        token = self.current
        shown = token.text if token.kind != "end" else "end of query"
        return _syntax(f"Syntax Error on line 1: token '{shown}' Unexpected, expected one of: {expected}")

    def expect_word(self, *words: str) -> _Token:
        if not self.current.is_word(*words):
            raise self.fail(",".join(w.upper() for w in words))
        return self.take()

    def expect_punct(self, char: str) -> None:
        if self.current.kind != "punct" or self.current.text != char:
            raise self.fail(char)
        self.take()

    def name(self, what: str) -> str:
        token = self.current
        if token.kind != "word" or token.text.lower() in _KEYWORDS:
            raise self.fail(what)
        return self.take().text

    def value(self) -> str | int:
        token = self.take()
        if token.kind == "string":
            return unquote(token.text)
        if token.kind == "number":
            return int(token.text)
        self.index -= 1
        raise self.fail("VALUE")

    def integer(self) -> int:
        token = self.take()
        if token.kind != "number":
            self.index -= 1
            raise self.fail("VALUE")
        return int(token.text)

    def parse(self) -> Query:
        self.expect_word("select")
        columns = self.select_list()
        self.expect_word("from")
        query = Query(module=self.name("TABLENAME"), columns=columns)
        if self.current.is_word("where"):
            self.take()
            query.where = self.conditions()
        if self.current.is_word("order"):
            self.take()
            self.expect_word("by")
            query.order_by.append(self.name("COLUMNNAME"))
            while self.current.kind == "punct" and self.current.text == ",":
                self.take()
                query.order_by.append(self.name("COLUMNNAME"))
            if self.current.is_word("asc", "desc"):
                query.descending = self.take().text.lower() == "desc"
        if self.current.is_word("limit"):
            self.take()
            first = self.integer()
            if self.current.kind == "punct" and self.current.text == ",":
                self.take()
                query.offset, query.limit = first, self.integer()
            else:
                query.limit = first
            if query.offset < 0 or query.limit < 0:
                raise VtqlError("DATABASE_QUERY_ERROR", "Database query error")
            query.limit = min(query.limit, MAX_ROWS)
        if self.current.kind == "end":
            raise self.fail("SEMICOLON")
        self.expect_punct(";")
        if self.current.kind != "end":
            raise self.fail("end of query")
        return query

    def select_list(self) -> list[str]:
        if self.current.kind == "punct" and self.current.text == "*":
            self.take()
            return ["*"]
        if self.current.is_word("count"):
            self.take()
            self.expect_punct("(")
            self.expect_punct("*")
            self.expect_punct(")")
            return ["count(*)"]
        columns = [self.name("COLUMNNAME")]
        while self.current.kind == "punct" and self.current.text == ",":
            self.take()
            columns.append(self.name("COLUMNNAME"))
        return columns

    def conditions(self) -> list[list[Condition]]:
        groups: list[list[Condition]] = [[self.condition()]]
        while self.current.is_word("and", "or"):
            joiner = self.take().text.lower()
            condition = self.condition()
            if joiner == "and":
                groups[-1].append(condition)
            else:
                groups.append([condition])
        return groups

    def condition(self) -> Condition:
        column = self.name("COLUMNNAME")
        token = self.current
        if token.kind == "op" and token.text in _OPERATORS:
            self.take()
            return Condition(column, token.text, (self.value(),))
        if token.is_word("like"):
            self.take()
            return Condition(column, "LIKE", (self.value(),))
        if token.is_word("in"):
            self.take()
            self.expect_punct("(")
            values = [self.value()]
            while self.current.kind == "punct" and self.current.text == ",":
                self.take()
                values.append(self.value())
            self.expect_punct(")")
            return Condition(column, "IN", tuple(values))
        raise self.fail("EQ,LT,GT,LTE,GTE,NE,IN,LIKE")


_KEYWORDS = frozenset({"select", "from", "where", "and", "or", "order", "by", "limit", "like", "in"})


def parse(text: str) -> Query:
    """Parses one VTQL statement; raises ``VtqlError`` (QUERY_SYNTAX_ERROR) when Vtiger would."""
    return _Parser(text).parse()


# -- evaluation --------------------------------------------------------------------------------

ColumnKind = str  # "id", "datetime", "number", "text"


def _crm_number(value: str | int) -> int:
    """A record id ('12x5') or number as MySQL would compare it with the crmid column."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*\d+x(\d+)\s*", value)
    if match:
        return int(match.group(1))
    leading = re.match(r"\s*[+-]?\d+", value)
    return int(leading.group(0)) if leading else 0


def _comparable(kind: ColumnKind, value: Any) -> Any:
    if value is None:
        return None
    if kind == "id":
        return _crm_number(value)
    if kind == "datetime":
        text = str(value).strip()
        return text + " 00:00:00" if len(text) == 10 else text
    if kind == "number":
        try:
            return float(value)
        except (TypeError, ValueError):
            return 0.0
    return str(value).casefold()


def _like(pattern: str) -> re.Pattern[str]:
    out = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            out.append(re.escape(pattern[index + 1]))
            index += 2
            continue
        out.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
        index += 1
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


def _matches(condition: Condition, kind: ColumnKind, stored: Any) -> bool:
    left = _comparable(kind, stored)
    if left is None:
        return False  # NULL matches no comparison, != included
    if condition.operator == "LIKE":
        return _like(str(condition.values[0])).fullmatch(str(stored)) is not None
    rights = [_comparable(kind, v) for v in condition.values]
    if condition.operator == "IN":
        return left in rights
    right = rights[0]
    return {
        "=": left == right,
        "!=": left != right,
        "<": left < right,
        ">": left > right,
        "<=": left <= right,
        ">=": left >= right,
    }[condition.operator]


def select(
    query: Query,
    rows: Sequence[Mapping[str, Any]],
    kind_of: Callable[[str], ColumnKind],
) -> list[Mapping[str, Any]]:
    """The rows a query selects, ordered and limited (columns are projected by the caller).

    ``rows`` come in record-id order; ``kind_of`` says how a column compares.
    """
    chosen = [
        row
        for row in rows
        if not query.where
        or any(all(_matches(c, kind_of(c.column), row.get(c.column)) for c in group) for group in query.where)
    ]
    # Stable sorts, last key first: ties keep record-id order, as MySQL's plan usually does here.
    for position in range(len(query.order_by) - 1, -1, -1):
        column = query.order_by[position]
        kind = kind_of(column)
        reverse = query.descending and position == len(query.order_by) - 1
        chosen.sort(
            key=lambda row, c=column, k=kind: (
                (0, "") if row.get(c) in (None, "") else (1, _comparable(k, row.get(c)))
            ),
            reverse=reverse,
        )
    return chosen[query.offset : query.offset + query.limit]
