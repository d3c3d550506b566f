"""YAML files written by people: parsed with a line for every value, validated with pydantic, and
every problem phrased as ``file:line: field: what is wrong: what is accepted``.

Shared by the config (config.py) and the CRM mapping files (mapping.py). A *loc* is the path to a
value inside the document, as pydantic spells it: ``("consents", 0, "status", "pull")``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

Loc = tuple[Any, ...]
Lines = dict[Loc, int]

# Tags of pydantic's tagged unions appear in error locations; a model that uses them names its
# tags in this form so that they can be taken out again before the location is shown.
TAG_PREFIX = "("


class LocatedError(ValueError):
    """A problem at a known place of the document (``loc`` is absolute)."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc


class Problem(ValueError):
    """Raised inside a pydantic validator: a problem with the value being validated, or with the
    value ``at`` below it. ``line_at`` (below ``at``) only moves the line shown, e.g. to the entry
    of a table that is wrong while the field named stays the table."""

    def __init__(self, message: str, *, at: Loc = (), line_at: Loc = ()) -> None:
        super().__init__(message)
        self.at = at
        self.line_at = line_at


# libyaml's parser where PyYAML was built with it (the wheels are): the documents come out the
# same, node for node and line for line, about nine times faster than PyYAML's pure-Python parser
# (a shipped mapping file: 0.37 ms against 3.3 ms), which every command pays for its config and
# each mapping it reads.
SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SafeDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def loads(text: str) -> Any:
    """A YAML document as plain data (``yaml.safe_load``'s, through libyaml where PyYAML has it):
    for the files the project and its kits write and read back themselves (a config edited)."""
    return yaml.load(text, Loader=SafeLoader)


def dumps(data: Any) -> str:
    """``data`` as YAML (``yaml.safe_dump``'s, through libyaml where PyYAML has it), the keys in
    their order and text as it is."""
    return yaml.dump(data, Dumper=SafeDumper, sort_keys=False, allow_unicode=True)


class Yaml12Loader(SafeLoader):  # type: ignore[misc,valid-type]
    """SafeLoader with YAML 1.2's plain scalars: only true/false are booleans, only decimal digits
    are integers, and dates stay text. PyYAML's YAML 1.1 turns ``Yes``, ``No``, ``on`` and ``off``
    into booleans, ``0123`` into 83 and ``2026-01-01`` into a date: wrong for the CRM values
    (picklist entries, codes) that mapping files quote from the CRM."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [
        (tag, pattern)
        for tag, pattern in resolvers
        if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:timestamp")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789")
)


MAX_EXPANDED_NODES = 100_000


def _expanded_size(root: yaml.Node) -> int:
    """How many values the document holds with every alias written out, counted once per node
    (an alias is the node it names: PyYAML shares it), so that a bomb is measured, not expanded."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = 1  # a recursive alias counts once rather than forever
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(key) + size(value) for key, value in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        total = min(total, MAX_EXPANDED_NODES + 1)
        sizes[id(node)] = total
        return total

    return size(root)


def read_document(
    text: str,
    path: Path,
    *,
    error: type[Exception],
    loader: type[yaml.SafeLoader] = SafeLoader,
    typed_keys: bool = False,
    unique_keys: bool = False,
) -> tuple[Any, Lines]:
    """The document's data and its line index. Invalid YAML raises ``error`` naming the line.

    ``typed_keys`` indexes mapping keys by their loaded value (``True`` for ``true:``) rather than
    their spelling, as needed where keys are data; ``unique_keys`` rejects a key written twice in
    one mapping (PyYAML would silently keep the last one).
    """
    parser = None
    try:
        parser = loader(text)  # PyYAML's own reader refuses a control character already here
        root = parser.get_single_node()
        if root is not None and _expanded_size(root) > MAX_EXPANDED_NODES:
            # Aliases of aliases ("billion laughs"): a few hundred bytes that every walk of the
            # data below (line index, ${VAR} expansion, validation) would expand without end.
            raise error(
                f"{path}: its anchors and aliases expand to more than {MAX_EXPANDED_NODES:,} values: "
                "write the repeated parts out, or alias less deeply"
            )
        data = parser.construct_document(root) if root is not None else None
        key_of: Callable[[yaml.Node], Any] = (
            (lambda node: parser.construct_object(node, deep=True))
            if typed_keys
            else (lambda node: node.value)
        )
        lines = line_index(root, key_of=key_of)
        if unique_keys:
            _check_unique_keys(root, key_of, path, error)
    except yaml.MarkedYAMLError as problem:
        mark = problem.problem_mark
        at_line = f":{mark.line + 1}" if mark else ""
        # PyYAML often notices a mistake lines after it was made: name where the open construct began.
        context = problem.context_mark
        began = f" ({problem.context} at line {context.line + 1})" if problem.context and context else ""
        raise error(f"{path}{at_line}: invalid YAML: {problem.problem}{began}") from None
    except yaml.reader.ReaderError as problem:  # a character YAML does not allow (a control character)
        line = text.count("\n", 0, max(problem.position, 0)) + 1
        raise error(
            f"{path}:{line}: invalid YAML: character #x{problem.character:04x} is not allowed "
            "(control characters other than tab and line breaks cannot appear in YAML)"
        ) from None
    except UnicodeEncodeError as problem:  # a lone surrogate (libyaml reads UTF-8)
        line = text.count("\n", 0, problem.start) + 1
        raise error(
            f"{path}:{line}: invalid YAML: text that is not valid Unicode (a lone surrogate)"
        ) from None
    finally:
        if parser is not None:
            parser.dispose()
    return data, lines


