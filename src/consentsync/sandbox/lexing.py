"""Tokens for the sandboxes' query languages (a ``$filter``, an archive restriction, a SQL-like
query): a language says its tokens as one regular expression with a named group per kind, and
:func:`tokenize` reads a text into them; a parser walks them as a :class:`TokenStream`, and
:func:`joined` and :func:`chained` read the ``and``/``or`` chains every one of them has. The
grammar, its errors and its wording stay in each vendor's sandbox."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

__all__ = ["Token", "TokenStream", "chained", "joined", "tokenize"]

_T = TypeVar("_T")
#: A compiled condition: called with what a language's filter tests (a row; a row and its store).
_P = TypeVar("_P", bound=Callable[..., bool])


@dataclass(frozen=True, slots=True)
class Token:
    """One token: its kind (the name of the group that matched), its text and where it starts."""

    kind: str
    text: str
    position: int = 0

    def is_word(self, *words: str) -> bool:
        """Whether this is one of ``words`` (lower case), as a ``word`` token in any letter case."""
        return self.kind == "word" and self.text.lower() in words


class TokenStream:
    """A parser's place in its tokens, for a parser to subclass: the next token (:meth:`peek`,
    None past the last), and taking it (:meth:`take`), which past the last raises the language's
    own error for a text that ends too early (:meth:`end_error`)."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.index = 0

    def peek(self) -> Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise self.end_error()
        self.index += 1
        return token

    def end_error(self) -> Exception:
        """The language's error for a text that ends where a token is wanted."""
        raise NotImplementedError(f"{type(self).__name__} must say its end_error")


def tokenize(pattern: re.Pattern[str], text: str, refuse: Callable[[int], Exception]) -> list[Token]:
    """``text`` as the tokens of ``pattern``, white space between them skipped; where nothing (or
    only an empty match) matches, raises ``refuse(position)``: the language's own syntax error."""
    tokens: list[Token] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            return tokens
        match = pattern.match(text, position)
        if match is None or match.end() == position or match.lastgroup is None:
            raise refuse(position)
        tokens.append(Token(match.lastgroup, match.group(match.lastgroup), position))
        position = match.end()


def joined(operand: Callable[[], _T], joiner: Callable[[], bool]) -> list[_T]:
    """One ``operand`` or more, read for as long as ``joiner`` reads the word that joins them (an
    ``and``, an ``or``): the terms of a boolean chain, which the language then combines."""
    terms = [operand()]
    while joiner():
        terms.append(operand())
    return terms


def chained(
    operand: Callable[[], _P], joiner: Callable[[], bool], combine: Callable[[Iterable[bool]], bool]
) -> _P:
    """A boolean chain (:func:`joined`) compiled into one condition: the ``operand`` alone, or a
    condition true when ``combine`` (``any`` for an ``or``, ``all`` for an ``and``) says so of its
    terms, each called with the same arguments."""
    terms = joined(operand, joiner)
    if len(terms) == 1:
        return terms[0]

    def combined(*args: Any) -> bool:
        return combine(term(*args) for term in terms)

    return cast(_P, combined)
