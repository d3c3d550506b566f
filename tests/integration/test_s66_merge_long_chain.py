"""A chain of merges of any length is followed (session 66 review of b45d545: ``_merged_into`` and
``survivors_holders`` stopped after 8 merges, so a chain of 24, Z's contact into R1, R1 into R2, ...
into X's C, missed Z, and X's erasure would delete C)."""

from __future__ import annotations

from types import SimpleNamespace

from sqlalchemy import insert, select

from consentsync.ledger.merge_survivors import survivors_holders
from consentsync.ledger.schema import crm_links
from consentsync.ledger.service import Ledger
from consentsync.sync.engine import SyncEngine
from tests.conftest import Clock
from tests.test_s66_shared_marker_index import contacts_granted


def test_a_chain_of_any_length_is_followed(ledger: Ledger, clock: Clock) -> None:
    now = clock()
    contacts_granted(ledger, now, "sf", ("xena@example.org", "yann@example.org", "zeno@example.org"))
    with ledger.engine.begin() as conn:
        x, y, z = (
            conn.execute(
                select(crm_links.c.subject_id).where(crm_links.c.record_id == f"003{n:012d}")
            ).scalar_one()
            for n in (0, 1, 2)
        )
        # Y's intermediate records 003..100+i: R_i merged into R_{i+1}, R_8 into X's C (003..0).
        hops = [f"003{100 + i:012d}" for i in range(1, 24)]
        targets = [*hops[1:], "003000000000000"]
        for record, into in zip(hops, targets, strict=True):
            conn.execute(
                insert(crm_links).values(
                    subject_id=y,
                    connector="sf",
                    object_type="Contact",
                    record_id=record,
                    linked_at=now,
                    gone_at=now,
                    merged_into=into,
                )
            )
        # Z's contact 003..2 merged into R_1: 9 merges from C.
        conn.execute(
            crm_links.update()
            .where(crm_links.c.record_id == "003000000000002")
            .values(gone_at=now, merged_into=hops[0])
        )
        c = conn.execute(select(crm_links).where(crm_links.c.record_id == "003000000000000")).one()
        found = SyncEngine._merged_into(SimpleNamespace(name="sf"), conn, [c])  # type: ignore[arg-type]
        holders = survivors_holders(conn, [z])
    assert z in found[c.id], "Z, 9 merges up, not seen: C not spared for Z"
    assert x in holders, "Z's erasure never has X's C examined again"
