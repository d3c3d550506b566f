"""`consentsync demo --hub`: the ledger as the hub, end to end.

A person exists in every CRM sandbox, opted out of email marketing. On the company's web site
they sign up for the newsletter: the form posts to the capture API (`/v1/consents`, with an API
key), and because the purpose asks for double opt-in the ledger records "requested" and mails a
confirmation link. A local SMTP server (aiosmtpd) receives the mail; the demo follows the link
and confirms, as the person would. Every CRM syncs and is told the person opted in (where its
mapping writes grants, and the CRM accepts one from an integration). Then the
person opens the preference page linked from that mail and withdraws; every CRM syncs again and
is told the person opted out. The console serves the API and the pages on a real port.

CRMs are found through their registered harnesses, as in ``demo --crms``: the core names none.
"""

from __future__ import annotations

import re
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from email import message_from_bytes
from email import policy as email_policy
from pathlib import Path
from typing import Any

import yaml

from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.demo import email_marketing_state
from consentsync.demo_crms import PERSON, _past_this_second, _sync, _write_config
from consentsync.domain import InvalidInput
from consentsync.ledger.service import utcnow
from consentsync.mapping import load_mapping
from consentsync.sdk.harness import available_harnesses
from consentsync.sdk.registry import SANDBOX_EXTRA

NOTICE = (
    "We send offers and news by email about twice a month. You can withdraw at any time, on "
    "your preference page or from any of our mails."
)
NEEDS = "pip install 'consentsync[console,demo]'"


