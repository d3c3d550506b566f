"""The syntax of an address the ledger takes in (domain.normalise_email): one RFC 5321 address,
never what a mail header reads as several recipients or a display name. Every way in (a CRM
record through the mapping, the CLI, the capture API) checks it there."""

from __future__ import annotations

import time
from email.message import EmailMessage

import pytest

from consentsync.domain import InvalidInput, lookup_email, normalise_email

# What a To header reads as another recipient, a group, a display name or a comment.
NOT_ONE = [
    "a@b.example,ceo",
    "a,b@evil.example",
    "a;b@evil.example",
    "a@b.example;ceo@b.example",
    "team:x@evil.example;",
    "x@evil.example>,<ceo",
    "<a@b.example>",
    "Boss <a@b.example>",
    '"a,b"@b.example',
    "(note)a@b.example",
    "a@b.example (note)",
    "a b@b.example",
    "a@b.example\r\nBcc: c@d.example",
    "a\u00a0b@b.example",
    "a@[192.0.2.1]",
    "a\\b@b.example",
]
FINE = [
    "jörg@bücher.example",
    "o'brien+news@example.test",
    "first.last-x_y@sub.example.co.uk",
    "x/y=z?{a}|~^`#$%&*!@x-y.example",
    "a..b@docomo.example",  # carriers handed these out; a dot never splits a recipient
    "Ada@Example.ORG ",
]


@pytest.mark.parametrize("address", NOT_ONE)
def test_an_address_a_mail_header_reads_otherwise_is_refused(address: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        normalise_email(address)
    message = str(refused.value)
    assert "\n" not in message and "one address local@domain.tld" in message


@pytest.mark.parametrize("address", FINE)
def test_one_address_is_accepted_and_reads_as_itself_in_a_header(address: str) -> None:
    email = normalise_email(address)
    header = EmailMessage()
    header["To"] = email
    assert [found.addr_spec for found in header["To"].addresses] == [email]


def test_a_long_refused_address_is_refused_at_once() -> None:
    """No pattern that backtracks for ever on a 300-character address."""
    started = time.perf_counter()
    for text in ("a" * 300 + ",", "a@" + "b-" * 150 + ",", "a@" + "b" * 300 + ".c-"):
        with pytest.raises(InvalidInput):
            normalise_email(text)
    assert time.perf_counter() - started < 0.5


def test_an_address_taken_in_by_an_older_version_can_still_be_looked_up() -> None:
    """It may sit in a ledger from before (a CRM import): it is found, so it can be erased."""
    assert lookup_email(" A@B.example,CEO") == "a@b.example,ceo"
    with pytest.raises(InvalidInput):
        lookup_email("not-an-address")
