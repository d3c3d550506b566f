"""Commands of the hub (issue 18): ``apikey add|list|revoke`` (keys for capture sources),
``notice add|list|show`` (the texts people are shown), ``link EMAIL`` (a person's preference
link) and ``hub lapse`` (unconfirmed double opt-ins whose link expired)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from consentsync import exit_codes
from consentsync.cli_base import (
    ROW_COUNT,
    configured,
    current_config,
    current_ledger,
    emit_json,
    emit_rows,
    fail,
    login_name,
    main,
    print_table,
    scriptable,
)
from consentsync.domain import InvalidInput, email_forms, lookup_email
from consentsync.ledger.service import NotFound

if TYPE_CHECKING:  # the hub's modules load only with the hub's commands
    from consentsync.hub.outreach import Outreach


def _listed(values: tuple[str, ...]) -> list[str]:
    """The items of a repeatable, comma-separated option: ``--actions consents --actions
    decisions`` is ``--actions consents,decisions`` (else click keeps the last one silently)."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _listing(default: str, what: str) -> dict[str, Any]:
    """A list option's settings: comma-separated, or the option repeated (see ``_listed``)."""
    return {
        "multiple": True,
        "default": [default],
        "show_default": True,
        "help": f"{what} Comma-separated or repeated.",
    }


# -- API keys --------------------------------------------------------------------------------------


@main.group(short_help="API keys for capture sources (web forms, shops, sending tools).")
def apikey() -> None:
    """Keys the capture API (/v1) accepts: one per capture source, scoped and revocable."""


@apikey.command("add")
@click.argument("name")
@click.option(
    "--source",
    required=True,
    help="The capture source its evidence names (e.g. web_form); not one of consentsync's own "
    "(double_opt_in, preference_center, consent_request, erasure, restriction, consentsync:*).",
)
@click.option("--purposes", **_listing("*", "Purpose keys; or *."))
@click.option(
    "--actions", **_listing("consents,decisions", "Of consents, objections, erasure, decisions; or *.")
)
@click.option(
    "--rate",
    type=click.IntRange(min=1, max=1_000_000),
    help="Requests per minute (default: hub.rate_per_minute).",
)
@scriptable
def apikey_add(
    name: str,
    source: str,
    purposes: tuple[str, ...],
    actions: tuple[str, ...],
    rate: int | None,
    as_json: bool,
) -> None:
    """Create a key. Its secret is shown this once: only a hash of it is kept."""
    from consentsync.hub import keys

    key, secret = keys.create(
        current_ledger(),
        name,
        source=source,
        purposes=_listed(purposes),
        actions=_listed(actions),
        rate_per_minute=rate,
        actor=login_name(),
    )
    if as_json:
        emit_json({**key.as_dict(), "secret": secret})
        return
    click.echo(f"API key {key.name!r} for source {key.source!r} created. Its secret (shown once):\n")
    click.echo(f"  {secret}\n")
    click.echo("Send it as: Authorization: Bearer <secret>")


@apikey.command("list")
@scriptable
def apikey_list(as_json: bool) -> None:
    """Every key, live and revoked (never their secrets). A live key whose source consentsync
    keeps for its own records (one an older version let in) is named on stderr: the capture API
    refuses the grants it would record."""
    from consentsync.hub import keys

    listed = keys.listed(current_ledger())
    for key in listed:
        if key.revoked_at is None and keys.is_reserved_source(key.source):
            click.echo(
                f"consentsync: warning: API key {key.name!r}: source {key.source!r} is one consentsync "
                "keeps for its own records: the capture API refuses its grants (403; its nos are recorded); "
                "revoke it and add a key with the capture source's own name",
                err=True,
            )
    rows = [key.as_dict() for key in listed]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        row["purposes"] = ",".join(row["purposes"])  # type: ignore[arg-type]
        row["actions"] = ",".join(row["actions"])  # type: ignore[arg-type]
    print_table(
        rows, ["name", "source", "prefix", "purposes", "actions", "created_at", "last_used_at", "revoked_at"]
    )


@apikey.command("revoke")
@click.argument("name")
@configured
def apikey_revoke(name: str) -> None:
    """Revoke a key: it is refused from the next request on."""
    from consentsync.hub import keys

    keys.revoke(current_ledger(), name, actor=login_name())
    click.echo(f"API key {name!r} revoked")


# -- notices ---------------------------------------------------------------------------------------


