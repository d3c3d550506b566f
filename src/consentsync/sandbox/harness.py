"""What every contract harness over an :class:`~consentsync.sandbox.server.HttpsSandbox` does the
same way: start and stop the sandbox, the settings every connector takes against it, the
bad-credentials settings, the change times of a seed and a store's clock set to them (or the
CRM's whole clock skewed), the text
and opt-out updates the contract pushes, switch the standard faults on and off, make records'
writes fail, count API and write calls. A harness
(:class:`consentsync.sdk.harness.ContractHarness`) subclasses :class:`SandboxHarness`, keeps its
sandbox in ``self.sandbox`` and says ``timeout`` (the connector's, as its settings configure it),
``write_kinds`` (the endpoint kinds that write), ``secret_setting`` (the setting holding the
secret), ``object_type``, ``text_field`` and ``opt_out_field`` (with ``opt_out_values``); it
changes a fault's switches in ``fault_settings`` where its CRM needs other ones.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

from consentsync.sdk.connector import RecordUpdate


def standard_fault_settings(timeout: float) -> dict[str, dict[str, Any]]:
    """The :class:`~consentsync.sandbox.faults.Faults` switches of each standard fault
    (:data:`consentsync.sdk.harness.STANDARD_FAULTS`), for a connector whose calls time out after
    ``timeout`` seconds."""
    return {
        "server_error": {"error_rate": 1.0, "error_calls": 2},
        "connection_reset": {"reset_rate": 1.0, "reset_calls": 2},
        "slow_response": {"delay": timeout + 1.0, "delay_calls": 1},
        "session_expiry": {"session_expiry_after": 2},
        "throttle": {"throttle_after": 0, "throttle_calls": 2},
        "request_limit": {"request_limit_after": 1},
    }


class SandboxHarness:
    """What a harness whose sandbox is an ``HttpsSandbox`` does like every other: settings, seed
    names and times, the contract's updates and reads, fault switches and call counts."""

    sandbox: Any
    timeout: ClassVar[float] = 2.0
    write_kinds: ClassVar[Sequence[str]] = ()
    #: Switches that replace a standard fault's (e.g. a session expiring every 2 calls, not once).
    fault_settings: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: The connector setting that holds the secret (token, key) the contract gets wrong.
    secret_setting: ClassVar[str] = "client_secret"
    #: The record type the contract reads and writes, and its free-text field.
    object_type: ClassVar[str]
    text_field: ClassVar[str]
    #: The field holding the person's email opt-out, and its values (not opted out, opted out).
    opt_out_field: ClassVar[str]
    opt_out_values: ClassVar[tuple[Any, Any]] = (False, True)
    #: What every contract run tunes alike, whatever the CRM: the default number of attempts, and
    #: a rate limit waited out only when it lifts within seconds (the throttle fault says 1 s).
    contract_tunings: ClassVar[Mapping[str, Any]] = {"max_attempts": 5, "max_rate_limit_wait": 5.0}
    #: The records a page the contract reads, and the connector setting that asks for them.
    page_size: ClassVar[int]
    page_size_setting: ClassVar[str] = "page_size"
    #: The harness's other tunings of its connector (fewer retries of one kind, a time zone).
    own_settings: ClassVar[Mapping[str, Any]] = {}
    #: The sandbox's attribute holding its data (an org, an environment): :attr:`store`.
    store_attribute: ClassVar[str]
    #: A counter for names and addresses no other seeded record has.
    _serial: int = 0

    def start(self) -> None:
        self.sandbox.start()

    def stop(self) -> None:
        self.sandbox.close()

    def connector_settings(self, **overrides: Any) -> dict[str, Any]:
        """The connector's settings against this sandbox (:meth:`sandbox_settings`), its records
        a page (``page_size``, in the setting :attr:`page_size_setting` names) and the harness's
        :attr:`own_settings`; the contract calls it first."""
        own = {self.page_size_setting: self.page_size, **self.own_settings}
        return self.sandbox_settings(own, overrides)

    def sandbox_settings(self, own: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
        """A connector's settings against this sandbox, for its harness's ``connector_settings``:
        what every connector says (trust the sandbox's CA, time out after ``timeout``), then where
        and who (the sandbox's ``connection_settings()``), then :attr:`contract_tunings` and the
        harness's ``own`` tunings, then the caller's ``overrides`` (which win)."""
        where = self.sandbox.connection_settings()
        return {
            "ca_bundle": where["ca_bundle"],
            "timeout": self.timeout,
            **where,
            **self.contract_tunings,
            **own,
            **overrides,
        }

    def bad_credentials_settings(self, wrong_secret: str) -> dict[str, Any]:
        return self.connector_settings(**{self.secret_setting: wrong_secret})

    @staticmethod
    def seed_times(count: int, *, shared_modstamp: bool, now: dt.datetime | None = None) -> list[dt.datetime]:
        """The change times of ``count`` seeded records: one a second, ending two minutes before
        ``now`` (default: this whole second), or all on one time an hour back (``shared_modstamp``,
        the contract's records sharing a timestamp across pages)."""
        now = now or dt.datetime.now(dt.UTC).replace(microsecond=0)
        if shared_modstamp:
            return [now - dt.timedelta(hours=1)] * count
        start = now - dt.timedelta(seconds=count + 120)
        return [start + dt.timedelta(seconds=index) for index in range(count)]

    @staticmethod
    @contextmanager
    def clock_at(store: Any, moment: dt.datetime | None) -> Iterator[None]:
        """``store``'s users act at ``moment`` (its creation and change stamps): its ``clock``
        answers ``moment`` until the block ends (None: the store keeps its own time)."""
        if moment is None:
            yield
            return
        original = store.clock
        store.clock = lambda: moment
        try:
            yield
        finally:
            store.clock = original

    def skew_clock(self, offset: dt.timedelta) -> None:
        """The CRM's clock runs ``offset`` ahead of this machine's (negative: behind) from now
        on: its ``Date`` headers and its change stamps (``HttpsSandbox.skew_clock``)."""
        self.sandbox.skew_clock(offset)

    @property
    def store(self) -> Any:
        """The sandbox's data (its attribute :attr:`store_attribute`), whose ``clock``
        :meth:`clock_at` sets."""
        return getattr(self.sandbox, self.store_attribute)

    def create_named(self, last_name: str, email: str, **fields: Any) -> str:
        """A new ``object_type`` record with that last name and address and the contract's
        ``fields``, created as the CRM's users create it: each harness says how its store makes
        one, for :meth:`seed` and :meth:`create_with_text`."""
        raise NotImplementedError(f"{type(self).__name__} must define create_named or seed")

    def seed(self, count: int, *, shared_modstamp: bool = False) -> list[str]:
        """``count`` records named ``Contract N``, created in the :attr:`store` at
        :meth:`seed_times`."""
        ids = []
        now = self.sandbox.now().replace(microsecond=0)  # the CRM's clock (skew_clock)
        for moment in self.seed_times(count, shared_modstamp=shared_modstamp, now=now):
            name, email = self.new_name("Contract")
            with self.clock_at(self.store, moment):
                ids.append(self.create_named(name, email))
        return ids

    def create_with_text(self, text: str) -> str:
        """A record whose ``text_field`` holds ``text`` (the contract's hostile texts)."""
        return self.create_named(*self.new_name("Hostile"), **{self.text_field: text})

    @staticmethod
    def existing(record: Any, record_id: str) -> Any:
        """``record`` as a store's lookup found it; a record the store does not hold is a broken
        contract test, not an answer."""
        if record is None:
            raise AssertionError(f"the sandbox holds no record {record_id}")
        return record

    def next_serial(self) -> int:
        """The next number for a record's name and address (unique within this harness)."""
        self._serial += 1
        return self._serial

    def new_name(self, kind: str) -> tuple[str, str]:
        """A last name and an address no other record of this harness has (``Kind N``,
        ``kind.N@example.test``), for the records a seed or a contract test creates."""
        serial = self.next_serial()
        return f"{kind} {serial}", f"{kind.lower()}.{serial}@example.test"

    def stored(self, record_id: str) -> Mapping[str, Any]:
        """The record as the sandbox's store holds it, by the field names the contract uses (for
        :meth:`read_text` and :meth:`read_opted_out`); each harness says where its store keeps it."""
        raise NotImplementedError(f"{type(self).__name__} must define stored(record_id) or read_text")

    def read_text(self, record_id: str) -> Any:
        """The record's ``text_field``, as the store holds it."""
        return self.stored(record_id).get(self.text_field)

    def read_opted_out(self, record_id: str) -> bool:
        """Whether the store holds the record's ``opt_out_field`` at its opted-out value."""
        return self.stored(record_id).get(self.opt_out_field) == self.opt_out_values[1]

    def text_update(self, record_id: str, text: str) -> RecordUpdate:
        """An update setting ``text_field`` to ``text``."""
        return RecordUpdate(self.object_type, record_id, {self.text_field: text})

    def consent_update(self, record_id: str, opted_out: bool) -> RecordUpdate:
        """An update of ``opt_out_field`` to its opted-out (or not) value."""
        return RecordUpdate(self.object_type, record_id, {self.opt_out_field: self.opt_out_values[opted_out]})

    def fail_writes(self, record_ids: Sequence[str]) -> None:
        self.sandbox.faults.fail_records(*record_ids)

    def set_fault(self, fault: str) -> None:
        settings = self.fault_settings.get(fault) or standard_fault_settings(self.timeout)[fault]
        self.sandbox.faults.update(**settings)

    def clear_faults(self) -> None:
        self.sandbox.faults.reset()

    def faults_injected(self) -> int:
        return sum(self.sandbox.faults_injected.values())

    def api_calls(self) -> int:
        return self.sandbox.total_calls

    def write_calls(self) -> int:
        return self.sandbox.calls_of(self.write_kinds)
