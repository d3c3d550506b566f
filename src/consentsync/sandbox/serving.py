"""What every ``consentsync sandbox VENDOR`` is: its command (:func:`sandbox_command`, which a
connector package registers under the entry-point group ``consentsync.sandboxes``), and what it
does once its sandbox is up: print what it serves and the ``connectors:`` block to paste into
consentsync.yaml (with the ``export`` lines of its secrets), then serve until interrupted.

A vendor writes only the function that starts its seeded sandbox and says what to print
(:class:`Serving`, :func:`running_lines`); :func:`sandbox_main` makes its ``serve_forever`` and
its command from it.

The block's settings come from the connector's own test harness (``connector_settings()``, found
through the ``consentsync.harnesses`` entry points), pointed at the running sandbox: the core
names no vendor's settings. Only the settings that say where and who (URLs, ids, secrets, the CA
file) are kept; the harness's test tunings (short timeouts, few attempts) are left to defaults.
"""

from __future__ import annotations

import functools
import inspect
import shlex
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click
import yaml

from consentsync.sandbox.tls import removing_tls_folders
from consentsync.sdk.errors import is_secret_key


def secrets_to_env(settings: Mapping[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, str]]:
    """``settings`` with every secret replaced by a ``${PREFIX_KEY}`` reference, and the values
    of those variables: the config file names the secrets, the environment holds them."""
    written: dict[str, Any] = {}
    env: dict[str, str] = {}
    for key, value in settings.items():
        if isinstance(value, str) and is_secret_key(key):
            variable = f"{prefix}_{key}".upper().replace("-", "_")
            env[variable] = value
            written[key] = "${" + variable + "}"
        else:
            written[key] = value
    return written, env


def connectors_block(
    vendor: str, sandbox: Any, *, name: str | None = None
) -> tuple[str, dict[str, str]] | None:
    """The ``connectors:`` YAML block that syncs with the running ``sandbox`` and the environment
    variables its secrets are read from; None when no harness of ``vendor`` is installed."""
    from consentsync.sdk.harness import available_harnesses

    entry = available_harnesses().get(vendor)
    if entry is None:
        return None
    harness = entry.load()()
    own = harness.sandbox
    harness.sandbox = sandbox
    try:
        settings = harness.connector_settings()
        mappings = [str(path) for path in harness.mapping_files]
    finally:
        harness.sandbox = own
        harness.stop()  # the harness's own sandbox was never started: this frees its files
    where = {key: value for key, value in settings.items() if isinstance(value, str)}
    written, env = secrets_to_env(where, vendor)
    connector = {
        "name": name or f"{vendor}-sandbox",
        "vendor": vendor,
        "mappings": mappings,
        "settings": written,
    }
    return yaml.safe_dump({"connectors": [connector]}, sort_keys=False, allow_unicode=True), env


def paste_lines(vendor: str, sandbox: Any) -> list[str]:
    """The lines that tell an admin how to sync with ``sandbox``: the block and the exports."""
    made = connectors_block(vendor, sandbox)
    if made is None:
        return [f"(install the consentsync {vendor} connector for a connectors: block to paste)"]
    block, env = made
    lines = ["", "Paste into consentsync.yaml (the CA file is the sandbox's own: ca_bundle trusts it):", ""]
    lines += block.rstrip("\n").splitlines()
    if env:
        lines += ["", "and in the shell that runs consentsync (the sandbox's throw-away credentials):", ""]
        lines += [f"export {variable}={shlex.quote(value)}" for variable, value in env.items()]
    return lines


def serve(
    vendor: str,
    sandbox: Any,
    lines: Iterable[str],
    *,
    stop: threading.Event | None = None,
    on_ready: Callable[[Any], None] | None = None,
    cleanup: Callable[[], None] | None = None,
    signalled: Callable[[], bool] | None = None,
) -> None:
    """Prints ``lines`` (what the sandbox serves) and the block to paste, then serves until
    interrupted (or until ``stop`` is set, or ``signalled()`` holds); ``on_ready`` is called with
    the running sandbox. The sandbox is closed and ``cleanup`` called however it ends (printing or
    ``on_ready`` failing too)."""
    stop = stop or threading.Event()
    try:
        print("\n".join([*lines, *paste_lines(vendor, sandbox)]), flush=True)
        if on_ready is not None:
            on_ready(sandbox)
        # Woken at once by the KeyboardInterrupt a signal raises; ``signalled`` is asked too, as
        # that exception is lost when the handler happens to run inside a __del__ or a weakref
        # callback (Python prints "Exception ignored" and goes on).
        while not stop.wait(_SIGNAL_POLL):
            if signalled is not None and signalled():
                break
    except KeyboardInterrupt:
        pass
    finally:
        try:
            sandbox.close()
        finally:
            if cleanup is not None:
                cleanup()


