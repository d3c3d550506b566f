"""The command line's entry point (``consentsync = "consentsync.cli:main"``) and the ledger's own
commands: init, migrate, ledger, objection, erase, restrict, subject show|export, audit log.

The command line parses, calls a service, prints (tables for people, --json for scripts). Bad
input exits with code 2 and a one-line error naming what was wrong and what is accepted; nothing
is written before all input has been checked. What every command module shares is in cli_base;
the CRM, console, hub and admin commands are in the cli_* modules, imported here so that they
register on ``main``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy import func, inspect, select

# Importing the command modules registers their commands on ``main``.
from consentsync import cli_admin, cli_audit, cli_hub, cli_sync, cli_web  # noqa: F401
from consentsync.app import INIT_ACTIONS, ledger_engine, open_ledger, safe_url
from consentsync.cli_base import (
    MAX_ROW_ID,
    acting,
    audit_group,
    cell_text,
    check_output_folder,
    configured,
    current_config,
    current_ledger,
    emit_json,
    emit_result,
    emit_rows,
    known_filter,
    login_name,
    main,
    print_table,
    private_output,
    scriptable,
    subject,
)
from consentsync.config import (
    ERASURE_KEY_ENV,
    Config,
    ConfigError,
    default_config_path,
    load_config,
    parse_config,
    replace_whole,
    starter_with_ledger,
    write_key,
    write_starter,
)
from consentsync.domain import (
    EVIDENCE_REF_MAX,
    NOTICE_LANGUAGE,
    NOTICE_VERSION_MAX,
    SOURCE_MAX,
    ConsentStatus,
    Evidence,
    InvalidInput,
    LawfulBasis,
    Origin,
    SoftOptIn,
    as_read,
    check_label,
    check_moment,
    email_forms,
    lookup_email,
    normalise_email,
    parse_enum,
    parse_timestamp,
    shown,
)
from consentsync.hub.keys import check_own_source
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import Ledger, NotFound

EXPORT_FORMATS = ("json", "csv", "xlsx")


def _email(value: str) -> str:
    """An address that may enter the ledger (one address: domain.EMAIL_ACCEPTED), in its one
    form; it finds a person an older version holds under the form it came in (a domain in NFD,
    fullwidth letters: domain.as_read), as the sync path does, so that their withdrawal or
    objection reaches the record their CRMs are linked to, not a second person."""
    return as_read(normalise_email(value), value) or ""


def _held_email(value: str) -> str:
    """An address to find in the ledger: what older versions let in is still found, so that such
    a person can be erased, restricted, shown or exported (domain.lookup_email)."""
    return lookup_email(value)


def _left_by(ledger: Ledger, address: str) -> str | None:
    """The person who left ``address`` (a CRM record of theirs took another of their own), or
    None: held, or no one's; by the rule the hub mails by (``links.held_and_left``)."""
    from consentsync.hub.links import held_and_left

    forms = set(email_forms(address))
    for uid in ledger.subject_uids_for_email(address):
        if ledger.email_of(uid) is not None and forms & held_and_left(ledger, uid)[1]:
            return uid
    return None


def _time(value: str | None, option: str) -> datetime | None:
    return parse_timestamp(value, option) if value else None


# -- init ------------------------------------------------------------------------------------------


