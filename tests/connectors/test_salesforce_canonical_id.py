"""The record id's canonical form, computed the fast way, equals the rule spelled out for every
string (the write answers' ids go through it once each)."""

from consentsync_salesforce.connector import _ID_SUFFIX, _canonical_id, _id_checksum, _restored_id
from hypothesis import given
from hypothesis import strategies as st


def _checksum_as_documented(id15: str) -> str:
    # Salesforce's rule spelled out: for each five characters, the suffix letter whose index
    # has bit i set when character i is an upper-case letter.
    return "".join(
        _ID_SUFFIX[sum(1 << i for i, char in enumerate(id15[start : start + 5]) if "A" <= char <= "Z")]
        for start in (0, 5, 10)
    )


_ID_CHARS = st.sampled_from("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_ ÄéßİΣ")


@given(st.text(_ID_CHARS, min_size=15, max_size=15))
def test_the_checksum_is_the_documented_rule(id15: str) -> None:
    assert _id_checksum(id15) == _checksum_as_documented(id15)


@given(st.text(_ID_CHARS, min_size=13, max_size=19))
def test_an_id_taken_as_written_is_the_one_its_case_restored_gives(record_id: str) -> None:
    assert _canonical_id(record_id) == _restored_id(record_id)


@given(st.text(_ID_CHARS, min_size=15, max_size=15))
def test_a_written_id_is_canonical_as_it_is(id15: str) -> None:
    written = id15 + _checksum_as_documented(id15)
    assert _canonical_id(written) == _restored_id(written)


def test_an_id_as_salesforce_wrote_it_and_its_case_changed_forms_are_one() -> None:
    written = "003D000000QNqWyIAL"
    assert _checksum_as_documented(written[:15]) == written[15:]
    assert _canonical_id(written) == written
    assert _canonical_id(written.lower()) == written
    assert _canonical_id(written.upper()) == written
    assert _canonical_id(written[:15]) == written
