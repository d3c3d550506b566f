"""Fault injection switches for the sandbox servers, settable at construction and at run time.
Every vendor sandbox uses the same switches; what a switch looks like on the wire (a 503 body, a
429 with Retry-After, a 403 REQUEST_LIMIT_EXCEEDED) is the vendor sandbox's business.

>>> faults = Faults(error_rate=0.1, seed=7)
>>> faults.update(request_limit_after=50, fail_ids={"12345": 2})
>>> faults.reset()

Settings (all optional):

``seed``
    seeds the random generator behind ``error_rate`` and ``reset_rate`` (reseeded on update).
``error_rate``, ``error_status``, ``error_kinds``, ``error_calls``
    share of calls answered with a server error (503 by default, with the vendor's error body),
    optionally only for some endpoint kinds (each sandbox lists its kinds), and only for the next
    ``error_calls`` injected errors (None: no end).
``reset_rate``, ``reset_kinds``, ``reset_calls``
    share of calls whose connection is reset (closed with RST, no response at all); the same.
``delay``, ``delay_kinds``, ``delay_paths``, ``delay_calls``
    seconds to wait before answering, optionally only for some kinds or for paths containing one
    of the given substrings, and only for the next ``delay_calls`` delayed calls.
``request_limit_after``
    after this many further API calls, every API call answers the vendor's "request limit
    reached" error (Salesforce 403 REQUEST_LIMIT_EXCEEDED, HubSpot 429 DAILY, ...).
``enforce_daily_limit``
    answer that error once the sandbox's own daily usage reaches its limit.
``throttle_after``, ``throttle_calls``, ``throttle_retry_after``
    after this many further API calls, the next ``throttle_calls`` calls answer the vendor's
    short-term throttling error (HubSpot 429 SECONDLY, Dynamics 429 with Retry-After), saying
    ``throttle_retry_after`` seconds; then calls go through again.
``session_expiry_after``, ``session_expiry_repeat``
    after this many further API calls every session issued so far expires (the vendor's 401 until
    the client logs in again); once, or every that many calls.
``fail_ids``
    record ids whose writes fail with the vendor's per-record error (a locked row, a validation
    rule): a mapping of id to the number of attempts that fail (None: every attempt), or an
    iterable of ids (always). A vendor's sandbox may give the switch its vendor's name too
    (:attr:`Faults.id_settings`).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["Faults"]


_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "error_rate": 0.0,
    "error_status": 503,
    "error_kinds": None,
    "error_calls": None,
    "reset_rate": 0.0,
    "reset_kinds": None,
    "reset_calls": None,
    "delay": 0.0,
    "delay_kinds": None,
    "delay_paths": None,
    "delay_calls": None,
    "request_limit_after": None,
    "enforce_daily_limit": False,
    "throttle_after": None,
    "throttle_calls": 1,
    "throttle_retry_after": 1.0,
    "session_expiry_after": None,
    "session_expiry_repeat": False,
}


def _same(record_id: str) -> str | None:
    return record_id if isinstance(record_id, str) and record_id else None


class Faults:
    """Thread-safe fault switches (see the module docstring for the settings).

    A sandbox binds its instance to its endpoint kinds and its record id spelling
    (:meth:`bind`); until then any kind name and any non-empty id is accepted.
    """

    #: The names of the ``fail_ids`` switch (a subclass adds its vendor's word for it).
    id_settings: tuple[str, ...] = ("fail_ids",)

    def __init__(self, **settings: Any) -> None:
        self._mutex = threading.Lock()
        self._values: dict[str, Any] = dict(_DEFAULTS)
        self._rng = random.Random(0)
        self._failing: dict[str, int | None] = {}
        self._kinds: frozenset[str] | None = None
        self._normalize: Callable[[str], str | None] = _same
        self._limit_count = 0
        self._expiry_count = 0
        self._throttle_count = 0
        self._throttled = 0
        self._spent: dict[str, int] = {"error": 0, "reset": 0, "delay": 0}
        self.update(**settings)

    def bind(self, kinds: Iterable[str], normalize_id: Callable[[str], str | None] | None = None) -> None:
        """Check kind names against ``kinds`` and spell record ids with ``normalize_id`` (which
        answers None for a string that is not an id of this vendor)."""
        with self._mutex:
            self._kinds = frozenset(kinds) or None
            self._normalize = normalize_id or _same
            for name in ("error_kinds", "reset_kinds", "delay_kinds"):
                self._check_kinds(name, self._values[name])
            failing, self._failing = self._failing, {}
            self._add_failures(failing)

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
            out.update((name, dict(self._failing)) for name in self.id_settings)
            return out

    def update(self, **settings: Any) -> None:
        """Change some switches; the others keep their values."""
        unknown = set(settings) - set(_DEFAULTS) - set(self.id_settings)
        if unknown:
            raise TypeError(f"unknown fault setting(s): {', '.join(sorted(unknown))}")
        with self._mutex:
            for name, value in settings.items():
                if name in self.id_settings:
                    self._failing = {}
                    self._add_failures(value)
                    continue
                if name.endswith("_kinds") or name == "delay_paths":
                    value = frozenset(value) if value is not None else None
                    if name.endswith("_kinds"):
                        self._check_kinds(name, value)
                if name in ("error_rate", "reset_rate") and not 0.0 <= float(value) <= 1.0:
                    raise ValueError(f"{name} must be between 0 and 1")
                self._values[name] = value
                if name == "seed":
                    self._rng = random.Random(value)
                elif name == "request_limit_after":
                    self._limit_count = 0
                elif name == "session_expiry_after":
                    self._expiry_count = 0
                elif name in ("throttle_after", "throttle_calls"):
                    self._throttle_count = self._throttled = 0
                elif name.endswith("_calls") and name != "throttle_calls":
                    self._spent[name.removesuffix("_calls")] = 0

    def reset(self) -> None:
        """Every switch back to its default (no faults)."""
        with self._mutex:
            self._values = dict(_DEFAULTS)
            self._rng = random.Random(0)
            self._failing = {}
            self._limit_count = self._expiry_count = self._throttle_count = self._throttled = 0
            self._spent = {"error": 0, "reset": 0, "delay": 0}

    # ------------------------------------------------------------------ per-record write failures

    def fail_records(self, *record_ids: str, attempts: int | None = None) -> None:
        """Make writes of these records fail with the vendor's per-record error: the next
        ``attempts`` attempts, or every attempt when None."""
        with self._mutex:
            self._add_failures({rid: attempts for rid in record_ids})

    def release_records(self, *record_ids: str) -> None:
        """Let writes of the given records (or of all, when none are given) succeed again."""
        with self._mutex:
            if not record_ids:
                self._failing = {}
            for rid in record_ids:
                self._failing.pop(self._normalize(rid) or rid, None)

    def consume_failure(self, record_id: str) -> bool:
        """True when a write of this record must fail now (spends one counted attempt)."""
        with self._mutex:
            key = self._normalize(record_id) or record_id
            if key not in self._failing:
                return False
            remaining = self._failing[key]
            if remaining is None:
                return True
            if remaining <= 0:
                del self._failing[key]
                return False
            if remaining == 1:
                del self._failing[key]
            else:
                self._failing[key] = remaining - 1
            return True

    def _check_kinds(self, name: str, value: frozenset[str] | None) -> None:
        if value is not None and self._kinds is not None and not value <= self._kinds:
            raise ValueError(f"unknown endpoint kind(s) in {name}: {sorted(value - self._kinds)}")

    def _add_failures(self, value: Mapping[str, int | None] | Iterable[str] | None) -> None:
        if not value:
            return
        pairs = value.items() if isinstance(value, Mapping) else ((rid, None) for rid in value)
        for rid, attempts in pairs:
            key = self._normalize(rid)
            if key is None:
                raise ValueError(f"not a record id: {rid!r}")
            self._failing[key] = attempts

    # ------------------------------------------------------------------ decisions (server side)

    @staticmethod
    def _applies(kinds: frozenset[str] | None, kind: str) -> bool:
        return kinds is None or kind in kinds

    def _spend(self, what: str) -> bool:
        """Counts one injected fault of a switch limited to a number of calls; False when the
        switch has spent them (and so does nothing)."""
        allowed = self._values[f"{what}_calls"]
        if allowed is None:
            return True
        if self._spent[what] >= allowed:
            return False
        self._spent[what] += 1
        return True

    def decide_reset(self, kind: str) -> bool:
        with self._mutex:
            rate = self._values["reset_rate"]
            hit = rate > 0 and self._applies(self._values["reset_kinds"], kind) and self._rng.random() < rate
            return hit and self._spend("reset")

    def decide_error(self, kind: str) -> int | None:
        """The status to answer with, or None."""
        with self._mutex:
            rate = self._values["error_rate"]
            if rate > 0 and self._applies(self._values["error_kinds"], kind) and self._rng.random() < rate:
                return int(self._values["error_status"]) if self._spend("error") else None
            return None

    def delay_for(self, kind: str, path: str) -> float:
        with self._mutex:
            delay = float(self._values["delay"] or 0.0)
            if delay <= 0:
                return 0.0
            kinds, paths = self._values["delay_kinds"], self._values["delay_paths"]
            hit = (
                (kinds is None and paths is None)
                or (kinds is not None and kind in kinds)
                or (paths is not None and any(p in path for p in paths))
            )
            return delay if hit and self._spend("delay") else 0.0

    def request_limit_reached(self, used: int | None = None, limit: int | None = None) -> bool:
        with self._mutex:
            after = self._values["request_limit_after"]
            if after is not None and self._limit_count >= after:
                return True
            enforce = bool(self._values["enforce_daily_limit"])
            return enforce and used is not None and limit is not None and used >= limit

    def throttle_now(self) -> float | None:
        """The Retry-After (seconds) to answer this call with, or None to let it through."""
        with self._mutex:
            after = self._values["throttle_after"]
            if after is None:
                return None
            if self._throttle_count < after:
                self._throttle_count += 1
                return None
            if self._throttled < int(self._values["throttle_calls"]):
                self._throttled += 1
                return float(self._values["throttle_retry_after"])
            return None

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