@main.command()
@click.option("--ledger-url", metavar="URL", help="Ledger database URL for a new config.")
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
@configured
def init(ledger_url: str | None, force: bool) -> None:
    """Write a commented starter config (if none exists) and create or upgrade the ledger."""
    path = default_config_path(click.get_current_context().meta.get("consentsync.config"))
    written: list[Path] = []
    replaced: bytes | None = None
    key_path = path.parent / "consentsync.key"
    if path.exists() and not force:
        if ledger_url is not None and load_config(path).settings.ledger.url != ledger_url:
            raise InvalidInput(
                f"{path} exists with another ledger.url: --ledger-url only goes into a new config; "
                f"edit ledger.url in {path}, or pass --force to write a new one"
            )
        click.echo(f"{path} exists: keeping it (use --force to overwrite)")
    else:
        try:
            starter = parse_config(starter_with_ledger(ledger_url), path)
            # The URL's driver is there (a PostgreSQL ledger without psycopg): checked before
            # anything is written, so the error names the option, not a file that then is not.
            ledger_engine(starter, checkpoints=False).dispose()
        except ConfigError as error:
            # Said of the option given, not of the file it would have gone into.
            raise InvalidInput(f"--ledger-url: {str(error).split('ledger.url: ', 1)[-1]}") from None
        replaced = path.read_bytes() if path.exists() else None  # --force
        try:
            key_path = write_starter(path, ledger_url, replace=force, created=written)
        except FileExistsError:
            # Another init (started at the same moment) wrote it since the check above.
            click.echo(f"{path} exists: keeping it (use --force to overwrite)")
        except OSError as error:
            # No permission, a read-only or full disk: one line, and nothing of ours left behind
            # (a key written before a config that could not be is removed again).
            _remove_written(written, path, replaced)
            if path in written and replaced is not None:
                with contextlib.suppress(OSError):
                    replace_whole(path, replaced, 0o644)  # --force keeps the config it replaced
            raise InvalidInput(
                f"{path.parent}: cannot write the starter config and erasure key there "
                f"({error.strerror or type(error).__name__}): pass --config with a folder you can write to"
            ) from None
    config = load_config(path)
    try:
        missing_key = _write_missing_key(config, written)
        open_ledger(config, migrate=True)
    except BaseException:
        # No ledger there (a database that does not exist, a folder that is not there): what
        # this command wrote goes too, so that the next init starts again from nothing.
        _remove_written(written, path, replaced)
        if path in written and replaced is not None:
            try:
                replace_whole(path, replaced, 0o644)  # --force keeps the config it replaced
            except OSError as error:  # the ledger's error below is the one to act on first
                click.echo(
                    f"consentsync: {path}: the config --force replaced could not be put back "
                    f"({error.strerror or type(error).__name__}): it holds the new starter config",
                    err=True,
                )
        raise
    if path in written:
        click.echo(f"wrote {path} (erasure key in {key_path}, mode 0600: back it up)")
    elif missing_key is not None:
        click.echo(f"wrote the missing erasure key {missing_key} (mode 0600: back it up)")
    click.echo(f"ledger ready at {safe_url(config.settings.ledger.url)}")


def _write_missing_key(config: Config, written: list[Path]) -> Path | None:
    """An init killed by an older consentsync between its config and its key left the config
    naming a key file that is not there: written now, but only while the ledger holds nothing
    keyed by a key (no person, suppression or snapshot: only what init itself records), since
    a new key would make every erasure made with the lost one unrecognised."""
    secrets = config.settings.secrets
    if os.environ.get(ERASURE_KEY_ENV) or secrets.erasure_hmac_key or not secrets.erasure_hmac_key_file:
        return None  # the key does not come from that file
    key_path = config.resolve_path(secrets.erasure_hmac_key_file)
    if key_path.exists():
        return None
    held = _ledger_rows_keyed(config)
    if held is None:
        return None  # the ledger cannot be read: opening it below says why
    if held:
        raise InvalidInput(
            f"{config.path}: secrets.erasure_hmac_key_file: {key_path} is missing and the ledger "
            f"{safe_url(config.ledger_url)} holds data keyed by it ({held}): restore it from your "
            "backup (a new key would leave every erasure made with it unrecognised)"
        )
    if not write_key(key_path):
        return None  # another init wrote it meanwhile: that one is kept
    written.append(key_path)
    return key_path


# What init itself records in a new ledger, keyed by no key: its schema version, the configured
# purposes and their audit entries (and the audit chain's head).
# ledger_settings holds the erasure key's check value only: a check of no data (app.check_erasure_key).
_INIT_ONLY_TABLES = frozenset({"alembic_version", "purposes", "audit_head", "ledger_settings"})


def _ledger_rows_keyed(config: Config) -> str | None:
    """The tables of ``config``'s ledger holding rows other than init's own (empty: none; None:
    the ledger could not be read, so nothing is known of it)."""
    from sqlalchemy.exc import SQLAlchemyError

    from consentsync.ledger import schema

    engine = ledger_engine(config, checkpoints=False)
    try:
        with engine.connect() as conn:
            present = set(inspect(conn).get_table_names())
            held = []
            for table in schema.metadata.sorted_tables:
                if table.name not in present or table.name in _INIT_ONLY_TABLES:
                    continue
                query = select(func.count()).select_from(table)
                if table.name == "audit_entries":
                    query = query.where(table.c.action.not_in(INIT_ACTIONS))
                if conn.execute(query).scalar_one():
                    held.append(table.name)
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()
    return ", ".join(held)


def _remove_written(written: list[Path], config: Path, replaced: bytes | None) -> None:
    """Removes what a failing init wrote; a config that --force replaced is not removed but put
    back whole (by the caller), so that no moment leaves the folder without one."""
    for created in written:
        if created != config or replaced is None:
            created.unlink(missing_ok=True)


@main.command()
@configured
def migrate() -> None:
    """Apply any pending ledger migrations."""
    open_ledger(current_config(), migrate=True)
    click.echo("ledger is up to date")


