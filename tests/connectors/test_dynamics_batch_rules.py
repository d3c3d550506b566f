"""Dynamics against its sandbox, the rules of ``$batch`` as Microsoft documents them:

* a GET inside a batch may have a URL of up to 64 KB (65,536 characters) as sent, percent-encoded
  ("Execute batch operations using the Web API"): the consent-row look-ups are sized on that,
  whatever script the addresses are in;
* without ``Prefer: odata.continue-on-error`` the service stops at the first failed request and
  answers the batch with its status (same page, "Handling errors"): the look-ups send it, and no
  error text hands an address over to the logs;
* an update answered 404 whose record a GET answers 404 too is gone (``WriteResult.gone``), not
  refused; a delete answered 404 is done;
* ids and names are matched whole (a trailing newline is not part of a GUID)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import pytest
import structlog
from consentsync_dynamics import DynamicsConnector
from consentsync_dynamics.journeys import purpose_of, redacted
from consentsync_dynamics.sandbox.dataverse import RowError
from consentsync_dynamics.sandbox.server import URL_LIMIT, DynamicsSandbox, _json, _Part

from consentsync.sdk import ConnectorError, Cursor, RecordUpdate, WriteAction
from tests.connectors.against_sandbox import connector_settings, read_until

JOURNEYS = "consentsync_journeys_contact"
MARKETING_FIELD = "purpose_6f0b1c7e0d6a4c1e9a51000000000001"
MARKETING = str(uuid.UUID(hex=MARKETING_FIELD.removeprefix("purpose_")))


class _Watched(DynamicsSandbox):
    """Notes the longest URL of a request inside a $batch, and each batch's Prefer header."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.longest = 0
        self.prefers: list[str | None] = []

    def _inner(self, part: _Part):  # type: ignore[no-untyped-def]
        self.longest = max(self.longest, len(part.url))
        return super()._inner(part)

    def _batch(self, version: str, request: Any):  # type: ignore[no-untyped-def]
        self.prefers.append(request.header("Prefer"))
        return super()._batch(version, request)


@pytest.fixture
def dv() -> Iterator[_Watched]:
    with _Watched() as server:
        yield server


def _connector(dv: DynamicsSandbox, **extra: Any) -> DynamicsConnector:
    return DynamicsConnector("dyn-rules", connector_settings(dv.connection_settings(), extra))


@pytest.mark.parametrize(
    "address",
    [
        "иван.петров.{n:04d}@компания.рф",  # Cyrillic: 6 characters a letter, encoded
        "顾客名字很长很长的用户{n:04d}@例子公司网站.公司",  # CJK: 9
        "{n:04d}😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀@example.test",  # emoji: 12
    ],
)
def test_a_page_of_internationalised_addresses_is_looked_up_within_the_url_limit(
    dv: _Watched, address: str
) -> None:
    env = dv.environment
    made = {}
    for n in range(900):
        written = address.format(n=n)
        made[env.create("contact", {"lastname": "Intl", "emailaddress1": written})] = n
        if n % 4 == 0:
            env.create(
                "msdynmkt_contactpointconsent4",
                {
                    "msdynmkt_contactpointvalue": written.upper(),
                    "msdynmkt_contactpointtype": 534120000,
                    "msdynmkt_value": 534120002,
                    "_msdynmkt_purposeid_value": MARKETING,
                },
            )
    connector = _connector(dv, page_size=5000)
    records = list(
        connector.read_changes(JOURNEYS, ["emailaddress1", MARKETING_FIELD], Cursor(), read_until())
    )
    assert {made[r.record_id]: r.fields[MARKETING_FIELD] for r in records} == {
        n: (True if n % 4 == 0 else None) for n in range(900)
    }
    assert 40_000 < dv.longest <= URL_LIMIT, dv.longest  # long GETs, each within the limit
    assert dv.calls["batch"] == 1  # the page's look-ups in one $batch


def test_the_sandbox_refuses_a_url_over_the_limit_inside_a_batch(dv: _Watched) -> None:
    """What the connector is held to: the sandbox answers such a request 414, as the service
    refuses it, so a look-up sized on characters instead of the URL as sent fails here."""
    connector = _connector(dv)
    long_filter = " or ".join(f"emailaddress1 eq 'ж{n}@пример.рф'" for n in range(800))
    url = f"{connector.config.api_url}/contacts?$filter={quote(long_filter, safe='')}"
    assert len(url) > URL_LIMIT
    with pytest.raises(ConnectorError, match="414") as refused:
        connector._get_in_batches([url], "look up")
    assert "@" not in str(refused.value) and "%40" not in str(refused.value)