#: How often (seconds) a serving sandbox looks whether a signal asked it to stop.
_SIGNAL_POLL = 0.25


class _SignalStop:
    """SIGTERM stops a sandbox command as Ctrl-C does: a KeyboardInterrupt wherever the main thread
    is, so that the ``finally`` blocks on the way out close the sandbox and remove its certificates
    and keys (SIGTERM's default would end the process at once and leave them in $TMPDIR); and
    :attr:`signalled`, for :func:`serve` to stop even if that exception was lost. The command then
    exits 0, as `consentsync run` does when told to stop: stopping is how a sandbox ends.

    Signals after the first are ignored, there and once the command is done, so that none cuts the
    removal short (closing takes five seconds at most) or turns the clean stop into a kill."""

    def __init__(self) -> None:
        self.signalled = False
        self.previous: dict[int, Any] = {}

    def handle(self, _signum: int, _frame: Any) -> None:
        if not self.signalled:
            self.signalled = True
            raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator[_SignalStop]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals reach the main thread only (tests run sandboxes in threads)
            return
        self.previous = {signum: signal.signal(signum, self.handle) for signum in _STOP_SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in self.previous.items():
                # Stopped by a signal, the process is ending: SIG_IGN, not this handler, as Python
                # resets its own handlers to the default while it exits.
                signal.signal(signum, signal.SIG_IGN if self.signalled else handler)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# How many people a sandbox seeds at most: a million takes under a minute and some GB of memory
# (the size docs/performance.md measures at); more is a typo's extra digits, which would fill the
# memory before anything is served.
MAX_SEED_RECORDS = 1_000_000
# The random seed: an unsigned 32-bit number, as most generators take one.
MAX_RANDOM_SEED = 2**32 - 1


def sandbox_command(
    serve_forever: Callable[..., None],
    *,
    port: int,
    seed_help: str,
    help: str,
    options: Sequence[Callable[[Callable[..., Any]], Callable[..., Any]]] = (),
) -> click.Command:
    """The ``consentsync sandbox VENDOR`` command of one vendor's sandbox, for its connector
    package to register under the entry-point group ``consentsync.sandboxes``: the options every
    sandbox takes (``--port`` defaulting to ``port``, ``--seed`` saying ``seed_help``,
    ``--random-seed``, ``--host``), then ``options`` of the vendor's own, passed to
    ``serve_forever(port=, seed=, host=, records=, **vendor_options)`` by name."""

    def run(port: int, records: int, random_seed: int, host: str, **vendor_options: Any) -> None:
        serve_forever(port=port, seed=random_seed, host=host, records=records, **vendor_options)

    # The common options first (as --help lists them), then the vendor's.
    decorators = [
        click.option("--port", type=click.IntRange(0, 65535), default=port, show_default=True),
        click.option(
            "--seed",
            "records",
            type=click.IntRange(0, MAX_SEED_RECORDS),
            default=200,
            show_default=True,
            help=seed_help,
        ),
        click.option(
            "--random-seed",
            type=click.IntRange(0, MAX_RANDOM_SEED),
            default=1,
            show_default=True,
            help="Makes the seed repeatable.",
        ),
        click.option("--host", default="127.0.0.1", show_default=True),
        *options,
    ]
    command: Callable[..., Any] = run
    for decorate in reversed(decorators):
        command = decorate(command)
    return click.command(help=help)(command)


@dataclass(frozen=True, slots=True)
class Serving:
    """What a vendor's start function (:func:`sandbox_main`) gives back: its seeded, running
    sandbox, the lines saying what it serves, and what to remove once it stops (files the sandbox
    does not own, such as a key written beside its certificates)."""

    sandbox: Any
    lines: list[str]
    cleanup: Callable[[], None] | None = None


def seeded(sandbox_class: Callable[..., Any], store: Any, records: int, seed: int, **server: Any) -> Any:
    """``store`` seeded with ``records`` generated people (random seed ``seed``) and a started
    ``sandbox_class(store, **server)`` serving it, with the seed's summary: how a vendor's start
    function opens (``sandbox, summary = seeded(...)``)."""
    summary = store.seed(records, seed=seed)
    return sandbox_class(store, **server).start(), summary


def credential_lines(credentials: Any, *names: str) -> dict[str, str]:
    """The lines of ``running_lines``'s ``who`` that show these fields of a sandbox's
    credentials, each under its own name."""
    return {name: str(getattr(credentials, name)) for name in names}


def running_lines(title: str, sandbox: Any, where: Mapping[str, str], who: Mapping[str, str]) -> list[str]:
    """What a running sandbox prints first: ``title`` is running, its addresses (``where``), the CA
    files clients trust, then its credentials and seed (``who``), one aligned label a line."""
    rows = {
        **where,
        "CA certificate": str(sandbox.ca_cert_path),
        "CA bundle": f"{sandbox.ca_bundle_path}   (sandbox CA + system roots, for curl and browsers)",
        **who,
    }
    width = max(len(label) for label in rows)
    return [
        f"{title} sandbox is running (Ctrl-C to stop)",
        *(f"  {label:<{width}} {value}" for label, value in rows.items()),
    ]


class SandboxMain:
    """A vendor's ``serve_forever(port, seed, host, *, records, stop, on_ready, **own_options)``
    (start the sandbox, print what it serves and the block to paste, serve until interrupted or
    ``stop`` is set; ``on_ready`` gets the running sandbox) and its ``consentsync sandbox VENDOR``
    :attr:`command`, made by :func:`sandbox_main` from the vendor's start function."""

    def __init__(
        self,
        vendor: str,
        start: Callable[..., Serving],
        *,
        seed_help: str,
        options: Sequence[Callable[[Callable[..., Any]], Callable[..., Any]]] = (),
    ) -> None:
        functools.update_wrapper(self, start)
        self.vendor = vendor
        self.start = start
        parameters = inspect.signature(start).parameters
        #: The seed size when none is asked for: the start function's default ``records``.
        self.records: int = parameters["records"].default
        help = (start.__doc__ or "").strip().split("\n\n")[0]
        self.command = sandbox_command(
            self, port=parameters["port"].default, seed_help=seed_help, help=help, options=options
        )

    def __call__(
        self,
        port: int,
        seed: int,
        host: str = "127.0.0.1",
        *,
        records: int | None = None,
        stop: threading.Event | None = None,
        on_ready: Callable[[Any], None] | None = None,
        **options: Any,
    ) -> None:
        records = self.records if records is None else records
        # removing_tls_folders: whatever a vendor's start function made in $TMPDIR before it failed
        # (a port in use) or was interrupted, before serve() took charge of it, goes too.
        with _SignalStop().installed() as signals, removing_tls_folders():
            try:
                served = self.start(port=port, seed=seed, host=host, records=records, **options)
                serve(
                    self.vendor,
                    served.sandbox,
                    served.lines,
                    stop=stop,
                    on_ready=on_ready,
                    cleanup=served.cleanup,
                    signalled=lambda: signals.signalled,
                )
            except KeyboardInterrupt:
                pass  # Ctrl-C or SIGTERM while it was starting: stopped, as when serving


def sandbox_main(
    vendor: str,
    *,
    seed_help: str,
    options: Sequence[Callable[[Callable[..., Any]], Callable[..., Any]]] = (),
) -> Callable[[Callable[..., Serving]], SandboxMain]:
    """Decorates a vendor's ``start(*, port=DEFAULT_PORT, records=DEFAULT_SEED_SIZE, seed, host,
    **own_options) -> Serving`` into its :class:`SandboxMain`: the command's help is the function's
    docstring, its ``--port`` and ``--seed`` default to the function's ``port`` and ``records``,
    and ``seed_help`` and ``options`` go to :func:`sandbox_command`. The module then says
    ``command = serve_forever.command``."""

    def decorate(start: Callable[..., Serving]) -> SandboxMain:
        return SandboxMain(vendor, start, seed_help=seed_help, options=options)

    return decorate