# -- ledger ----------------------------------------------------------------------------------------


@main.group()
def ledger() -> None:
    """Record consent events and maintain the ledger."""


@ledger.command("record")
@click.option("--email", required=True, help="The person's email address.")
@click.option("--purpose", required=True, help="A configured purpose key.")
@click.option("--status", required=True, help="|".join(s.value for s in ConsentStatus))
@click.option("--basis", help="Lawful basis (default: the purpose's).")
@click.option("--channel", default="email", show_default=True, help="A configured channel.")
@click.option(
    "--source",
    required=True,
    help="Where it was captured (web_form, phone, ...); not one of consentsync's own "
    "(double_opt_in, preference_center, consent_request, erasure, restriction, consentsync:*).",
)
@click.option("--at", "at", metavar="ISO8601", help="When the person acted (omit if unknown).")
@click.option(
    "--actor",
    help="Who recorded it (staff or system, never the subject's address; default: your login name).",
)
@click.option("--notice-version", help="Version of the notice the person was shown.")
@click.option(
    "--notice-language",
    metavar="LANG",
    help="Language of the notice text shown (its --notice-version's text in it); omitted: its first text.",
)
@click.option("--double-opt-in-at", metavar="ISO8601", help="Double opt-in confirmation time.")
@click.option("--evidence-ref", help="Reference to the proof (form submission id, recording, ...).")
@click.option(
    "--soft-opt-in-sale",
    metavar="REF",
    help="Soft opt-in (PECR reg. 22(3)), condition 1: the sale or negotiation the contact details "
    "were obtained in (order or quote reference). The soft opt-in needs all four --soft-opt-in "
    "options, --at, --status not_applicable (basis legitimate_interests).",
)
@click.option(
    "--soft-opt-in-similar-products",
    metavar="TEXT",
    help="Soft opt-in, condition 2: the similar products and services the marketing is about.",
)
@click.option(
    "--soft-opt-in-refusal-at-collection",
    metavar="REF",
    help="Soft opt-in, condition 3: where the chance to refuse was given at collection (form version).",
)
@click.option(
    "--soft-opt-in-refusal-in-messages",
    metavar="REF",
    help="Soft opt-in, condition 3: how every message offers it (template with its unsubscribe link).",
)
@scriptable
def ledger_record(
    email: str,
    purpose: str,
    status: str,
    basis: str | None,
    channel: str,
    source: str,
    at: str | None,
    actor: str | None,
    notice_version: str | None,
    notice_language: str | None,
    double_opt_in_at: str | None,
    evidence_ref: str | None,
    soft_opt_in_sale: str | None,
    soft_opt_in_similar_products: str | None,
    soft_opt_in_refusal_at_collection: str | None,
    soft_opt_in_refusal_in_messages: str | None,
    as_json: bool,
) -> None:
    """Record one consent event (or a soft opt-in) and show the effective state it leads to."""
    address = _email(email)
    if not source.strip():
        raise InvalidInput("--source must not be empty")
    check_label(source.strip(), "--source", SOURCE_MAX, required=True)
    # A double opt-in confirmed elsewhere is recorded under its own source with --double-opt-in-at.
    check_own_source(source.strip())
    # Who captured it is part of the record (Art. 5(2)), as erase's who erased.
    actor = acting(actor)
    # Proof (docs/policy.md, "Evidence"): a blank value given is refused, never recorded as if
    # it proved anything (a script's unset variable: --notice-version "$VERSION").
    check_label(notice_version, "--notice-version", NOTICE_VERSION_MAX, proof=True)
    check_label(evidence_ref, "--evidence-ref", EVIDENCE_REF_MAX, proof=True)
    # The ledger's own rule (``_check_notice_language``), said here naming the option.
    if notice_language is not None and not NOTICE_LANGUAGE.match(notice_language):
        raise InvalidInput(
            f"--notice-language: {shown(notice_language, 20)} is no language tag: expected one such as "
            "en, de or pt-BR"
        )
    if notice_language is not None and notice_version is None:
        raise InvalidInput(
            "--notice-language: given without --notice-version (the notice version whose text was "
            "shown in it)"
        )
    for option, moment in (("--at", at), ("--double-opt-in-at", double_opt_in_at)):
        if moment == "":
            raise InvalidInput(
                f"{option} is blank: give an ISO 8601 time, e.g. 2026-11-23T10:15:00Z, or leave {option} out"
            )
    target = current_ledger()
    now, skew = target.clock(), target.max_clock_skew_seconds
    check_moment(_time(at, "--at"), "--at", now, skew)
    check_moment(_time(double_opt_in_at, "--double-opt-in-at"), "--double-opt-in-at", now, skew)
    soft_opt_in = _soft_opt_in(
        soft_opt_in_sale,
        soft_opt_in_similar_products,
        soft_opt_in_refusal_at_collection,
        soft_opt_in_refusal_in_messages,
    )
    if soft_opt_in is not None and not basis:
        basis = LawfulBasis.LEGITIMATE_INTERESTS.value  # a soft opt-in is no consent
    evidence = Evidence(
        purpose=purpose.strip(),
        channel=channel.strip().lower(),
        status=parse_enum(ConsentStatus, status, "status"),
        basis=parse_enum(LawfulBasis, basis, "lawful basis") if basis else None,
        soft_opt_in=soft_opt_in,
        event_time=_time(at, "--at"),
        observed_at=target.clock(),
        source=source.strip(),
        origin=Origin.CAPTURE,
        actor=actor,
        notice_version=notice_version,
        double_opt_in_at=_time(double_opt_in_at, "--double-opt-in-at"),
        evidence_ref=evidence_ref,
        notice_language=notice_language,
    )
    target.validate(evidence)
    if evidence.status is ConsentStatus.GRANTED:
        _check_grant_proof(target, evidence)
    evidence = _text_language(target, evidence)
    # A no for an erased address keeps it a keyed hash: only a grant brings the person back.
    says_no = evidence.status is not ConsentStatus.GRANTED  # as the capture API reads it
    outcome = target.record(Identity(email=address, says_no=says_no), evidence)
    result = {
        "subject": outcome.subject_uid,
        "duplicate": outcome.duplicate,
        "before": outcome.before.as_dict() if outcome.before else None,
        "after": outcome.after.as_dict() if outcome.after else None,
    }
    if as_json:
        emit_json(result)
    elif outcome.duplicate:
        click.echo("already recorded: the same evidence is in the ledger; nothing changed")
    else:
        assert outcome.before is not None and outcome.after is not None
        before, after = outcome.before, outcome.after
        click.echo(
            f"recorded {evidence.status.value} for {evidence.purpose}/{evidence.channel}: "
            f"{before.status.value} -> {after.status.value}, basis {after.basis.value}, "
            f"suppressed {cell_text(after.suppressed)} (rule {after.rule})"
        )


