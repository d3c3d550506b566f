"""The records a CRM merged people's records into (``crm_links.merged_into``), followed along
chains of merges: an erasure has the people holding them examined again, so that a survivor
spared while a merged person was not erased (sync/engine.py ``_merged_into``, docs/policy.md,
Merges) is reached once every one of them is."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, select

from consentsync.ledger.bulk import one_of, select_in
from consentsync.ledger.schema import crm_links


def survivors_holders(conn: Connection, people: Sequence[int]) -> set[int]:
    """The people holding the records ``people``'s merged records live on in, directly or along
    a chain of any length. A read by person (their links, merged ones only), then one per step of the chains
    by record key; none where no record of theirs was merged."""
    if not people:
        return set()
    frontier = {
        (connector, into_object or object_type, into)
        for connector, object_type, into_object, into in conn.execute(
            select(
                crm_links.c.connector,
                crm_links.c.object_type,
                crm_links.c.merged_into_object,
                crm_links.c.merged_into,
            ).where(
                one_of(conn, crm_links.c.subject_id, sorted(people)), crm_links.c.merged_into.is_not(None)
            )
        )
    }
    seen = set(frontier)
    holders: set[int] = set()
    while frontier:  # each record once: a cycle ends
        by_object: dict[tuple[str, str], list[str]] = {}
        for connector, object_type, record_id in frontier:
            by_object.setdefault((connector, object_type), []).append(record_id)
        step: set[tuple[str, str, str]] = set()
        for (connector, object_type), record_ids in sorted(by_object.items()):
            for subject_id, into_object, into in select_in(
                conn,
                crm_links,
                ("subject_id", "merged_into_object", "merged_into"),
                "record_id",
                sorted(record_ids),
                equal=[("connector", connector), ("object_type", object_type)],
            ):
                holders.add(subject_id)
                if into is not None and (key := (connector, into_object or object_type, into)) not in seen:
                    seen.add(key)
                    step.add(key)
        frontier = step
    return holders
