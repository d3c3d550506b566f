"""Fault injection switches for the sandbox servers, settable at construction and at run time.

>>> faults = Faults(error_rate=0.1, seed=7)
>>> faults.update(request_limit_after=50, lock_ids={"0038d00007000JuAAI": 2})
>>> faults.reset()

Settings (all optional):

``seed``
    seeds the random generator behind ``error_rate`` and ``reset_rate`` (reseeded on update).
``error_rate``, ``error_status``, ``error_kinds``
    share of calls answered with a server error (503 by default, with a JSON error body),
    optionally only for some endpoint kinds (see :data:`ENDPOINT_KINDS`).
``reset_rate``, ``reset_kinds``
    share of calls whose connection is reset (closed with RST, no response at all).
``delay``, ``delay_kinds``, ``delay_paths``
    seconds to wait before answering, optionally only for some kinds or for paths containing one
    of the given substrings.
``request_limit_after``
    after this many further API calls, every API call answers 403 REQUEST_LIMIT_EXCEEDED.
``enforce_daily_limit``
    answer 403 REQUEST_LIMIT_EXCEEDED once the daily usage reaches the limit (Salesforce lets
    usage run past the limit, so this is off by default).
``session_expiry_after``, ``session_expiry_repeat``
    after this many further API calls every session issued so far expires (401
    INVALID_SESSION_ID until a new token is requested); once, or every that many calls.
``lock_ids``
    record ids (15 or 18 characters) whose updates fail with UNABLE_TO_LOCK_ROW: a mapping of id to
    the number of attempts that fail (None: every attempt), or an iterable of ids (always).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from consentsync.sandbox.ids import to18

__all__ = ["ENDPOINT_KINDS", "Faults"]

ENDPOINT_KINDS = (
    "token",
    "versions",
    "resources",
    "identity",
    "limits",
    "query",
    "queryMore",
    "describe_global",
    "sobject_info",
    "describe",
    "updated",
    "deleted",
    "sobject_get",
    "sobject_create",
    "sobject_patch",
    "sobject_delete",
    "composite",
    "bulk_create",
    "bulk_list",
    "bulk_status",
    "bulk_state",
    "bulk_upload",
    "bulk_results",
    "bulk_delete",
    "not_found",
)

_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "error_rate": 0.0,
    "error_status": 503,
    "error_kinds": None,
    "reset_rate": 0.0,
    "reset_kinds": None,
    "delay": 0.0,
    "delay_kinds": None,
    "delay_paths": None,
    "request_limit_after": None,
    "enforce_daily_limit": False,
    "session_expiry_after": None,
    "session_expiry_repeat": False,
}


class Faults:
    """Thread-safe fault switches (see the module docstring for the settings).

    ``kinds`` are the endpoint kinds the ``*_kinds`` settings may name and ``normalise_id`` checks
    and normalises the record ids of ``lock_ids``; both default to Salesforce's, and another
    vendor's sandbox passes its own.
    """

    def __init__(
        self,
        *,
        kinds: Iterable[str] = ENDPOINT_KINDS,
        normalise_id: Callable[[str], str | None] = to18,
        **settings: Any,
    ) -> None:
        self._kinds = frozenset(kinds)
        self._normalise_id = normalise_id
        self._mutex = threading.Lock()
        self._values: dict[str, Any] = dict(_DEFAULTS)
        self._rng = random.Random(0)
        self._locked: dict[str, int | None] = {}
        self._limit_count = 0
        self._expiry_count = 0
        self.update(**settings)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in _DEFAULTS:
            raise AttributeError(name)
        with self._mutex:
            return self._values[name]

    def __repr__(self) -> str:
        return f"Faults({self.settings()!r})"

    def settings(self) -> dict[str, Any]:
        with self._mutex:
            out = dict(self._values)
            out["lock_ids"] = dict(self._locked)
            return out

    def update(self, **settings: Any) -> None:
        """Change some switches; the others keep their values."""
        unknown = set(settings) - set(_DEFAULTS) - {"lock_ids"}
        if unknown:
            raise TypeError(f"unknown fault setting(s): {', '.join(sorted(unknown))}")
        with self._mutex:
            for name, value in settings.items():
                if name == "lock_ids":
                    self._locked = {}
                    self._add_locks(value)
                    continue
                if name.endswith("_kinds") or name == "delay_paths":
                    value = frozenset(value) if value is not None else None
                    if name.endswith("_kinds") and value is not None and not value <= self._kinds:
                        raise ValueError(
                            f"unknown endpoint kind(s) in {name}: {sorted(value - self._kinds)}"
                        )
                if name in ("error_rate", "reset_rate") and not 0.0 <= float(value) <= 1.0:
                    raise ValueError(f"{name} must be between 0 and 1")
                self._values[name] = value
                if name == "seed":
                    self._rng = random.Random(value)
                elif name == "request_limit_after":
                    self._limit_count = 0
                elif name == "session_expiry_after":
                    self._expiry_count = 0

    def reset(self) -> None:
        """Every switch back to its default (no faults)."""
        with self._mutex:
            self._values = dict(_DEFAULTS)
            self._rng = random.Random(0)
            self._locked = {}
            self._limit_count = self._expiry_count = 0

    def lock_records(self, *record_ids: str, attempts: int | None = None) -> None:
        """Make updates of these records fail with UNABLE_TO_LOCK_ROW: the next ``attempts``
        attempts, or every attempt when None."""
        with self._mutex:
            self._add_locks({rid: attempts for rid in record_ids})

    def unlock_records(self, *record_ids: str) -> None:
        """Release the given records, or all when none are given."""
        with self._mutex:
            if not record_ids:
                self._locked = {}
            for rid in record_ids:
                self._locked.pop(self._normalise_id(rid) or rid, None)

    def _add_locks(self, value: Mapping[str, int | None] | Iterable[str] | None) -> None:
        if not value:
            return
        pairs = value.items() if isinstance(value, Mapping) else ((rid, None) for rid in value)
        for rid, attempts in pairs:
            full = self._normalise_id(rid)
            if full is None:
                raise ValueError(f"not a record id: {rid!r}")
            self._locked[full] = attempts

    # ------------------------------------------------------------------ decisions (server side)

    @staticmethod
    def _applies(kinds: frozenset[str] | None, kind: str) -> bool:
        return kinds is None or kind in kinds

    def decide_reset(self, kind: str) -> bool:
        with self._mutex:
            rate = self._values["reset_rate"]
            return rate > 0 and self._applies(self._values["reset_kinds"], kind) and self._rng.random() < rate

    def decide_error(self, kind: str) -> int | None:
        """The status to answer with, or None."""
        with self._mutex:
            rate = self._values["error_rate"]
            if rate > 0 and self._applies(self._values["error_kinds"], kind) and self._rng.random() < rate:
                return int(self._values["error_status"])
            return None

    def delay_for(self, kind: str, path: str) -> float:
        with self._mutex:
            delay = float(self._values["delay"] or 0.0)
            if delay <= 0:
                return 0.0
            kinds, paths = self._values["delay_kinds"], self._values["delay_paths"]
            if kinds is None and paths is None:
                return delay
            if kinds is not None and kind in kinds:
                return delay
            if paths is not None and any(p in path for p in paths):
                return delay
            return 0.0

    def consume_lock(self, record_id: str) -> bool:
        """True when an update of this record must fail with UNABLE_TO_LOCK_ROW now."""
        with self._mutex:
            if record_id not in self._locked:
                return False
            remaining = self._locked[record_id]
            if remaining is None:
                return True
            if remaining <= 0:
                del self._locked[record_id]
                return False
            if remaining == 1:
                del self._locked[record_id]
            else:
                self._locked[record_id] = remaining - 1
            return True

    def request_limit_reached(self, used: int, limit: int) -> bool:
        with self._mutex:
            after = self._values["request_limit_after"]
            if after is not None and self._limit_count >= after:
                return True
            return bool(self._values["enforce_daily_limit"]) and used >= limit

    def note_call(self) -> bool:
        """Record one served API call; True when every session must expire now."""
        with self._mutex:
            self._limit_count += 1
            after = self._values["session_expiry_after"]
            if after is None:
                return False
            self._expiry_count += 1
            if self._expiry_count < after:
                return False
            self._expiry_count = 0
            if not self._values["session_expiry_repeat"]:
                self._values["session_expiry_after"] = None
            return True