def _check_grant_proof(target: Ledger, evidence: Evidence) -> None:
    """A grant recorded by hand carries the proof a capture through the API does (Art. 7(1);
    docs/policy.md, "Evidence"), so that no path makes a person contactable on a bare claim:
    the notice version shown, registered for its purpose and in effect at the grant's time, as
    the API asks (``notices.check_grant_notice``, the one rule both follow), and when the person
    gave it (``--at``: the API dates a capture at its receipt, where the person acts; here it
    is entered later, so only ops know the time). A purpose without any registered notice (a
    deployment that keeps its notice texts elsewhere, not in the hub) takes the version as
    given, or an evidence reference or a double opt-in time instead: there is nothing to check
    a version against, but something must show what the person agreed to."""
    from consentsync.hub.notices import check_grant_notice, check_shown, in_effect

    purpose, version = evidence.purpose, evidence.notice_version
    since = check_grant_notice(purpose, version, in_effect(target), "--notice-version", kept_elsewhere=True)
    unproven = version is None and evidence.evidence_ref is None and evidence.double_opt_in_at is None
    if since is None and unproven:
        raise InvalidInput(
            f"a grant needs its proof: give --notice-version (the notice shown), --evidence-ref (where "
            f"the proof is kept: a form submission, a call recording) or --double-opt-in-at (its "
            f"confirmation time); {purpose!r} has no notice registered (consentsync notice add "
            f"{purpose} FILE --version VERSION)"
        )
    if evidence.event_time is None:
        raise InvalidInput(
            "--at: a grant needs the time the person gave it, as ISO 8601 with its offset "
            "(e.g. 2026-11-23T10:15:00Z): an undated grant proves nothing"
        )
    if since is not None and version is not None:
        check_shown(purpose, version, since, evidence.event_time, "--at (event_time)")