class _Quoting(_Watched):
    """Refuses every look-up of the consent rows with a message quoting its request (the
    service's parser errors quote the $filter), raw and percent-encoded; ``strip_prefer``: as a
    proxy that drops the Prefer header would, so the service stops at the first failure."""

    strip_prefer = False

    def _inner(self, part: _Part):  # type: ignore[no-untyped-def]
        if part.method == "GET" and "contactpointconsent4s" in part.url:
            said = f"Syntax error in 'ann.lee@example.test' of {part.url[-120:]}"
            return _json(400, {"error": {"code": "0x80060888", "message": said}})
        return super()._inner(part)

    def _batch(self, version: str, request: Any):  # type: ignore[no-untyped-def]
        if self.strip_prefer:
            request = replace(
                request, headers={k: v for k, v in request.headers.items() if k.lower() != "prefer"}
            )
        return super()._batch(version, request)


@pytest.mark.parametrize("strip_prefer", [False, True])
def test_look_ups_go_on_past_a_refused_get_and_no_address_reaches_the_error_or_the_logs(
    strip_prefer: bool,
) -> None:
    with _Quoting() as dv:
        dv.strip_prefer = strip_prefer
        dv.environment.create("contact", {"lastname": "Lee", "emailaddress1": "ann.lee@example.test"})
        connector = _connector(dv)
        with structlog.testing.capture_logs() as logs, pytest.raises(ConnectorError) as refused:
            list(connector.read_changes(JOURNEYS, ["emailaddress1", MARKETING_FIELD], Cursor(), read_until()))
        text = str(refused.value)
        assert "0x80060888" in text and "<address>" in text
        for said in [text, *(str(entry) for entry in logs)]:
            assert "ann.lee" not in said and "%40" not in said.lower() and "@example" not in said
        # Every look-up $batch asks the service to go on past a refused request (stripped on the
        # way, the service stopped: the batch's answer is the refused request's, said the same).
        assert dv.prefers and all(
            p is None if strip_prefer else "odata.continue-on-error" in p for p in dv.prefers
        )


def test_addresses_are_left_out_percent_encoded_too() -> None:
    said = "Bad request: contacts?%24filter=emailaddress1%20eq%20%27%D0%B8%40%D1%80.%D1%80%D1%84%27 (line 1)"
    assert redacted(said) == "Bad request: <address> (line 1)"


def test_an_update_of_a_contact_deleted_in_dataverse_is_gone_and_the_rest_of_its_batch_is_written(
    dv: _Watched,
) -> None:
    env = dv.environment
    live = env.create("contact", {"lastname": "Live", "emailaddress1": "live@example.test"})
    deleted = env.create("contact", {"lastname": "Deleted", "emailaddress1": "deleted@example.test"})
    erased = env.create("contact", {"lastname": "Erased", "emailaddress1": "erased@example.test"})
    env.delete("contact", deleted)
    env.delete("contact", erased)
    connector = _connector(dv)
    results = connector.write(
        [
            RecordUpdate("contact", deleted, {"donotemail": True}),
            RecordUpdate("contact", live, {"donotemail": True}),
            RecordUpdate("contact", erased, {}, WriteAction.DELETE),
        ]
    )
    gone, written, done = results
    assert (gone.ok, gone.gone, gone.retryable, gone.error_code) == (False, True, False, "0x80040217")
    assert written.ok and not written.gone and env.get("contact", live)["donotemail"] is True
    assert done.ok and not done.gone  # a delete answered 404: already done
    assert env.get("contact", deleted) is None  # If-Match: *: nothing created


class _MissingLookup(_Watched):
    """Answers a contact's update 404 as a lookup bound to a row that does not exist is."""

    refused: str = ""

    def _patch(self, version: str, table: Any, record_id: str, request: Any):  # type: ignore[no-untyped-def]
        if record_id == self.refused:
            raise RowError(404, "0x80040217", "account With Id = 1d3c... Does Not Exist")
        return super()._patch(version, table, record_id, request)


def test_an_update_answered_404_for_a_record_that_exists_is_not_gone() -> None:
    with _MissingLookup() as dv:
        dv.refused = dv.environment.create("contact", {"lastname": "Here"})
        (result,) = _connector(dv).write([RecordUpdate("contact", dv.refused, {"donotemail": True})])
        assert (result.ok, result.gone, result.error_code) == (False, False, "0x80040217")


def test_ids_and_names_are_matched_whole(dv: _Watched) -> None:
    contact = dv.environment.create("contact", {"lastname": "Whole"})
    connector = _connector(dv)
    batches = dv.calls["batch"]
    (result,) = connector.write([RecordUpdate("contact", f"{contact}\n", {"donotemail": True})])
    assert (result.ok, result.error_code) == (False, "INVALID_ID") and dv.calls["batch"] == batches
    (journeys,) = connector.write([RecordUpdate(JOURNEYS, f"{contact}\n", {MARKETING_FIELD: True})])
    assert journeys.error_code == "INVALID_ID"
    with pytest.raises(ConnectorError, match="not a Dataverse row id"):
        list(
            connector.read_changes(
                "contact", ["emailaddress1"], Cursor(read_until(), f"{contact}\n"), read_until()
            )
        )
    with pytest.raises(ConnectorError, match="logical name"):
        connector.describe("contact\n")
    assert purpose_of(f"{MARKETING_FIELD}\n") is None and purpose_of(MARKETING_FIELD) == MARKETING