@main.group(short_help="The notice texts people are shown, versioned per purpose.")
def notice() -> None:
    """Notices: what a person was told when asked for consent. A capture names the version."""


@notice.command("add")
@click.argument("purpose")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--version", "version", required=True, help="The version name captures will give.")
@click.option("--language", default="en", show_default=True)
@click.option(
    "--in-effect-from",
    metavar="ISO8601",
    help="Since when people were shown the text (default: now). Grants naming the version dated "
    "before it are refused; give it when registering a text shown before (history to import). "
    "Without an offset, UTC.",
)
@scriptable
def notice_add(
    purpose: str, file: Path, version: str, language: str, in_effect_from: str | None, as_json: bool
) -> None:
    """Register FILE (UTF-8 text) as notice VERSION of PURPOSE. A version names one text forever."""
    from consentsync.domain import parse_timestamp
    from consentsync.hub import notices
    from consentsync.yamlfile import not_utf8

    if in_effect_from is not None and not in_effect_from.strip():
        raise InvalidInput("--in-effect-from is blank: give an ISO 8601 time, e.g. 2024-01-01T00:00:00Z")
    since = parse_timestamp(in_effect_from, "--in-effect-from") if in_effect_from else None

    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"{file}: no such file") from None
    except UnicodeDecodeError as error:
        raise InvalidInput(not_utf8(file, error)) from None
    ledger = current_ledger()
    added = notices.add(
        ledger, purpose, version, text, language=language, actor=login_name(), in_effect_from=since
    )
    earlier = notices.recorded_before(ledger, added)
    if earlier:
        # Their text is not known (subject show and the export name none for them): said here,
        # where whoever registers it can say since when it was shown.
        click.echo(
            f"warning: {earlier.count} values recorded under {purpose} {version} before "
            f"{added.shown_from.isoformat()} (the first at {earlier.first.isoformat()}) are not tied "
            "to this text; if it is the one they were shown, date it: consentsync notice add "
            f"{purpose} FILE --version {version} --in-effect-from {earlier.first.isoformat()}",
            err=True,
        )
    if as_json:
        emit_json(added.as_dict())
        return
    click.echo(
        f"notice {added.purpose} {added.version} ({added.language}) sha256 {added.sha256}, "
        f"in effect from {added.shown_from.isoformat()}"
    )


@notice.command("list")
@click.argument("purpose", required=False)
@scriptable
def notice_list(purpose: str | None, as_json: bool) -> None:
    """Every notice version (of PURPOSE), with its content hash."""
    from consentsync.hub import notices

    rows = [n.as_dict() for n in notices.listed(current_ledger(), purpose)]
    emit_rows(rows, ["purpose", "version", "language", "sha256", "created_at", "in_effect_from"], as_json)


@notice.command("show")
@click.argument("purpose")
@click.argument("version")
@click.option("--language")
@configured
def notice_show(purpose: str, version: str, language: str | None) -> None:
    """Print the text of a notice version."""
    from consentsync.hub import notices

    click.echo(notices.find(current_ledger(), purpose, version, language).text, nl=False)


# -- links and upkeep ------------------------------------------------------------------------------


@main.command(short_help="A person's signed, expiring link to their preference page.")
@click.argument("email")
@scriptable
def link(email: str, as_json: bool) -> None:
    """Print EMAIL's preference-centre link (valid hub.link_days days; for this person only).

    For an address its person left (a CRM record of theirs took another), the link is theirs,
    bound to the address they hold now, as every link the hub mails: send it there, not to
    EMAIL (stderr says so; --json: address_left)."""
    from consentsync.hub.capture import Hub

    config = current_config()
    ledger = current_ledger()
    address = lookup_email(email)  # an address older versions let in is still found
    # The live person holding the address, as every other command finds them (an erased one
    # holds no address: email_of is None); one that they left included (docs/hub.md, "Links
    # and an address the person left").
    uids = [uid for uid in ledger.subject_uids_for_email(address) if ledger.email_of(uid) is not None]
    if not uids:
        raise NotFound(f"no subject with email {email!r} in the ledger")
    hub_ = Hub(config, ledger)
    held = hub_.address_now(uids[0])
    if held is None:  # a sign-up held back: nowhere a link could go, none to give
        raise NotFound(f"subject {uids[0]} holds no address a link could go to (consentsync subject show)")
    left = held not in email_forms(address)
    # Bound to the address held now (its ``to``): mailed to the one left, whose mailbox may be
    # someone else's now, it would open their page for whoever reads it.
    url = hub_.preference_link(uids[0], to=held)
    if as_json:
        emit_json(
            {
                "subject": uids[0],
                "link": url,
                "valid_days": config.settings.hub.link_days,
                "address_left": left,
            }
        )
        return
    click.echo(url)
    if left:
        click.echo(
            f"consentsync: note: subject {uids[0]} left this address (a CRM record of theirs shows another "
            "now): the link is bound to the address they hold now; send it there, not to this one, whose "
            "mailbox may be someone else's (consentsync subject show names it)",
            err=True,
        )