class Inbox:
    """What the demo's SMTP server received (aiosmtpd's handler hook)."""

    def __init__(self) -> None:
        self.mails: list[Any] = []

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        self.mails.append(message_from_bytes(envelope.content, policy=email_policy.default))
        return "250 OK"

    def wait_for(self, count: int, seconds: float = 15.0) -> Any:
        """The ``count``-th mail, once it arrived (the API mails after it answered)."""
        deadline = time.monotonic() + seconds
        while len(self.mails) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"mail {count} did not arrive within {seconds:.0f} s")
            time.sleep(0.05)
        return self.mails[count - 1]

    def link(self, path: str) -> str:
        body = self.mails[-1].get_body(("plain",)).get_content()
        # Without its query (``?lang=``, the language the page opens in): paths are added to it.
        found = re.search(r"https?://\S+" + re.escape(path) + r"[^\s?]+", body)
        if found is None:
            raise RuntimeError(f"no {path} link in the last mail")
        return found.group(0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _parts() -> tuple[Any, Any, Any, Any]:
    try:
        import requests
        from aiosmtpd.controller import Controller

        from consentsync.web.server import WebServer, build
    except ImportError as missing:
        raise InvalidInput(
            f"demo --hub needs the console and the demo: {NEEDS} ({missing.name} is missing)"
        ) from None
    return Controller, WebServer, build, requests


def run_hub_demo(
    vendors: Sequence[str] | None = None,
    *,
    records: int = 20,
    workdir: Path | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    controller_class, web_server, build, requests = _parts()
    registered = available_harnesses()
    if not registered:
        raise InvalidInput(f"demo --hub needs the CRM sandboxes, and none is installed: {SANDBOX_EXTRA}")
    chosen = list(vendors or sorted(registered))
    unknown = [v for v in chosen if v not in registered]
    if unknown:
        raise InvalidInput(
            f"--crms: unknown {', '.join(unknown)}: installed are {', '.join(sorted(registered))}"
        )
    harnesses = {vendor: registered[vendor].load()() for vendor in chosen}
    started = time.monotonic()
    work = workdir or Path(tempfile.mkdtemp(prefix="consentsync-demo-hub-"))
    summary: dict[str, Any] = {"workdir": str(work), "person": PERSON, "crms": chosen}
    inbox = Inbox()
    smtp_port, web_port = _free_port(), _free_port()
    smtp = controller_class(inbox, hostname="127.0.0.1", port=smtp_port)
    running: list[Any] = []
    server = None
    try:
        smtp.start()
        ids: dict[str, str] = {}
        for vendor, harness in harnesses.items():
            harness.start()
            running.append(harness)
            harness.seed(records)
            ids[vendor] = harness.create_person(PERSON, opted_out=True)
            say(f"{vendor}: sandbox with {records} contacts and {PERSON} "
                f"({harness.object_type} {ids[vendor]}), opted out of email")  # fmt: skip
        _past_this_second()
        config_path = _write_config(work, harnesses)
        base = f"http://127.0.0.1:{web_port}"
        data = yaml.safe_load(config_path.read_text())
        for purpose in data["purposes"]:
            if purpose["key"] == "email_marketing":
                purpose["double_opt_in"] = True
                purpose["description"] = "Offers and news by email, about twice a month."
        # Over the starter's hub section, so that what it sets (gpc_purposes: without it every
        # start warns that a GPC signal opts out of nothing) stays.
        data["hub"] = {
            **(data.get("hub") or {}),
            "public_url": base,
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "sender": "privacy@example.org"},
            "branding": {"name": "Example Co. privacy"},
        }
        config_path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        config = load_config(config_path)
        ledger = open_ledger(config, migrate=True)
        ledger.clock = utcnow
        ledger.sync_purposes()
        from consentsync.hub import keys, notices

        notices.add(ledger, "email_marketing", "2026-12", NOTICE, actor="demo")
        _key, secret = keys.create(
            ledger,
            "website",
            source="web_form",
            purposes=["email_marketing"],
            actions=["consents"],
            actor="demo",
        )
        say(f"ledger: {config.settings.ledger.url}; console, capture API and preference centre at {base}")
        say(f"a local SMTP server on port {smtp_port} receives the mails\n")
        for vendor in harnesses:
            _sync(config, ledger, vendor, "full sync", say, full=True)

        server = web_server(build(config, ledger), port=web_port).start()
        form = {"email": PERSON, "purpose": "email_marketing", "status": "granted",
                "notice_version": "2026-12", "evidence_ref": "form:newsletter-signup"}  # fmt: skip
        answer = requests.post(
            f"{base}/v1/consents", json=form, headers={"Authorization": f"Bearer {secret}"}, timeout=30
        ).json()["results"][0]
        say(f"\nthe web site's sign-up form posts to /v1/consents: recorded '{answer['recorded']}', "
            f"confirmation {answer.get('confirmation')}")  # fmt: skip
        mail = inbox.wait_for(1)
        say(f"mail received: to {mail['To']}, subject {mail['Subject']!r}")
        confirm = inbox.link("/p/confirm/")
        preferences = inbox.link("/p/preferences/")
        page = requests.get(confirm, timeout=30)
        requests.post(confirm, data={}, timeout=30)
        say(f"the person opens the link (GET {page.status_code}: a page with a button, never a confirmation) "
            "and confirms (POST)")  # fmt: skip
        state = _state(ledger)
        say(f"ledger: email_marketing/email is {state['status']} (rule {state['rule']})\n")
        _past_this_second()
        for vendor in harnesses:
            _sync(config, ledger, vendor, "incremental sync", say)
        summary["after_opt_in"] = {v: harnesses[v].read_opted_out(ids[v]) for v in harnesses}
        refused = _refusals(ledger)
        for vendor, opted_out in summary["after_opt_in"].items():
            why = refused.get((f"{vendor}-demo", ids[vendor]))
            if why:
                why = f" (the CRM refused the opt-in: {why.rstrip('.')}; quarantined for ops)"
            elif opted_out and not _writes_grants(harnesses[vendor]):
                why = (" (its mapping writes no grant: `allowed` is left out of the push table, and "
                       "the CRM's own capture records consents)")  # fmt: skip
            say(f"  {vendor} {ids[vendor]}: opted out of email = {opted_out}{why or ''}")

        requests.post(
            f"{preferences}/choose",
            data={"purpose": "email_marketing", "channel": "email", "action": "withdraw"},
            timeout=30,
        )
        state = _state(ledger)
        say(f"\nthe person opens the preference page linked from the mail and withdraws: ledger says "
            f"{state['status']} (rule {state['rule']})")  # fmt: skip
        _past_this_second()
        for vendor in harnesses:
            _sync(config, ledger, vendor, "incremental sync", say)
        summary["after_withdrawal"] = {v: harnesses[v].read_opted_out(ids[v]) for v in harnesses}
        for vendor, opted_out in summary["after_withdrawal"].items():
            say(f"  {vendor} {ids[vendor]}: opted out of email = {opted_out}")
        summary["mails"] = [str(m["Subject"]) for m in inbox.mails]
        say(f"\nmails sent: {len(inbox.mails)} ({'; '.join(summary['mails'])})")
        summary["ledger_state"] = state
    finally:
        if server is not None:
            server.stop()
        for harness in running:
            harness.stop()
        smtp.stop()
    summary["seconds"] = round(time.monotonic() - started, 1)
    say(f"the demo took {summary['seconds']} s; look further with: "
        f"consentsync --config {work / 'consentsync.yaml'} subject show {PERSON}")  # fmt: skip
    return summary


def _writes_grants(harness: Any) -> bool:
    """Whether the harness's mapping of its object writes email marketing's grants (its status
    push table names ``allowed``): some leave a consent to be recorded in the CRM itself."""
    for path in harness.mapping_files:
        mapping = load_mapping(path)
        if mapping.object != harness.object_type:
            continue
        for consent, pairs in mapping.pairs:
            status = consent.status
            if ("email_marketing", "email") in pairs and status is not None and status.push:
                return "allowed" in status.push
    return False


def _refusals(ledger: Any) -> dict[tuple[str, str], str]:
    """Pushes a CRM refused (some CRMs let only the person themselves opt back in)."""
    from sqlalchemy import select

    from consentsync.ledger.schema import quarantine

    with ledger.engine.connect() as conn:
        rows = conn.execute(
            select(quarantine.c.connector, quarantine.c.record_id, quarantine.c.reason).where(
                quarantine.c.stage == "push", quarantine.c.resolved_at.is_(None)
            )
        )
        return {(row.connector, row.record_id): row.reason for row in rows}


def _state(ledger: Any) -> dict[str, Any]:
    return email_marketing_state(ledger.subject_view(PERSON))
