"""A CRM's objects, as every command that looks at them needs: which objects a connector offers
(``consentsync discover``) and an object's fields, with the CRM's refusals said as an admin can
act on them (an object the CRM does not have, a describe the integration user may not make).

Vendor-neutral: a connector may offer ``objects()`` (the names of the objects it can read, from
the CRM's own catalogue); where it does not, the objects its example mappings name stand in.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Container, Iterable, Mapping
from pathlib import Path
from typing import Any

from consentsync.sdk.connector import Connector, FieldInfo
from consentsync.sdk.errors import Action, ConnectorError, ErrorRule, Fault

__all__ = [
    "config_error",
    "describe_object",
    "guard_describe",
    "list_objects",
    "object_error",
    "require_fields",
    "require_object",
]


def config_error(message: str, reason: str, *, code: str | None = None) -> ConnectorError:
    """A problem the admin must fix (an object, field or name the configuration gets wrong):
    not retried, the run fails with ``reason`` in its report."""
    return ConnectorError(message, ErrorRule(Action.FAIL, Fault.CONFIG, reason, code=code))


def require_object(
    object_type: str, offered: Container[str], message: str, reason: str = "unknown object"
) -> None:
    """Raises ``message`` as a ``config_error`` when ``object_type`` is not one of ``offered``
    (a connector that reads and writes only some objects)."""
    if object_type not in offered:
        raise config_error(message, reason)


def require_fields(
    wanted: Iterable[str],
    known: Container[str],
    lacks: str,
    hidden: str,
    *,
    reason: str = "mapped field missing",
) -> None:
    """Raises ``{lacks} a, b ({hidden})`` as a ``config_error`` when names of ``wanted`` (the
    mapped fields) are not among ``known`` (what describe() answered): e.g. lacks "Contact has
    no field(s)", hidden "(or the integration user cannot see them)"."""
    missing = [name for name in wanted if name not in known]
    if missing:
        raise config_error(f"{lacks} {', '.join(missing)} {hidden}", reason)


def object_error(
    error: ConnectorError, connector: Connector, object_type: str, source: str | None
) -> ConnectorError:
    """``error`` (raised by describing ``object_type``) said as the admin's to fix, or itself when
    it is neither a missing object nor a refused describe (a credentials refusal, the CRM out of
    reach keep their own classification and exit code)."""
    rule = error.rule
    where = f" ({source})" if source else ""
    if rule.credentials or rule.fault in (Fault.TRANSIENT, Fault.LIMIT):
        return error
    if rule.status == 404:
        return ConnectorError(
            f"object {object_type!r}{where} does not exist in {connector.name} ({connector.vendor}), "
            f"or the integration user cannot see it: see `consentsync discover {connector.name}` "
            f"for the objects it has [{error}]",
            ErrorRule(Action.FAIL, Fault.CONFIG, "object not found", status=404, code=rule.code),
        )
    if rule.status in (401, 403):
        return ConnectorError(
            f"{connector.name} ({connector.vendor}) refused to describe {object_type!r}{where} "
            f"(HTTP {rule.status}): give the integration user permission to read this object's "
            f"metadata (fields), then try again [{error}]",
            ErrorRule(Action.FAIL, Fault.CONFIG, "describe refused", status=rule.status, code=rule.code),
        )
    return error


def describe_object(
    connector: Connector, object_type: str, source: str | None = None
) -> dict[str, FieldInfo]:
    """``connector.describe(object_type)``, its refusals said by :func:`object_error`;
    ``source`` names where the object came from (a mapping file)."""
    try:
        return connector.describe(object_type)
    except ConnectorError as error:
        raised = object_error(error, connector, object_type, source)
        if raised is error:
            raise
        raise raised from None


def guard_describe(connector: Connector, sources: Mapping[str, str]) -> Connector:
    """Makes every describe of ``connector`` (the sync engine's and the connector's own, inside
    its reads) say a missing object or a refused describe as :func:`object_error` does, naming
    the mapping file of each object in ``sources`` (object -> file). Returns the connector."""
    original: Callable[[str], dict[str, FieldInfo]] = connector.describe

    @functools.wraps(original)
    def describe(object_type: str) -> dict[str, FieldInfo]:
        try:
            return original(object_type)
        except ConnectorError as error:
            raised = object_error(error, connector, object_type, sources.get(object_type))
            if raised is error:
                raise
            raise raised from None

    connector.describe = describe  # type: ignore[method-assign]
    return connector


def list_objects(connector: Connector, configured: Iterable[str] = ()) -> list[str]:
    """The objects to offer for ``connector``: its own ``objects()`` where it has one, else the
    objects its example mappings and ``configured`` (the config's mapping files) name."""
    own = getattr(connector, "objects", None)
    if callable(own):
        return sorted(dict.fromkeys(str(name) for name in own()))
    names = dict.fromkeys([*_example_objects(connector.vendor), *configured])
    return sorted(names)


def _example_objects(vendor: str) -> list[str]:
    try:
        from consentsync.mapping_examples import examples_in, vendor_dirs
    except ImportError:  # an install without the examples module
        return []
    folder = vendor_dirs().get(vendor)
    if folder is None:
        return []
    return [name for item in examples_in(folder) if (name := mapping_object(item.read_text("utf-8")))]


def mapping_object(text: str) -> str | None:
    """The ``object:`` a mapping file names (None when it names none)."""
    import yaml

    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    value = data.get("object") if isinstance(data, dict) else None
    return str(value) if value else None


def mapping_file_object(path: Path) -> str | None:
    try:
        return mapping_object(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError):
        return None
