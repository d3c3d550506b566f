"""Commands an integration admin expects of a sync tool: ``discover`` (a CRM's objects and
fields, a starter mapping), ``state show|reset`` (the stored cursors) and ``subject search``.
(``sync --all``, every configured connector in turn, is with ``sync`` in cli_sync.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from consentsync import exit_codes
from consentsync.app import open_ledger
from consentsync.cli_base import (
    acting,
    check_output_folder,
    connector_filter,
    current_config,
    emit_json,
    fail,
    main,
    print_table,
    scriptable,
    subject,
)
from consentsync.cli_sync import SEVERITY, worst  # noqa: F401 (sync --all's ranking, first defined here)
from consentsync.config import Config, ConfigError
from consentsync.domain import InvalidInput, parse_timestamp
from consentsync.sdk.connector import Connector
from consentsync.sdk.errors import ConnectorError, scrub

# -- discover --------------------------------------------------------------------------------------


def configured_connector(config: Config, name: str) -> Connector:
    """The configured connector ``name``, without loading its mapping files (discover is how an
    admin writes them)."""
    from consentsync.sdk import registry

    settings = config.connector(name)
    config.check_vendor(name)
    vendor_settings = config.connector_settings(name)
    try:
        return registry.load(settings.vendor)(settings.name, vendor_settings)
    except ValueError as error:  # the vendor's settings model names the bad key
        at = ("connectors", config.settings.connectors.index(settings), "settings")
        raise ConfigError(f"{config.where(*at)}{scrub(str(error))}") from None


def mapped_objects(config: Config, name: str) -> dict[str, str]:
    """object -> mapping file, for the mapping files connector ``name`` names (read for their
    ``object:`` only: a file that does not load is left out)."""
    from consentsync.sdk.objects import mapping_file_object

    out: dict[str, str] = {}
    for item in config.connector(name).mappings:
        path = config.resolve_path(item)
        found = mapping_file_object(path)
        if found:
            out.setdefault(found, str(path))
    return out


@main.command()
@click.argument("connector")
@click.argument("object_type", metavar="[OBJECT]", required=False)
@click.option(
    "--mapping-out",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="With OBJECT: write a starter mapping guessed from its fields to FILE.",
)
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@scriptable
def discover(
    connector: str, object_type: str | None, mapping_out: Path | None, force: bool, as_json: bool
) -> None:
    """The objects CONNECTOR's CRM offers; with OBJECT, its fields (type, writable, picklist
    values), and with --mapping-out a commented starter mapping to edit and check."""
    from consentsync.discover import field_rows, starter_mapping
    from consentsync.sdk.objects import describe_object, list_objects

    config = current_config()
    if mapping_out is not None:
        if object_type is None:
            raise InvalidInput(
                "--mapping-out needs OBJECT: consentsync discover CONNECTOR OBJECT --mapping-out FILE"
            )
        check_output_folder(mapping_out, "--mapping-out")
        if mapping_out.exists() and not force:
            raise InvalidInput(f"--mapping-out {mapping_out}: the file exists (--force overwrites it)")
    mapped = mapped_objects(config, connector)
    live = configured_connector(config, connector)
    try:
        if object_type is None:
            rows = [_object_row(live, name, mapped) for name in list_objects(live, mapped)]
            if as_json:
                emit_json(rows)
            else:
                click.echo(
                    f"objects of {connector} ({live.vendor}); "
                    f"see one with: consentsync discover {connector} OBJECT"
                )
                print_table(rows, ["object", "fields", "writable", "mapped_by", "problem"])
            return
        fields = describe_object(live, object_type, source=mapped.get(object_type))
    finally:
        live.close()
    if mapping_out is not None:
        text = starter_mapping(
            connector=connector,
            vendor=live.vendor,
            object_type=object_type,
            fields=fields,
            purposes=config.purposes,
            channels=config.channels,
        )
        mapping_out.write_text(text, encoding="utf-8")
    rows = field_rows(fields)
    if as_json:
        emit_json({"connector": connector, "vendor": live.vendor, "object": object_type, "fields": rows})
    else:
        click.echo(f"{object_type} in {connector} ({live.vendor}): {len(rows)} field(s)")
        print_table(
            [{**row, "picklist_values": ", ".join(row["picklist_values"]) or None} for row in rows],
            ["field", "type", "writable", "picklist_values"],
        )
    if mapping_out is not None:
        click.echo(
            f"\nwrote a starter mapping to {mapping_out}: edit it, then check it with\n"
            f"  consentsync mapping check {mapping_out} --against {connector}",
            err=as_json,
        )


def _object_row(live: Connector, name: str, mapped: dict[str, str]) -> dict[str, Any]:
    from consentsync.sdk.objects import describe_object

    row: dict[str, Any] = {"object": name, "fields": None, "writable": None, "mapped_by": mapped.get(name)}
    try:
        fields = describe_object(live, name)
    except ConnectorError as error:
        if error.rule.credentials or error.rule.fault.value in ("transient", "limit"):
            raise  # the whole command fails: nothing else would describe either
        row["problem"] = str(error)
        return row
    row["fields"] = len(fields)
    row["writable"] = sum(1 for info in fields.values() if info.updateable)
    row["problem"] = None
    return row


# -- state -----------------------------------------------------------------------------------------


@main.group()
def state() -> None:
    """The stored cursors: where each connector's next run reads from."""


