"""One address, one form: an internationalised domain that comes as Unicode from one source and
as punycode (xn--) from another is one address (docs/policy.md, "One address, one form")."""

from __future__ import annotations

import pytest

from consentsync.domain import InvalidInput, email_forms, lookup_email, normalise_email


@pytest.mark.parametrize(
    "given",
    ["a@bücher.example", "A@BÜCHER.Example", "a@xn--bcher-kva.example", " a@XN--BCHER-KVA.EXAMPLE "],
)
def test_either_form_of_an_idn_domain_is_one_address(given: str) -> None:
    assert normalise_email(given) == "a@bücher.example"
    assert lookup_email(given) == "a@bücher.example"


def test_the_other_form_is_what_a_ledger_may_hold_from_before() -> None:
    assert email_forms(normalise_email("a@xn--bcher-kva.example")) == (
        "a@bücher.example",
        "a@xn--bcher-kva.example",
        "a@bu\u0308cher.example",  # decomposed, as it may have come
    )
    assert email_forms("a@example.com") == ("a@example.com",)  # the common case: one form


def test_distinct_domains_stay_distinct() -> None:
    """IDNA 2008: "straße" and "strasse" are two domains (IDNA 2003 mapped one onto the other)."""
    assert normalise_email("x@xn--strae-oqa.de") == normalise_email("x@straße.de") == "x@straße.de"
    assert normalise_email("x@strasse.de") == "x@strasse.de"


def test_a_punycode_label_that_spells_a_refused_character_is_not_decoded_into_it() -> None:
    """xn--ab-g4t is "a\\u202eb" (a right-to-left override): the decoded form would be refused
    at every entry, so the label is kept as it came, never turned into that character."""
    assert normalise_email("x@xn--ab-g4t.example") == "x@xn--ab-g4t.example"
    with pytest.raises(InvalidInput):
        normalise_email("x@a\u202eb.example")


def test_plain_ascii_addresses_are_unchanged() -> None:
    assert normalise_email(" Jo.Doe+news@Example.COM ") == "jo.doe+news@example.com"
    assert normalise_email("a@ex--ample.com") == "a@ex--ample.com"


@pytest.mark.parametrize(
    ("given", "stored_before"),
    [
        ("b@cafe\u0301.example", "b@cafe\u0301.example"),  # NFD: UTS #46 composes it now
        (" C@\uff45xample.COM ", "c@\uff45xample.com"),  # fullwidth: mapped to ASCII now
    ],
)
def test_a_lookup_also_tries_the_form_an_older_version_stored(given: str, stored_before: str) -> None:
    """Versions before the domain had one form only trimmed and lower-cased: a lookup (search,
    erasure, decision) must still find what they stored, never store it (normalise_email)."""
    address = lookup_email(given)
    assert address == normalise_email(given) != stored_before
    assert email_forms(address)[0] == address and stored_before in email_forms(address)


def test_an_address_that_came_composed_also_finds_its_decomposed_form() -> None:
    """An older version kept an address as it came: decomposed (NFD) from one source, composed
    from another today. The decomposed form is the same address (UTS #46 composes it), so a
    lookup of the composed one tries it too: the person, and the keyed hash of their erasure,
    made then are found. A fullwidth form cannot be derived: only a lookup of it finds it."""
    assert email_forms("b@caf\u00e9.example") == (
        "b@caf\u00e9.example",
        "b@xn--caf-dma.example",
        "b@cafe\u0301.example",
    )
    assert email_forms("a@example.com") == ("a@example.com",)
    assert "c@\uff45xample.com" not in email_forms(normalise_email(" C@\uff45xample.COM "))


def test_a_lookup_of_a_plain_or_punycode_address_tries_no_further_form() -> None:
    assert email_forms(lookup_email(" Jo.Doe@Example.COM ")) == ("jo.doe@example.com",)
    assert email_forms(lookup_email("A@XN--BCHER-KVA.example")) == (
        "a@bücher.example",
        "a@xn--bcher-kva.example",
        "a@bu\u0308cher.example",
    )