@main.group(short_help="The hub's mails and upkeep: consent requests, renewals, lapsing.")
def hub() -> None:
    """The hub's scheduled work, also run by the daemon."""


@hub.command("lapse")
@configured
def hub_lapse() -> None:
    """Mark double opt-ins whose confirmation link expired as lapsed (they stay 'requested')."""
    from consentsync.hub.capture import Hub

    lapsed = Hub(current_config(), current_ledger()).lapse_unconfirmed()
    click.echo(f"{lapsed} unconfirmed double opt-in(s) lapsed")


@hub.command("requests")
@click.argument("purpose")
@click.option("--limit", type=ROW_COUNT, help="Ask at most this many people in this run.")
@click.option("--dry-run", is_flag=True, help="Count who would be asked; send nothing.")
@configured
def hub_requests(purpose: str, limit: int | None, dry_run: bool) -> None:
    """Mail a consent request for PURPOSE to everyone it applies to with nothing on record
    (never to erased, restricted or objecting people, nor to anyone who withdrew or refused).
    For a marketing purpose only to people we may already e-mail marketing (a consent in force
    or a soft opt-in): asking for marketing consent by e-mail is itself marketing (PECR reg. 22)."""
    from consentsync.hub.capture import Hub
    from consentsync.hub.outreach import Outreacher

    done = Outreacher(Hub(current_config(), current_ledger())).request_consent(
        purpose, limit=limit, dry_run=dry_run
    )
    if dry_run:
        click.echo(f"{done.candidates} person(s) would be asked for {purpose}{_left_out(done)}")
        return
    click.echo(f"{done.sent} consent request(s) sent for {purpose}, {done.failed} failed{_left_out(done)}")
    _unsent_fails(done.failed, "consent request(s)")


@hub.command("renew")
@click.option("--dry-run", is_flag=True, help="Count the renewals due; send nothing.")
@configured
def hub_renew(dry_run: bool) -> None:
    """Mail renewal requests for granted consents within their purpose's renewal_days_before."""
    from consentsync.hub.capture import Hub
    from consentsync.hub.outreach import Outreacher

    done = Outreacher(Hub(current_config(), current_ledger())).renew(dry_run=dry_run)
    if dry_run:
        click.echo(f"{done.candidates} renewal(s) due")
        return
    click.echo(f"{done.sent} renewal request(s) sent, {done.failed} failed{_left_out(done)}")
    _unsent_fails(done.failed, "renewal request(s)")


def _left_out(done: Outreach) -> str:
    """The people a run listed but did not mail, and why: the sent and failed counts alone
    leave an operator unable to tell where the rest of the list went (and a person erased,
    restricted or saying no during the run is no failure to retry)."""
    said: list[str] = []
    if done.no_ground:
        said.append(
            f"{done.no_ground} left out: nothing on record lets us e-mail them marketing (no consent "
            "to e-mail marketing in force, no soft opt-in), and a mail asking for marketing consent "
            "is itself marketing (PECR reg. 22)"
        )
    if done.unmailable:
        said.append(
            f"{done.unmailable} left out: their address is not one address (hub.not_mailable in the log)"
        )
    if done.erased:
        said.append(f"{done.erased} left out: erased while the run went on")
    if done.changed:
        said.append(
            f"{done.changed} left out: restricted, or said no or answered, while the run went on "
            "(hub.mail_skipped in the log)"
        )
    return "".join(f", {part}" for part in said)


def _unsent_fails(failed: int, what: str) -> None:
    """Mails that could not go (the mail server refused or could not be reached): nothing was
    recorded for them and the next run asks those people again; a scheduler retries on 69."""
    if failed:
        fail(
            f"{failed} {what} could not be mailed (hub.mail_failed in the log, hub.smtp in the config): "
            "nothing was recorded for them; the next run asks them again",
            exit_codes.UNAVAILABLE,
        )