@state.command("show")
@click.argument("connector")
@click.argument("object_type", metavar="[OBJECT]", required=False)
@scriptable
def state_show(connector: str, object_type: str | None, as_json: bool) -> None:
    """CONNECTOR's stored cursors (of OBJECT only when given); the ledger feed is its place in
    the ledger's change feed (the people to examine for pushes)."""
    from consentsync.sync import cursors

    config = current_config()
    config.connector(connector)  # an unknown connector: a one-line error naming the known ones
    engine = open_ledger(config).engine
    stored = cursors.stored_name(object_type) if object_type else None
    if stored is not None:
        cursors.check_object(_known_objects(config, connector, engine), stored, connector)
    rows = cursors.show(engine, connector, stored)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo(
            f"no stored cursor for {connector}{' ' + object_type if object_type else ''}: "
            "its next run reads from the beginning"
        )
        return
    print_table(
        [{**row, "position": _position_text(row["position"])} for row in rows],
        ["object", "position", "run_id", "updated_at"],
    )


def _position_text(position: dict[str, Any]) -> str:
    if "state_change_id" in position:
        gaps = f", {position['gaps']} id(s) below it awaited" if position["gaps"] else ""
        return f"after state change {position['state_change_id']}{gaps}"
    text = f"after {position.get('modstamp') or 'the beginning'}"
    if position.get("record_id"):
        text += f" (record {position['record_id']})"
    if position.get("token"):
        text += " + the CRM's change token"
    return text


def _known_objects(config: Config, connector: str, engine: Any) -> set[str]:
    from sqlalchemy import select

    from consentsync.ledger.schema import sync_cursors
    from consentsync.sync.push_rules import PUSH_RULES

    with engine.connect() as conn:
        stored = set(
            conn.execute(
                select(sync_cursors.c.object_type).where(
                    sync_cursors.c.connector == connector,
                    sync_cursors.c.object_type != PUSH_RULES,  # a digest of rules, no place to move
                )
            ).scalars()
        )
    return stored | set(mapped_objects(config, connector))


@state.command("reset")
@click.argument("connector")
@click.argument("object_type", metavar="OBJECT")
@click.option(
    "--to",
    "to",
    metavar="ISO8601",
    help="Move the cursor to this time: the next run reads what changed after it (default: the "
    "beginning, a full read).",
)
@click.option("--actor", help="Who moves it (kept in the audit log; default: your login name).")
@scriptable
def state_reset(connector: str, object_type: str, to: str | None, actor: str | None, as_json: bool) -> None:
    """Move CONNECTOR's cursor of OBJECT (or "ledger" for its ledger feed) back to the beginning
    or --to a time; refused while a run holds the connector; audited."""
    from consentsync.sync import cursors
    from consentsync.sync.locks import RunInProgress

    moment = parse_timestamp(to, "--to") if to is not None else None
    who = acting(actor)  # kept in the audit chain
    config = current_config()
    config.connector(connector)
    ledger = open_ledger(config)
    if moment is not None and moment > ledger.clock():
        raise InvalidInput(f"--to {to} is in the future: give a time before now")
    stored = cursors.stored_name(object_type)
    cursors.check_object(_known_objects(config, connector, ledger.engine), stored, connector)
    try:
        result = cursors.reset(ledger.engine, connector, stored, to=moment, actor=who, clock=ledger.clock)
    except RunInProgress as busy:
        fail(f"{busy}: nothing was changed; try again when the run has ended", exit_codes.STOPPED)
    if as_json:
        emit_json(result)
    else:
        where = f"to {moment.isoformat()}" if moment else "to the beginning"
        click.echo(
            f"moved {connector} {result['object']} {where} (audited as {who}): "
            f"{_position_text(result['before']) if result['before'] else 'none'} -> "
            f"{_position_text(result['after']) if result['after'] else 'the beginning'}"
        )


# -- subject search --------------------------------------------------------------------------------


@subject.command("search")
@click.argument("term")
@click.option(
    "--by",
    type=click.Choice(["any", "email", "record", "uid"]),
    default="any",
    show_default=True,
    help="What TERM is: an email, a CRM record id, a subject uid (or a unique prefix), or any.",
)
@click.option("--connector", help="Only CRM records of this connector.")
@scriptable
def subject_search(term: str, by: str, connector: str | None, as_json: bool) -> None:
    """Find people by email, CRM record id or pseudonymous id (subject uid)."""
    from consentsync.subjects import search

    if not term.strip():
        raise InvalidInput("give an email, a CRM record id or a subject uid to search for")
    from consentsync.ledger.schema import crm_links

    ledger = open_ledger(current_config())
    connector = connector_filter("--connector", connector, ledger, crm_links.c.connector)
    rows = search(ledger, term, by=by, connector=connector)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo(f"no subject matches {term!r}")
        return
    print_table(
        [
            {
                **row,
                "emails": ", ".join(row["emails"]) or None,
                "crm_records": ", ".join(
                    f"{r['connector']}/{r['object']}/{r['record_id']}" for r in row["crm_records"]
                )
                or None,
            }
            for row in rows
        ],
        ["subject", "matched_by", "emails", "erased", "restricted", "crm_records"],
    )
