"""Secrets derived from the erasure key are not keyed hashes of a label (a reviewer's finding on
session 58's sealed addresses, and older: the preference links' signing key). The keyed hash
(``keyed_hasher``) is the one that hashes text anyone can send, and a failed console login audits
the name it was given as one: typing a secret's label as the user name wrote the secret into the
audit log, with which a sealed address in a mailed link could be read and a preference link forged
for anyone. Each secret is now derived by HKDF (``derived_key``)."""

from __future__ import annotations

import base64
from typing import Any

import jwt
import orjson
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select

from consentsync.accounts import Accounts
from consentsync.hub import links
from consentsync.hub.capture import ADDRESS_SEAL_LABEL
from consentsync.ledger.schema import audit_entries
from tests.hub.conftest import HubWorld
from tests.hub.test_s58_erased_doi import LEO, confirmation_token, erased, sign_up

LINK_LABELS = ("consentsync/preference-links/v1", "consentsync/preference-links/v2")


def _audited_hash_of(world: HubWorld, label: str) -> bytes:
    """What a failed login with ``label`` as its user name writes into the audit log."""
    accounts = Accounts(world.ledger.engine, clock=world.ledger.clock, keyed=world.ledger.keyed_hasher())
    assert accounts.authenticate(label, "not-the-password", client="192.0.2.7") is None
    with world.ledger.engine.connect() as conn:
        payload = conn.execute(
            select(audit_entries.c.payload)
            .where(audit_entries.c.action == "login.failed")
            .order_by(audit_entries.c.seq.desc())
        ).scalar_one_or_none()
    assert payload is not None
    return str(orjson.loads(payload)["what"]["name_hmac"]).encode("ascii")


@pytest.mark.parametrize("label", LINK_LABELS)
def test_a_preference_link_cannot_be_forged_from_the_audit_log(world: HubWorld, label: str) -> None:
    audited = _audited_hash_of(world, label)
    forged = jwt.encode(
        {"sub": "anyone", "aud": links.AUDIENCE, "exp": 4102444800}, audited, algorithm="HS256"
    )
    with pytest.raises(links.LinkRefused):
        links._claims(world.ledger, forged)
    genuine = links.make_token(world.ledger, "someone", days=1)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(genuine, audited, algorithms=["HS256"], audience=links.AUDIENCE)


def test_a_sealed_address_cannot_be_read_with_what_the_audit_log_holds(world: HubWorld) -> None:
    erased(world, LEO)
    sign_up(world)
    token = confirmation_token(world)
    random_part, _, sealed = token.partition(".")
    data = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
    audited = _audited_hash_of(world, ADDRESS_SEAL_LABEL)
    key: Any = bytes.fromhex(audited.decode("ascii"))
    with pytest.raises(InvalidTag):
        AESGCM(key).decrypt(data[:12], data[12:], random_part.encode("ascii"))
