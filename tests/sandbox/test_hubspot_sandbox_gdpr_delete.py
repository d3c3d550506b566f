"""The HubSpot sandbox's permanent delete (``POST /crm/v3/objects/contacts/gdpr-delete``, HubSpot's
reference "Permanently delete a contact (GDPR-compliant)") against an archive, over HTTPS with
plain requests: gone for good (in no list, its id 404, not restorable), its address blocklisted,
one contact a call, the write scope."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from consentsync_hubspot.sandbox.server import (
    HubSpotApiError,
    HubSpotCredentials,
    HubSpotPortal,
    HubSpotSandbox,
)


@pytest.fixture
def sandbox() -> Iterator[HubSpotSandbox]:
    with HubSpotSandbox(HubSpotPortal(), secondly_limit=1000, search_per_second=1000) as server:
        server.portal.seed(5, seed=9)
        yield server


@pytest.fixture
def api(sandbox: HubSpotSandbox) -> requests.Session:
    session = sandbox.requests_session()
    session.headers["Authorization"] = f"Bearer {sandbox.credentials.access_token}"
    return session


def _gdpr_delete(api: requests.Session, sandbox: HubSpotSandbox, **body: str) -> requests.Response:
    return api.post(f"{sandbox.api_url}/crm/v3/objects/contacts/gdpr-delete", json=body)


def _archived_ids(api: requests.Session, sandbox: HubSpotSandbox) -> list[str]:
    listed = api.get(f"{sandbox.api_url}/crm/v3/objects/contacts", params={"archived": "true", "limit": 100})
    return [item["id"] for item in listed.json()["results"]]


def test_a_permanent_delete_leaves_nothing_to_list_read_or_restore(
    sandbox: HubSpotSandbox, api: requests.Session
) -> None:
    """Archived, a contact is listed with ``archived=true``, read back with its values and
    restorable; permanently deleted, it is in no list, its id answers 404 everywhere, and it
    cannot be restored."""
    portal = sandbox.portal
    archived, deleted, kept = portal.ids()[:3]
    deleted_email = portal.get(deleted)["email"]
    portal.archive(archived)
    answer = _gdpr_delete(api, sandbox, objectId=deleted)
    assert answer.status_code == 204 and not answer.content
    assert _archived_ids(api, sandbox) == [archived], "a permanently deleted contact is listed as archived"
    assert api.get(f"{sandbox.api_url}/crm/v3/objects/contacts/{deleted}").status_code == 404
    read = api.post(
        f"{sandbox.api_url}/crm/v3/objects/contacts/batch/read",
        params={"archived": "true"},
        json={"properties": ["email"], "inputs": [{"id": archived}, {"id": deleted}]},
    ).json()
    assert [item["id"] for item in read["results"]] == [archived], "its values can still be read"
    search = api.post(
        f"{sandbox.api_url}/crm/v3/objects/contacts/search",
        json={
            "filterGroups": [
                {"filters": [{"propertyName": "email", "operator": "EQ", "value": deleted_email}]}
            ]
        },
    ).json()
    assert search["total"] == 0
    assert portal.restore(deleted) is False, "a permanently deleted contact was restored"
    assert portal.restore(archived) is True, "an archived contact is restorable (the recycle bin)"
    assert portal.get(archived) is not None and portal.get(kept) is not None
    # Deleted for good already: 404 (HubSpot does not document it: the sandbox's choice).
    again = _gdpr_delete(api, sandbox, objectId=deleted)
    assert again.status_code == 404 and again.json()["category"] == "OBJECT_NOT_FOUND"


def test_a_contact_in_the_recycle_bin_is_taken_out_of_it(
    sandbox: HubSpotSandbox, api: requests.Session
) -> None:
    (contact,) = sandbox.portal.ids()[:1]
    sandbox.portal.archive(contact)
    assert _gdpr_delete(api, sandbox, objectId=contact).status_code == 204
    assert _archived_ids(api, sandbox) == []
    assert sandbox.portal.restore(contact) is False


def test_the_address_is_blocklisted_for_users_and_imports(
    sandbox: HubSpotSandbox, api: requests.Session
) -> None:
    """HubSpot's knowledge base ("Perform a permanent delete"): a permanently deleted contact's
    address cannot be added back through the UI or an import; a form, a connected inbox or an
    API request can add it."""
    portal = sandbox.portal
    (contact,) = portal.ids()[:1]
    email = portal.get(contact)["email"]
    assert _gdpr_delete(api, sandbox, objectId=contact).status_code == 204
    assert portal.blocklisted(email)
    for via in ("ui", "import"):
        with pytest.raises(HubSpotApiError, match="permanently deleted"):
            portal.create({"email": email.upper()}, via=via)
    back = portal.create({"email": email}, via="form")
    assert portal.get(back)["email"] == email


def test_by_email_an_unknown_address_is_blocklisted_too(
    sandbox: HubSpotSandbox, api: requests.Session
) -> None:
    portal = sandbox.portal
    (contact,) = portal.ids()[:1]
    email = portal.get(contact)["email"]
    assert _gdpr_delete(api, sandbox, objectId=email, idProperty="email").status_code == 204
    assert portal.get(contact) is None and portal.purged(contact)
    assert _gdpr_delete(api, sandbox, objectId="nobody@example.test", idProperty="email").status_code == 204
    assert portal.blocklisted("nobody@example.test")
    with pytest.raises(HubSpotApiError):
        portal.create({"email": "nobody@example.test"})


def test_one_contact_a_call_and_the_write_scope(sandbox: HubSpotSandbox, api: requests.Session) -> None:
    (contact,) = sandbox.portal.ids()[:1]
    assert _gdpr_delete(api, sandbox).status_code == 400  # no objectId
    batch = api.post(
        f"{sandbox.api_url}/crm/v3/objects/contacts/gdpr-delete", json={"inputs": [{"id": contact}]}
    )
    assert batch.status_code == 400 and sandbox.portal.get(contact) is not None
    assert _gdpr_delete(api, sandbox, objectId=contact, idProperty="firstname").status_code == 400
    sandbox.credentials = HubSpotCredentials(
        access_token=sandbox.credentials.access_token,
        scopes=sandbox.credentials.scopes - {"crm.objects.contacts.write"},
    )
    refused = _gdpr_delete(api, sandbox, objectId=contact)
    assert refused.status_code == 403
    assert refused.json()["errors"][0]["context"]["requiredGranularScopes"] == ["crm.objects.contacts.write"]
    assert sandbox.portal.get(contact) is not None
    assert sandbox.calls["gdpr_delete"] >= 4