def line_index(node: yaml.Node | None, *, key_of: Callable[[yaml.Node], Any] | None = None) -> Lines:
    """Maps each path in the document to the 1-based line it starts on (a key's own line for a
    mapping entry)."""
    index: Lines = {}
    spell = key_of or (lambda key_node: key_node.value)

    def walk(current: yaml.Node, loc: Loc) -> None:
        index[loc] = current.start_mark.line + 1
        if isinstance(current, yaml.MappingNode):
            for key_node, value_node in current.value:
                key = spell(key_node) if isinstance(key_node, yaml.ScalarNode) else key_node.value
                if not _hashable(key):
                    continue
                walk(value_node, (*loc, key))
                index[(*loc, key)] = key_node.start_mark.line + 1
        elif isinstance(current, yaml.SequenceNode):
            for position, item in enumerate(current.value):
                walk(item, (*loc, position))

    if node is not None:
        walk(node, ())
    return index


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _check_unique_keys(
    node: yaml.Node | None,
    key_of: Callable[[yaml.Node], Any],
    path: Path,
    error: type[Exception],
) -> None:
    def walk(current: yaml.Node, loc: Loc) -> None:
        if isinstance(current, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in current.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = key_of(key_node)
                line = key_node.start_mark.line + 1
                if _hashable(key) and key in seen:
                    where = dotted(loc) or "the top level"
                    raise error(
                        f"{path}:{line}: duplicate key {key_node.value!r} in {where} "
                        f"(first written at line {seen[key]})"
                    )
                if _hashable(key):
                    seen[key] = line
                    walk(value_node, (*loc, key))
        elif isinstance(current, yaml.SequenceNode):
            for position, item in enumerate(current.value):
                walk(item, (*loc, position))

    if node is not None:
        walk(node, ())


def line(path: Path, lines: Lines, loc: Loc) -> str:
    """``path:N`` for the innermost part of ``loc`` the document has."""
    probe = tuple(loc)
    while probe and probe not in lines:
        probe = probe[:-1]
    return f"{path}:{lines.get(probe, 1)}"


def where(path: Path, lines: Lines, loc: Loc, line_loc: Loc | None = None) -> str:
    """``path:N: field: `` (the prefix of a message about the value at ``loc``)."""
    field = dotted(loc)
    at = line(path, lines, loc if line_loc is None else line_loc)
    return f"{at}: {field}: " if field else f"{at}: "


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += (
            f"[{part}]"
            if isinstance(part, int) and not isinstance(part, bool)
            else (f".{part}" if out else str(part))
        )
    return out


def describe(
    error: ValidationError,
    path: Path,
    lines: Lines,
    model: type[BaseModel],
    *,
    prefer_unknown_keys: bool = False,
    at: Loc = (),
    show_input: bool = True,
) -> str:
    """The first validation error, as a person fixing the file needs it. With
    ``prefer_unknown_keys`` an unknown key is reported before anything else: a misspelt key is
    usually also the "missing" one, and the misspelling is what the person has to see.

    ``at`` is where ``model``'s value sits in the document (a connector's ``settings``);
    ``show_input=False`` never repeats the value that was refused (it may be a secret)."""
    errors = error.errors()
    first = errors[0]
    if prefer_unknown_keys:
        first = next((e for e in errors if e["type"] == "extra_forbidden"), first)
    own = tuple(part for part in first["loc"] if not _is_tag(part))
    loc = (*at, *own)
    kind = first["type"]
    ctx = first.get("ctx") or {}
    cause = ctx.get("error")
    if kind == "extra_forbidden":
        parent = loc[:-1]
        allowed = ", ".join(allowed_keys(model, own[:-1]))
        place = dotted(parent) or "the top level"
        return f"{line(path, lines, loc)}: unknown key {loc[-1]!r} in {place}: accepted are {allowed}"
    if kind == "enum" and show_input:
        return where(path, lines, loc) + f"got {first['input']!r}: accepted are {ctx.get('expected')}"
    if kind in ("enum", "literal_error"):
        return where(path, lines, loc) + f"accepted are {ctx.get('expected')}"
    if kind == "value_error" and isinstance(cause, LocatedError):
        return where(path, lines, cause.loc) + str(cause)
    if kind == "value_error" and isinstance(cause, Problem):
        at = (*loc, *cause.at)
        return where(path, lines, at, (*at, *cause.line_at)) + str(cause)
    if kind == "missing":
        return f"{line(path, lines, loc)}: missing required key {dotted(loc)!r}"
    if not show_input:
        return where(path, lines, loc) + str(first["msg"]).removeprefix("Value error, ")
    return where(path, lines, loc) + f"{first['msg']} (got {first.get('input')!r})"


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and part.startswith(TAG_PREFIX)


def allowed_keys(model: type[BaseModel], parent: Loc) -> list[str]:
    """The keys accepted at ``parent`` (a loc without union tags), walking down from ``model``."""
    current: type[BaseModel] | None = model
    for part in parent:
        if isinstance(part, int) and not isinstance(part, bool):
            continue
        if current is None:
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
    return sorted(current.model_fields) if current is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The first pydantic model inside an annotation (through Optional, unions, lists, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def not_utf8(path: Path, error: UnicodeDecodeError) -> str:
    """A file that is not UTF-8 (saved as UTF-16, or in a legacy code page), said the same for
    every file it reads (a config, a mapping, a notice): the file, the line and byte, what is
    accepted."""
    line = error.object[: error.start].count(b"\n") + 1
    return (
        f"{path}:{line}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
        f"{error.start}): save the file as UTF-8"
    )