def _text_language(target: Ledger, evidence: Evidence) -> Evidence:
    """``--notice-language`` names a registered text of the version, as the capture API's
    ``language`` does (hub/capture.py): a grant is refused unless the version had a text in that
    language in effect at ``--at`` (``check_language``: its proof would name no text, or one
    registered later); a no keeps the language only where such a text was in effect
    (``language_in_effect``: a no is never refused for a label). A purpose whose notices are
    kept elsewhere has no text to check against: the language is kept as given, as its version
    is (``_check_grant_proof``)."""
    from consentsync.hub.notices import check_language, in_effect, languages_in_effect
    from consentsync.notice_texts import language_in_effect

    purpose, version, language = evidence.purpose, evidence.notice_version, evidence.notice_language
    if language is None or version is None:
        return evidence
    if not any(registered == purpose for registered, _version in in_effect(target)):
        return evidence
    texts = languages_in_effect(target).get((purpose, version), {})
    moment = evidence.event_time or evidence.observed_at
    if evidence.status is ConsentStatus.GRANTED:
        check_language(purpose, version, texts, language, moment, "--notice-language")
        return evidence
    return dataclasses.replace(evidence, notice_language=language_in_effect(texts, language, moment))


def _soft_opt_in(*values: str | None) -> SoftOptIn | None:
    """The four --soft-opt-in options: none of them, or all (each condition evidenced)."""
    names = (
        "--soft-opt-in-sale",
        "--soft-opt-in-similar-products",
        "--soft-opt-in-refusal-at-collection",
        "--soft-opt-in-refusal-in-messages",
    )
    if all(value is None for value in values):
        return None
    missing = [name for name, value in zip(names, values, strict=True) if not (value or "").strip()]
    if missing:
        raise InvalidInput(
            f"a soft opt-in needs each of its conditions evidenced: missing {', '.join(missing)}"
        )
    sale, similar, at_collection, in_messages = (str(value).strip() for value in values)
    return SoftOptIn(sale, similar, at_collection, in_messages)


@ledger.command("expire")
@scriptable
def ledger_expire(as_json: bool) -> None:
    """Record the expiry of every granted consent past its purpose's validity window (every sync
    run and the daemon do it too: docs/policy.md, "Expiry")."""
    # The sweep the runs and the daemon make: a batch a transaction, each looked up under the
    # writer lock (once whoever sweeps at the same time), and a purpose taken out of the
    # configuration passed over instead of failing the command on it.
    expired = current_ledger().expire_due().recorded
    emit_result({"expired": expired}, as_json, f"expired {expired} consent(s)")


@ledger.command("requested")
@click.option(
    "--older-than",
    type=click.IntRange(min=0),
    metavar="DAYS",
    help="Default: policy.requested_stale_after_days.",
)
@scriptable
def ledger_requested(older_than: int | None, as_json: bool) -> None:
    """Report consents requested and still unanswered after a while."""
    config = current_config()
    days = config.settings.policy.requested_stale_after_days if older_than is None else older_than
    rows = open_ledger(config).stale_requests(days)
    if as_json:
        emit_json(rows)
    else:
        click.echo(f"consents requested more than {days} day(s) ago and still unanswered:")
        print_table(rows, ["email", "purpose", "channel", "requested_since", "subject"])


# -- objections ------------------------------------------------------------------------------------


@main.group(short_help="Raise, review and decide objections (GDPR Article 21).")
def objection() -> None:
    """Raise, review and decide objections (GDPR Art. 21)."""


@objection.command("raise")
@click.option("--email", required=True)
@click.option("--purpose", required=True)
@click.option(
    "--direct-marketing",
    is_flag=True,
    help="An objection to direct marketing (Art. 21(2)): always upheld.",
)
@click.option("--at", "at", metavar="ISO8601", help="When the person objected (default: now).")
@click.option(
    "--source",
    default="ops",
    show_default=True,
    help="Where the person objected; not one of consentsync's own (double_opt_in, "
    "preference_center, consent_request, erasure, restriction, consentsync:*).",
)
@click.option("--actor", help="Who recorded it (staff or system; default: your login name).")
@scriptable
def objection_raise(
    email: str,
    purpose: str,
    direct_marketing: bool,
    at: str | None,
    source: str,
    actor: str | None,
    as_json: bool,
) -> None:
    """Record an objection; the purpose's configuration decides whether it needs review.

    Refused (exit 2, nothing recorded) where the person's processing for the purpose rests on
    neither legitimate interests nor a public task and does not serve direct marketing (Art.
    21): a consent is withdrawn instead (consentsync ledger record --status withdrawn)."""
    from consentsync.ledger.service import NotObjectable

    address = _email(email)
    raised_at = _time(at, "--at")
    check_label(source, "--source", SOURCE_MAX, required=True)
    check_own_source(source)
    actor = acting(actor)  # who recorded it is part of the record (Art. 5(2))
    target = current_ledger()
    check_moment(raised_at, "--at", target.clock(), target.max_clock_skew_seconds)
    try:
        result = target.raise_objection(
            address,
            purpose.strip(),
            direct_marketing=direct_marketing,
            raised_at=raised_at,
            source=source,
            actor=actor,
        )
    except NotObjectable as error:
        if "consent" not in error.bases:
            raise
        # The ledger's line, with the command that does what the person may do instead.
        raise InvalidInput(
            f"{error} (consentsync ledger record --purpose {error.purpose} --status "
            "withdrawn --channel ... --source ...)"
        ) from None
    pending = result["status"] == "pending"
    emit_result(
        result,
        as_json,
        "no objection recorded: the address was erased and is suppressed for every purpose"
        if result.get("erased")
        else f"objection {result['id']} is pending review; {purpose} is suppressed until it is decided"
        if pending
        else f"objection {result['id']} upheld ({result['decided_by']})",
    )


