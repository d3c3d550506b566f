"""``SyncEngine._merged_into``: a survivor's answer (the people merged into it along chains) does not
change with whether another record of the chain (a converted lead the same examination acts on) is
asked about in the same call (session 66 review of f6ce663: it did, the chain stopping there)."""

from __future__ import annotations

from types import SimpleNamespace

from sqlalchemy import insert, select

from consentsync.ledger.schema import crm_links
from consentsync.ledger.service import Ledger
from consentsync.sync.engine import SyncEngine
from tests.conftest import Clock
from tests.test_s66_shared_marker_index import contacts_granted


def test_a_survivors_chain_does_not_depend_on_what_else_is_asked(ledger: Ledger, clock: Clock) -> None:
    now = clock()
    contacts_granted(ledger, now, "sf", ("xena@example.org", "zeno@example.org"))
    with ledger.engine.begin() as conn:
        x, z = (
            conn.execute(
                select(crm_links.c.subject_id).where(crm_links.c.record_id == f"003{n:012d}")
            ).scalar_one()
            for n in (0, 1)
        )
        # X's lead L converted into X's contact 003..0; Z's lead L2 merged into L before.
        conn.execute(
            insert(crm_links).values(
                subject_id=x,
                connector="sf",
                object_type="Lead",
                record_id="00Q000000000001",
                linked_at=now,
                gone_at=now,
                merged_into="003000000000000",
                merged_into_object="Contact",
            )
        )
        conn.execute(
            insert(crm_links).values(
                subject_id=z,
                connector="sf",
                object_type="Lead",
                record_id="00Q000000000002",
                linked_at=now,
                gone_at=now,
                merged_into="00Q000000000001",
            )
        )
        c = conn.execute(select(crm_links).where(crm_links.c.record_id == "003000000000000")).one()
        lead = conn.execute(select(crm_links).where(crm_links.c.record_id == "00Q000000000001")).one()
        engine = SimpleNamespace(name="sf")
        alone = SyncEngine._merged_into(engine, conn, [c])  # type: ignore[arg-type]
        both = SyncEngine._merged_into(engine, conn, [c, lead])  # type: ignore[arg-type]
    assert set(alone[c.id]) == {x, z}
    assert set(both[c.id]) == {x, z}, both
