"""The HubSpot connector's ``delete`` erasure action over HTTPS against the sandbox: a permanent
(GDPR) delete, one contact a call, each answered as it returns; never an archive HubSpot keeps
restorable for 90 days, unless ``delete_mode: archive`` says so. A contact already gone is done;
a 404 that a read of the contact contradicts is not."""

from __future__ import annotations

from typing import Any

import pytest
from consentsync_hubspot import HubSpotConnector
from consentsync_hubspot.sandbox.harness import HubSpotHarness
from consentsync_hubspot.sandbox.server import HubSpotCredentials
from pydantic import ValidationError

from consentsync.sdk import Action, ConnectorError, Cursor, RecordUpdate, WriteAction
from tests.connectors.against_sandbox import read_until


def connector(hubspot: HubSpotHarness, **extra: Any) -> HubSpotConnector:
    return HubSpotConnector("hs-test", hubspot.connector_settings(**extra))


def _deletes(*ids: str) -> list[RecordUpdate]:
    return [RecordUpdate("contacts", record_id, {}, WriteAction.DELETE) for record_id in ids]


def test_the_delete_action_deletes_for_good_one_contact_a_call(hubspot: HubSpotHarness) -> None:
    """Each contact is permanently deleted by a call of its own, answered as the call returns:
    not in the archived list (so not read as a deletion), not restorable, its address
    blocklisted; nothing is archived."""
    portal = hubspot.sandbox.portal
    ids = hubspot.seed(4)
    emails = [portal.get(record_id)["email"] for record_id in ids[:3]]
    conn = connector(hubspot)
    calls = conn.write_batches(_deletes(*ids[:3]))
    first = next(calls)
    assert list(first) == [0] and first[0].ok
    assert hubspot.sandbox.calls["gdpr_delete"] == 1, "the first contact was not answered on its own"
    rest = list(calls)
    assert [list(answers) for answers in rest] == [[1], [2]]
    assert all(result.ok for answers in rest for result in answers.values())
    assert hubspot.sandbox.calls["gdpr_delete"] == 3 and hubspot.sandbox.calls["batch_archive"] == 0
    assert set(hubspot.record_ids()) == {ids[3]}
    assert portal.archived() == [], "the contacts went to the recycle bin"
    assert all(portal.purged(record_id) and not portal.restore(record_id) for record_id in ids[:3])
    assert all(portal.blocklisted(email) for email in emails)
    assert list(conn.read_deletions("contacts", Cursor(), read_until())) == []
    assert conn.usage.per_endpoint["gdpr_delete"] == 3


def test_a_contact_already_gone_is_done_after_a_read_confirms_it(hubspot: HubSpotHarness) -> None:
    """Sent again after a run stopped before the ledger took the answer: HubSpot has nothing
    left to delete (404), a read of the id answers 404 too, and the delete is done."""
    (contact,) = hubspot.seed(1)
    conn = connector(hubspot)
    assert [r.ok for r in conn.write(_deletes(contact))] == [True]
    reads = hubspot.sandbox.calls["get"]
    (again,) = conn.write(_deletes(contact))
    assert again.ok, again
    assert hubspot.sandbox.calls["gdpr_delete"] == 2
    assert hubspot.sandbox.calls["get"] == reads + 1, "the 404 was not checked by a read of the id"


def test_a_404_the_contact_contradicts_is_no_erasure(hubspot: HubSpotHarness) -> None:
    """A 404 of another kind (here the endpoint finding nothing while the contact is there, as
    a proxy or a portal not serving the path would answer) never counts as the contact
    deleted: the contact is still there, so the answer is a failure, not retried."""
    (contact,) = hubspot.seed(1)
    hubspot.sandbox.portal.gdpr_delete = lambda _contact_id: False  # type: ignore[method-assign]
    (result,) = connector(hubspot).write(_deletes(contact))
    assert (result.ok, result.error_code, result.retryable) == (False, "NOT_DELETED", False)
    assert hubspot.sandbox.portal.get(contact) is not None


def test_a_secondly_limit_is_waited_out_and_the_delete_sent_again(hubspot: HubSpotHarness) -> None:
    (contact,) = hubspot.seed(1)
    conn = connector(hubspot)
    conn.check()
    hubspot.sandbox.faults.update(throttle_after=0, throttle_calls=1, throttle_retry_after=0.2)
    (result,) = conn.write(_deletes(contact))
    assert result.ok and hubspot.sandbox.portal.purged(contact)
    assert hubspot.sandbox.faults_injected["throttle"] == 1
    assert hubspot.sandbox.calls["gdpr_delete"] == 2, "the throttled delete was not sent again"


def test_without_the_write_scope_the_run_fails_naming_it(hubspot: HubSpotHarness) -> None:
    (contact,) = hubspot.seed(1)
    creds = hubspot.sandbox.credentials
    hubspot.sandbox.credentials = HubSpotCredentials(
        access_token=creds.access_token, scopes=creds.scopes - {"crm.objects.contacts.write"}
    )
    with pytest.raises(ConnectorError, match=r"crm\.objects\.contacts\.write") as raised:
        connector(hubspot).write(_deletes(contact))
    assert raised.value.action is Action.FAIL
    assert hubspot.sandbox.portal.get(contact) is not None
    # The permanent delete needs that scope and no other (HubSpot's reference names it alone).
    assert hubspot.sandbox.calls["gdpr_delete"] == 1 and hubspot.sandbox.calls["batch_archive"] == 0


def test_delete_mode_archive_archives_a_hundred_a_call(hubspot: HubSpotHarness) -> None:
    """The restorable delete, asked for: archived (in the recycle bin, listed as deleted, its
    values kept), ``batch_size`` a call; no permanent delete."""
    ids = hubspot.seed(150)
    conn = connector(hubspot, delete_mode="archive")
    batches = list(conn.write_batches(_deletes(*ids)))
    assert [len(b) for b in batches] == [100, 50]
    assert all(result.ok for batch in batches for result in batch.values())
    assert hubspot.sandbox.calls["batch_archive"] == 2 and hubspot.sandbox.calls["gdpr_delete"] == 0
    assert {r.record_id for r in conn.read_deletions("contacts", Cursor(), read_until())} == set(ids)
    assert hubspot.sandbox.portal.restore(ids[0]) is True


def test_delete_mode_is_gdpr_unless_archive_is_asked_for(hubspot: HubSpotHarness) -> None:
    assert connector(hubspot).config.delete_mode == "gdpr"
    assert connector(hubspot, delete_mode="archive").config.delete_mode == "archive"
    with pytest.raises(ValidationError, match=r"delete_mode[\s\S]*'gdpr' or 'archive'"):
        connector(hubspot, delete_mode="purge")