@objection.command("list")
@click.option("--pending", is_flag=True, help="Only objections waiting for a decision.")
@scriptable
def objection_list(pending: bool, as_json: bool) -> None:
    """List objections: pending first, oldest first."""
    rows = current_ledger().list_objections(pending_only=pending)
    emit_rows(
        rows, ["id", "email", "purpose", "direct_marketing", "status", "raised_at", "decided_by"], as_json
    )


@objection.command("decide")
@click.argument("objection_id", type=int, metavar="ID")
@click.option("--uphold", is_flag=True, help="Uphold the objection.")
@click.option("--reject", is_flag=True, help="Reject it: the controller's grounds override.")
@click.option("--by", required=True, help="Who decides.")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@scriptable
def objection_decide(
    objection_id: int, uphold: bool, reject: bool, by: str, reason: str, as_json: bool
) -> None:
    """Decide a pending objection."""
    # Two flags, not one value two flags set: click would keep the last of "--uphold --reject"
    # silently, and a decision cannot be taken back.
    if uphold == reject:
        raise InvalidInput("say --uphold or --reject" + (", not both" if uphold else ""))
    if not 1 <= objection_id <= MAX_ROW_ID:
        raise NotFound(f"no objection with id {objection_id}")
    result = current_ledger().decide_objection(objection_id, uphold=uphold, by=by, reason=reason)
    emit_result(result, as_json, f"objection {objection_id} {result['status']} by {by}")


# -- erasure ---------------------------------------------------------------------------------------


@main.command(short_help="Erase a person (GDPR Article 17), keeping a keyed-hash suppression.")
@click.option("--email", required=True)
@click.option("--reason", required=True, help="Why (kept with the suppression entry).")
@click.option("--actor", help="Who erases (kept in the audit log; default: your login name).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--left-address",
    is_flag=True,
    help="Erase by an address its person left, once the request is confirmed as theirs.",
)
@scriptable
def erase(email: str, reason: str, actor: str | None, yes: bool, left_address: bool, as_json: bool) -> None:
    """Erase a person (Art. 17), keeping only a keyed-hash suppression entry.

    An address its person left (a CRM record of theirs shows another now) may be someone else's
    mailbox: erasing by it needs --left-address, once the request is confirmed as the person's."""
    address = _held_email(email)
    # Who erased is part of the record (Art. 5(2)): the login name when --actor is not given;
    # checked before the question, so that a blank one is refused with nothing asked or done.
    who = acting(actor)
    target = current_ledger()
    left_by = None if left_address else _left_by(target, address)
    if left_by is not None:
        # An erasure cannot be undone, and whoever asks from a left mailbox may be its new owner
        # (docs/policy.md, "An address a person no longer holds"): the capture API mails a
        # confirmation to the address held now instead; here ops confirm it and say so.
        raise InvalidInput(
            f"subject {left_by} left {email} (a CRM record of theirs shows another address now): whoever "
            "asked from it may be the mailbox's new owner, and an erasure cannot be undone; confirm the "
            f"request with the person at the address they hold now (consentsync subject show {email}; "
            f"consentsync link {email} gives a link bound to it), then pass --left-address"
        )
    if not yes:
        if not sys.stdin.isatty():
            # A script must say so: an erasure cannot be undone, and nobody is there to ask.
            raise InvalidInput("erase cannot be undone: confirm on a terminal, or pass --yes")
        click.confirm(f"Erase {address}? This cannot be undone", abort=True)
    result = target.erase(address, reason=reason, actor=who)
    entry = result["suppression_id"]
    emit_result(
        result,
        as_json,
        f"erased subject {result['subject']}; suppression entry {entry} kept"
        if result["subject_known"]
        else f"no subject held that address; it was erased before: suppression entry {entry} stays"
        if result["already_suppressed"]
        else f"no subject held that address; suppression entry {entry} recorded",
    )


