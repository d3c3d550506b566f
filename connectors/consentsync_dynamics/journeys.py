"""Customer Insights - Journeys consent rows the connector creates.

Journeys decides whom it may message from its consent rows (``msdynmkt_contactpointconsent4``:
one per contact point value, purpose and consent value), not from the contact's checkboxes. For a
purpose whose enforcement model is non-restrictive it messages every address without an Opted
out row, so a person's no that the ledger holds reaches Journeys only as a row: the connector
updates the rows there are (contact_point_consent.yaml) and creates the missing one through the
object :data:`JOURNEYS_CONTACT`.

That object is no Dataverse table: each of its records is a contact (same id, read through the
contact table's change tracking and the consent table's, whose changes hand over the contacts
they concern) seen from Journeys' consent center. Its field
``purpose_<purpose id without dashes>`` is true when each address the contact holds in the
recipient fields Journeys may email (setting ``journeys_email_fields``, the email recipient
fields of its audience configuration; ``emailaddress1`` by default) has a purpose-level Email
consent row for that purpose, or when the contact has no address (nothing to create), and empty
otherwise: Journeys checks consent per address. A mapping pushes true for a person's no only
(``push: {withdrawn: true}``); the connector then creates the row of each address without one,
Opted out: source Internal,
reason "No reasons", and :data:`MARKER` as its reason description (the Journeys documentation's
way to tell the rows a sync wrote). Its id is derived from the purpose and the address under a
key, so that a create re-sent (a lost answer, a crash) finds its first attempt instead of adding
a second row (``PATCH`` with ``If-None-Match: *``: 412 when it exists).

Read back, a row the connector created and nobody changed since (its marker, Opted out, and
modified by whoever created it) is the connector's own write: the consent-row read leaves it out,
so it is never taken for the person's choice. So is such a row someone else changed only around
its value (its source, reason description, owner, state), where its audit history shows the value
never changed (:func:`own_value_kept`, connector ``_own_rows``). A change of the value (the person
in a preference center), or a row whose history cannot tell, is read as any other row.

Sources: Microsoft Learn, "Create a consent record using a cloud flow" (Customer Insights -
Journeys), "Manage user compliance settings" (enforcement models) and "Select the audience source
for journeys" (recipient fields); the Contact Point Consent
(msdynmkt_contactpointconsent4) table/entity reference; Dataverse Web API "Perform conditional
operations" (If-None-Match) and "Execute batch operations" (GET requests in a batch).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "CONSENT_TABLE",
    "CONTACT_EMAIL",
    "JOURNEYS_CONTACT",
    "MARKER",
    "OPTED_OUT",
    "address_key",
    "field_for",
    "new_row",
    "own_row_ids",
    "own_untouched",
    "own_value_kept",
    "purpose_of",
    "redacted",
    "row_id",
]

#: The object whose records are contacts as Journeys' consent center sees them. No Dataverse
#: table can be named so: a custom table's publisher prefix has at most eight characters.
JOURNEYS_CONTACT = "consentsync_journeys_contact"
CONSENT_TABLE = "msdynmkt_contactpointconsent4"
#: The contact's default email recipient field in Journeys' audience configuration (the setting
#: ``journeys_email_fields`` lists those of an environment).
CONTACT_EMAIL = "emailaddress1"
#: Option set values (the Contact Point Consent table reference).
EMAIL_POINT = 534120000  # msdynmkt_contactpointtype: Email
OPTED_OUT = 534120002  # msdynmkt_value: Opted Out
PURPOSE_LEVEL = 534120000  # msdynmkt_contactpointconsenttype: Purpose
SOURCE_INTERNAL = 534120000  # msdynmkt_source: Internal
NO_REASONS = 534119999  # msdynmkt_logicalreason: No reasons
#: The navigation property the purpose lookup is written through (its
#: ReferencingEntityNavigationPropertyName: property names are case-sensitive).
PURPOSE_NAVIGATION = "msdynmkt_purposeId"
#: msdynmkt_reason ("Reason Description", text) of every row the connector creates.
MARKER_PREFIX = "consentsync:"
MARKER = f"{MARKER_PREFIX} Opted out for the person's no recorded in the consent ledger"

_FIELD = re.compile(r"purpose_([0-9a-f]{32})")  # matched whole (fullmatch)
_ADDRESS = re.compile(
    # As written (``ann@example.test``), or percent-encoded as a URL carries it (``ann%40...``:
    # the whole run of encoded text around it goes, the quotes and spaces of a $filter too).
    r"[^\s@<>()\[\]{},;:\"'`|/\\]+(?:@|%40)[^\s@<>()\[\]{},;:\"'`|/\\]+",
    re.IGNORECASE,
)
_NAMESPACE = uuid.UUID("0c6f1e0e-5b1a-4c8e-9d3a-6a5f3c0e7d21")


def field_for(purpose_id: str) -> str:
    """The field of :data:`JOURNEYS_CONTACT` that stands for a purpose."""
    return f"purpose_{uuid.UUID(purpose_id).hex}"


def purpose_of(field: str) -> str | None:
    """The purpose id a field of :data:`JOURNEYS_CONTACT` names (None: not such a field)."""
    match = _FIELD.fullmatch(field)
    return str(uuid.UUID(hex=match.group(1))) if match else None


def address_key(value: Any) -> str | None:
    """An address as consent rows are matched to it (Dataverse compares text without regard to
    case); None when it is no address (empty, or without an @)."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    return text.lower() if "@" in text else None


