"""A real subset of OData v4 ``$filter`` and ``$orderby``, as the Dataverse sandbox evaluates them.

Grammar (keywords are lower case, as OData requires)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := unary ("and" unary)*
    unary      := "not" unary | "(" expr ")" | comparison | function
    comparison := property ("eq" | "ne" | "gt" | "ge" | "lt" | "le") literal
    function   := ("contains" | "startswith" | "endswith") "(" property "," string ")"
    literal    := string | integer | decimal | true | false | null | guid | datetimeoffset

A string literal is quoted with ``'`` and a quote inside it is doubled (``'O''Brien'``); GUIDs
and DateTimeOffset values are unquoted (``contactid eq 5e0b3c2a-...``, ``modifiedon gt
2026-11-01T10:00:00Z``). Text compares case-insensitively, as Dataverse's collation does; any
comparison with null is false except ``eq null`` / ``ne null``. Malformed input raises
:class:`ODataError` with the position, answered as Dataverse's ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from consentsync.sandbox.lexing import Token as _Tok
from consentsync.sandbox.lexing import TokenStream, chained, tokenize
from consentsync.sandbox.server import SandboxError

__all__ = ["ODataError", "Predicate", "no_property", "parse_filter", "parse_orderby"]

ODATA_ERROR = "0x80060888"  # the code Dataverse gives OData syntax and schema errors

_TOKEN = re.compile(
    r"""
    (?P<string>'(?:[^']|'')*')
  | (?P<unterminated>'(?:[^']|'')*$)
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,7})?)?(?:Z|[+-]\d{2}:\d{2}))
  | (?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-]))
  | (?P<number>-?\d+(?:\.\d+)?(?![\w.]))
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[(),])
    """,
    re.VERBOSE,
)
_COMPARE = {"eq", "ne", "gt", "ge", "lt", "le"}
_FUNCTIONS = {"contains", "startswith", "endswith"}
_KIND_NAMES = {str: "Edm.String", int: "Edm.Int32", bool: "Edm.Boolean", Decimal: "Edm.Decimal"}
_OPERATOR_NAMES = {
    "eq": "Equal",
    "ne": "NotEqual",
    "gt": "GreaterThan",
    "ge": "GreaterThanOrEqual",
    "lt": "LessThan",
    "le": "LessThanOrEqual",
}

Predicate = Callable[[Mapping[str, Any]], bool]


class ODataError(SandboxError):
    """A query Dataverse refuses (400, 0x80060888 unless said otherwise)."""

    def __init__(self, message: str, code: str = ODATA_ERROR, status: int = 400) -> None:
        super().__init__(status, code, message)

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def _tokens(text: str) -> list[_Tok]:
    tokens = tokenize(_TOKEN, text, lambda at: ODataError(f"Syntax error at position {at} in '{text}'."))
    for token in tokens:
        if token.kind == "unterminated":
            raise ODataError(
                f"There is an unterminated string literal at position {token.position} in '{text}'."
            )
    return tokens


@dataclass(frozen=True, slots=True)
class _Literal:
    value: Any
    edm: str


def _literal(tok: _Tok, source: str) -> _Literal:
    if tok.kind == "string":
        return _Literal(tok.text[1:-1].replace("''", "'"), "Edm.String")
    if tok.kind == "number":
        if "." in tok.text:
            return _Literal(Decimal(tok.text), "Edm.Decimal")
        return _Literal(int(tok.text), "Edm.Int32")
    if tok.kind == "guid":
        return _Literal(tok.text.lower(), "Edm.Guid")
    if tok.kind == "datetime":
        text = tok.text.replace("Z", "+00:00")
        if re.search(r"T\d{2}:\d{2}(?:[+-]|$)", text):
            text = text[:16] + ":00" + text[16:]
        return _Literal(datetime.fromisoformat(text).astimezone(UTC), "Edm.DateTimeOffset")
    if tok.kind == "name" and tok.text in ("true", "false"):
        return _Literal(tok.text == "true", "Edm.Boolean")
    if tok.kind == "name" and tok.text == "null":
        return _Literal(None, "null")
    raise ODataError(f"Syntax error at position {tok.position} in '{source}'.")


class _Parser(TokenStream):
    def __init__(self, text: str, types: Mapping[str, str], entity: str) -> None:
        super().__init__(_tokens(text))
        self.text = text
        self.types = types  # property name -> Edm type
        self.entity = entity

    def end_error(self) -> ODataError:
        return ODataError(f"Expression expected at position {len(self.text)} in '{self.text}'.")

    def expect(self, text: str) -> None:
        tok = self.peek()
        if tok is None or tok.text != text:
            position = tok.position if tok is not None else len(self.text)
            raise ODataError(f"'{text}' expected at position {position} in '{self.text}'.")
        self.index += 1

    def parse(self) -> Predicate:
        if not self.tokens:
            raise ODataError(f"Expression expected at position 0 in '{self.text}'.")
        predicate = self.or_expr()
        extra = self.peek()
        if extra is not None:
            raise ODataError(f"Syntax error at position {extra.position} in '{self.text}'.")
        return predicate

    def or_expr(self) -> Predicate:
        return chained(self.and_expr, lambda: self._skip("or"), any)

    def and_expr(self) -> Predicate:
        return chained(self.unary, lambda: self._skip("and"), all)

    def _skip(self, word: str) -> bool:
        """Whether ``word`` comes next, moving past it if it does."""
        if (tok := self.peek()) is not None and tok.text == word:
            self.take()
            return True
        return False

    def unary(self) -> Predicate:
        tok = self.take()
        if tok.text == "not":
            inner = self.unary()
            return lambda row: not inner(row)
        if tok.text == "(":
            inner = self.or_expr()
            self.expect(")")
            return inner
        if tok.kind != "name" or tok.text in ("and", "or", "true", "false", "null"):
            raise ODataError(f"Syntax error at position {tok.position} in '{self.text}'.")
        if tok.text in _FUNCTIONS:
            return self.function(tok.text)
        return self.comparison(tok)

    def property(self, tok: _Tok) -> str:
        if tok.kind != "name" or tok.text not in self.types:
            raise no_property(tok.text, self.entity)
        return tok.text

    def function(self, name: str) -> Predicate:
        self.expect("(")
        prop = self.property(self.take())
        self.expect(",")
        tok = self.take()
        if tok.kind != "string":
            raise ODataError(f"Syntax error at position {tok.position} in '{self.text}'.")
        needle = _literal(tok, self.text).value.casefold()
        self.expect(")")
        if self.types[prop] != "Edm.String":
            raise ODataError(
                f"No function signature for the function with name '{name}' matches the specified arguments."
            )

        def test(row: Mapping[str, Any]) -> bool:
            value = row.get(prop)
            if not isinstance(value, str):
                return False
            hay = value.casefold()
            return {"contains": needle in hay, "startswith": hay.startswith(needle)}.get(
                name, hay.endswith(needle)
            )

        return test

    def comparison(self, tok: _Tok) -> Predicate:
        prop = self.property(tok)
        op_tok = self.take()
        if op_tok.text not in _COMPARE:
            raise ODataError(f"Syntax error at position {op_tok.position} in '{self.text}'.")
        operator = op_tok.text
        literal = _literal(self.take(), self.text)
        edm = self.types[prop]
        if literal.edm != "null" and not _compatible(edm, literal.edm):
            raise ODataError(
                "A binary operator with incompatible types was detected. Found operand types "
                f"'{edm}' and '{literal.edm}' for operator kind '{_OPERATOR_NAMES[operator]}'."
            )
        wanted = literal.value
        if edm == "Edm.String" and isinstance(wanted, str):
            wanted = wanted.casefold()

        def test(row: Mapping[str, Any]) -> bool:
            value = row.get(prop)
            if wanted is None or value is None:
                if operator == "eq":
                    return value is None and wanted is None
                if operator == "ne":
                    return (value is None) != (wanted is None)
                return False
            if isinstance(value, str):
                value = value.casefold()
            return _compare(value, operator, wanted)

        return test


def _compatible(edm: str, literal: str) -> bool:
    if edm == literal:
        return True
    numeric = {"Edm.Int32", "Edm.Int64", "Edm.Decimal", "Edm.Double"}
    return edm in numeric and literal in numeric


def _compare(value: Any, operator: str, wanted: Any) -> bool:
    if operator == "eq":
        return value == wanted
    if operator == "ne":
        return value != wanted
    if operator == "gt":
        return value > wanted
    if operator == "ge":
        return value >= wanted
    if operator == "lt":
        return value < wanted
    return value <= wanted


def no_property(name: str, entity: str) -> ODataError:
    return ODataError(f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{entity}'.")


def parse_filter(text: str, types: Mapping[str, str], entity: str) -> Predicate:
    """A predicate over a row (property name -> Python value) for an OData ``$filter``."""
    return _Parser(text, types, entity).parse()


def parse_orderby(text: str, types: Mapping[str, str], entity: str) -> list[tuple[str, bool]]:
    """``name [asc|desc], ...`` as (property, descending) pairs."""
    out: list[tuple[str, bool]] = []
    for part in text.split(","):
        words = part.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
            raise ODataError(f"Syntax error in '$orderby={text}'.")
        if words[0] not in types:
            raise no_property(words[0], entity)
        out.append((words[0], len(words) == 2 and words[1] == "desc"))
    return out
