"""Tokens for the sandboxes' query languages (a ``$filter``, an archive restriction, a SQL-like
query): a language says its tokens as one regular expression with a named group per kind, and
:func:`tokenize` reads a text into them. The grammar, its errors and its wording stay in each
vendor's sandbox."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Token", "joined", "tokenize"]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Token:
    """One token: its kind (the name of the group that matched), its text and where it starts."""

    kind: str
    text: str
    position: int = 0

    def is_word(self, *words: str) -> bool:
        """Whether this is one of ``words`` (lower case), as a ``word`` token in any letter case."""
        return self.kind == "word" and self.text.lower() in words


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