@main.command(short_help="Restrict processing of a person (GDPR Article 18), or lift it.")
@click.option("--email", required=True)
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@click.option("--lift", is_flag=True, help="Lift an earlier restriction.")
@click.option("--actor", help="Who restricts or lifts (kept in the audit log; default: your login name).")
@scriptable
def restrict(email: str, reason: str, lift: bool, actor: str | None, as_json: bool) -> None:
    """Restrict processing of a person (Art. 18): stored, not otherwise processed."""
    who = acting(actor)
    result = current_ledger().restrict(_held_email(email), restricted=not lift, reason=reason, actor=who)
    subject_uid = result["subject"]
    still = result.get("still_restricted_by", {})
    emit_result(
        result,
        as_json,
        f"subject {subject_uid}'s own restriction lifted; still restricted while a CRM record of theirs "
        f"holds the data of restricted subject {still[subject_uid]} (lifted with that one's)"
        if subject_uid in still
        else f"restriction lifted for subject {subject_uid}"
        if lift
        else f"subject {subject_uid} restricted: every purpose is suppressed until lifted",
    )


# -- subjects --------------------------------------------------------------------------------------


@subject.command("show")
@click.argument("email")
@scriptable
def subject_show(email: str, as_json: bool) -> None:
    """Effective state per purpose and channel, with the deciding rule, and the full history."""
    from consentsync.export import with_objection_reasons

    ledger = current_ledger()
    # Each objection with the reason it was upheld or rejected for on review (the audit log's).
    view = with_objection_reasons(ledger, ledger.subject_view(_held_email(email)))
    ledger.audit_read(view["subject"], "subject.viewed", actor=login_name(), source="cli")
    if as_json:
        emit_json(view)
        return
    click.echo(
        f"subject {view['subject']}  ({view['email']}, since {view['created_at']}, as of {view['as_of']})"
    )
    from consentsync.hub.links import held_and_left

    # The addresses left as the hub judges them (``held_and_left``): where it mails agrees.
    gone = held_and_left(ledger, view["subject"])[1]
    left_at = {i["identifier"]: i["left_at"] for i in view["identifiers"] if i["identifier"] in gone}
    others = [item["identifier"] for item in view["identifiers"] if item["identifier"] != view["email"]]
    if others:
        noted = [f"{other} (left {left_at[other]})" if other in left_at else other for other in others]
        click.echo(f"  also held under: {', '.join(noted)}")
    if view["email"] in left_at:
        click.echo(
            f"  left: they left {view['email']} on {left_at[view['email']]} (a CRM record of theirs shows "
            "another now): whoever writes from it may be someone else"
        )
    if view["suppressed_by_erasure"]:
        click.echo("  suppressed: this address was erased before")
    click.echo("\neffective state:")
    print_table(
        view["purposes"],
        ["purpose", "channel", "status", "basis", "suppressed", "rule", "since", "expires_at"],
    )
    click.echo("\nhistory:")
    print_table(
        view["history"],
        ["event_time", "recorded_at", "purpose", "channel", "status", "basis", "source", "actor"],
    )
    if view["objections"]:
        click.echo("\nobjections:")
        print_table(
            view["objections"],
            ["id", "purpose", "direct_marketing", "status", "raised_at", "decided_by", "decision_reason"],
        )
    if view["crm_records"]:
        click.echo("\nCRM records:")
        print_table(
            view["crm_records"], ["connector", "object", "record_id", "linked_at", "status", "merged_into"]
        )


@subject.command("export")
@click.argument("email")
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
@configured
def subject_export(email: str, fmt: str, output: Path, force: bool) -> None:
    """Export one person's record as JSON, CSV or XLSX (readable by its owner only)."""
    from consentsync.export import with_restrictions, write_export  # openpyxl: slow to import

    check_output_folder(output, force=force)
    ledger = current_ledger()
    view = with_restrictions(ledger, ledger.subject_view(_held_email(email)))
    with private_output(output, force=force) as aside:
        write_export(view, fmt, aside)
    ledger.audit_read(
        view["subject"], "subject.exported", actor=login_name(), source="cli", what={"format": fmt}
    )
    click.echo(f"wrote {output}")


# -- audit -----------------------------------------------------------------------------------------