def redacted(text: str | None) -> str | None:
    """An error message of the service with every address in it left out: a refused look-up or
    create may quote the request (its $filter, its body), and the message is logged and kept in
    the run's report and the quarantine."""
    if not text or ("@" not in text and "%40" not in text):
        return text
    return _ADDRESS.sub("<address>", text)


#: How many ids a purpose and an address have (:func:`row_id`): a row the connector created whose
#: address someone edits keeps its id, and the address it left takes the next one.
GENERATIONS = 4


def row_id(key: bytes, purpose_id: str, address: str, generation: int = 0) -> str:
    """The id of the row the connector creates for a purpose and an address (:func:`address_key`):
    always the same, so that a create sent again finds the first; derived under ``key`` (the
    connector's ``own_rows_secret``, by default its client secret), so that the id does not give
    the address away to someone who guesses it. ``generation``: the next id, where the first is
    held by a row moved to another address."""
    text = f"{purpose_id.lower()}\n{address}" + (f"\n{generation}" if generation else "")
    digest = hmac.new(key, text.encode(), hashlib.sha256).digest()
    return str(uuid.uuid5(_NAMESPACE, digest.hex()))


def own_row_ids(keys: Sequence[bytes], purpose_id: str, address: str) -> set[str]:
    """Every id the connector may have created the row of a purpose and an address under: each
    generation under each of ``keys`` (the key new rows get, and the earlier ones a rotation left
    rows under: a row created before the key changed is still the connector's own)."""
    purpose = purpose_id.lower()
    return {row_id(key, purpose, address, g) for key in keys for g in range(GENERATIONS)}


def new_row(address: str, purpose_id: str, purpose_set: str) -> dict[str, Any]:
    """The body of a created row: Opted out, for the purpose (not a topic), on Email, its source
    and reason as the Journeys documentation's cloud flow sets them, and :data:`MARKER`."""
    return {
        "msdynmkt_contactpointvalue": address,
        "msdynmkt_contactpointtype": EMAIL_POINT,
        "msdynmkt_value": OPTED_OUT,
        "msdynmkt_contactpointconsenttype": PURPOSE_LEVEL,
        f"{PURPOSE_NAVIGATION}@odata.bind": f"/{purpose_set}({purpose_id})",
        "msdynmkt_source": SOURCE_INTERNAL,
        "msdynmkt_logicalreason": NO_REASONS,
        "msdynmkt_reason": MARKER,
    }


#: The consent-row columns :func:`own_untouched` reads (logical names).
OWN_COLUMNS = ("msdynmkt_value", "msdynmkt_reason", "createdby", "modifiedby")
#: The columns :func:`own_value_kept` reads besides (where the table has them).
OWN_ROW_COLUMNS = ("msdynmkt_contactpointvalue", "msdynmkt_purposeid", "modifiedon")
#: What a consent row says, as against what surrounds it (its source, reason, owner, state):
#: an update of one of these is a new statement, never the connector's write.
VALUE_COLUMNS = ("msdynmkt_value", "msdynmkt_contactpointtype", "msdynmkt_contactpointconsenttype")


def own_untouched(row: Mapping[str, Any], wire: Mapping[str, str]) -> bool:
    """Whether a consent row (as the Web API answers it; ``wire``: logical name -> property) is
    one the connector created that nobody has changed since: its marker, still Opted out, last
    modified by whoever created it."""
    reason = row.get(wire["msdynmkt_reason"])
    created, modified = row.get(wire["createdby"]), row.get(wire["modifiedby"])
    return (
        isinstance(reason, str)
        and reason.startswith(MARKER_PREFIX)
        and row.get(wire["msdynmkt_value"]) == OPTED_OUT
        and isinstance(created, str)
        and isinstance(modified, str)
        and created.lower() == modified.lower()
    )


def own_value_kept(
    row: Mapping[str, Any], wire: Mapping[str, str], keys: Sequence[bytes], primary: str
) -> bool:
    """Whether a consent row (as the Web API answers it; ``primary``: its id property) is one the
    connector created that still says what it wrote, whoever changed it since: still Opted out,
    and at the address and purpose its id was derived from under one of ``keys`` (:func:`row_id`,
    any generation: only the connector, holding the key, makes such an id). Whether its value
    stayed Opted out all along, rather than being changed and set back, is for its audit history."""
    if row.get(wire["msdynmkt_value"]) != OPTED_OUT:
        return False
    address_wire, purpose_wire = wire.get("msdynmkt_contactpointvalue"), wire.get("msdynmkt_purposeid")
    if address_wire is None or purpose_wire is None:
        return False
    address, purpose = address_key(row.get(address_wire)), row.get(purpose_wire)
    rid = str(row.get(primary) or "").lower()
    if address is None or not isinstance(purpose, str) or not rid:
        return False
    return rid in own_row_ids(keys, purpose, address)