# The actions the audit log's entries name (``audit log --action``). A value not listed is still
# accepted when entries of it are in the log (written by another version of consentsync).
AUDIT_ACTIONS = (
    "apikey.bound", "apikey.created", "apikey.revoked", "audit.viewed", "confirmation.disowned",
    "confirmation.opened", "consent.recorded", "crm.push_held", "crm.pushed", "crm.record_deleted",
    "crm.record_merged", "crm.record_restored", "ledger.binding_by_chain", "ledger.confirmations_bound",
    "login.failed", "login.succeeded", "notice.added", "notice.dated", "objection.decided",
    "objection.raised", "outbox.retried", "plan.applied", "plan.made", "plan.refused", "plan.rejected",
    "purpose.configured", "quarantine.retried", "state.changed", "subject.absorbed", "subject.created",
    "subject.erased", "subject.erasure_requested", "subject.exported", "subject.identifier_added",
    "subject.identifier_held_again", "subject.identifier_left", "subject.identifiers_bound",
    "subject.restricted", "subject.restriction_lifted", "subject.restriction_requested", "subject.viewed",
    "suppression.added", "sync.cursor_reset", "user.added", "user.disabled", "user.enabled",
    "user.password_changed", "user.role_changed", "user.sessions_ended", "user.unlocked",
)  # fmt: skip


@audit_group.command("log")
@click.option("--email", help="Only entries about this person (also after erasure).")
@click.option("--since", metavar="ISO8601")
@click.option(
    "--action",
    help="Only this action (consent.recorded, objection.decided, subject.viewed, subject.exported, ...; "
    "an unknown one is refused, listing them all).",
)
@click.option("--limit", type=click.IntRange(min=1))
@click.option(
    "--include-views",
    is_flag=True,
    help="Also the log's own reads (audit.viewed), left out otherwise (--action audit.viewed lists them).",
)
@scriptable
def audit_log(
    email: str | None,
    since: str | None,
    action: str | None,
    limit: int | None,
    include_views: bool,
    as_json: bool,
) -> None:
    """List audit entries, oldest first. Each listing is written down (an audit.viewed entry);
    those entries are left out unless --include-views or --action audit.viewed asks for them
    (`audit verify` counts them all)."""
    from consentsync import audit
    from consentsync.ledger.schema import audit_entries

    target = current_ledger()
    since_at = _time(since, "--since")
    with target.engine.connect() as conn:

        def logged(value: str) -> bool:
            column = audit_entries.c.action
            return conn.execute(select(column).where(column == value).limit(1)).first() is not None

        action = known_filter("--action", action, AUDIT_ACTIONS, found=logged, what="audit action")
    uids = target.subject_uids_for_email(_held_email(email)) if email else None
    filters = audit.AuditFilters(
        subject_uids=uids, since=since_at, action=action, include_views=include_views
    )
    with target.engine.connect() as conn:
        if limit is not None and limit > MAX_ROW_ID:
            limit = None  # more than the log can ever hold: no limit
        items = audit.entries(conn, **filters, limit=limit)
        if as_json:
            shown = _stream_json(items)
        else:
            rows = [_audit_row(entry) for entry in items]
            print_table(
                rows, ["seq", "at", "action", "subject", "what", "change", "rule", "source", "actor", "run"]
            )
            shown = len(rows)
    # A person's trail is their record read (Art. 30): written down as `subject show` and the
    # console's search write theirs; once it is printed, so that it is not in it.
    for uid in uids or []:
        target.audit_read(uid, "subject.viewed", actor=login_name(), source="cli")
    # And the read of the log itself, whatever its filters: its entries are people's trails.
    audit.log_viewed(
        target.engine, target.clock(), filters, shown, actor=login_name(), source="cli", limit=limit
    )


def _audit_row(entry: dict[str, Any]) -> dict[str, Any]:
    what = {k: v for k, v in (entry.get("what") or {}).items() if not k.endswith("fingerprint")}
    return {
        **entry,
        "subject": (entry.get("subject") or "-")[:8],
        "what": " ".join(f"{k}={cell_text(v)}" for k, v in what.items() if v is not None),
        "change": f"{_brief(entry.get('old'))} -> {_brief(entry.get('new'))}",
    }


def _brief(state: Any) -> str:
    """A state as people read it: ``granted`` or ``withdrawn (suppressed)``."""
    if isinstance(state, dict) and "status" in state:
        return state["status"] + (" (suppressed)" if state.get("suppressed") else "")
    if isinstance(state, dict) and "suppressed" in state:
        return "suppressed" if state["suppressed"] else "not suppressed"
    return cell_text(state)


def _stream_json(items: Iterable[dict[str, Any]]) -> int:
    """Prints ``items`` as a JSON array as they come; returns how many were printed."""
    # The query runs (and may refuse the input) before anything is printed.
    iterator = iter(items)
    first = next(iterator, None)
    click.echo("[", nl=False)
    printed = 0
    for index, item in enumerate(itertools.chain([first], iterator) if first is not None else ()):
        click.echo(("," if index else "") + "\n  " + json.dumps(item, ensure_ascii=False), nl=False)
        printed = index + 1
    click.echo("\n]")
    return printed


if __name__ == "__main__":
    main()
