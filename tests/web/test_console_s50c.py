"""The console as ops read it every day (session 50, third pass).

- The objection queue listed every objector's full address to every viewer, unaudited; the
  queue needs only to tell people apart. It now shows a masked address (as a push plan does);
  the objection's own page shows the address, and that read is audited.
"""

from __future__ import annotations

import html
import re
from typing import Any

from sqlalchemy import select

from consentsync.ledger.schema import audit_entries
from consentsync.sync.plan import mask_email
from tests.conftest import SQLITE_ONLY
from tests.web.conftest import World

pytestmark = SQLITE_ONLY  # what is tested is the page, not the database (CI's time)


def viewed(world: World) -> int:
    with world.ledger.engine.connect() as conn:
        return len(
            conn.execute(select(audit_entries.c.seq).where(audit_entries.c.action == "subject.viewed")).all()
        )


def test_the_objection_queue_shows_masked_addresses_and_the_objection_the_address(
    viewer: Any, world: World
) -> None:
    subject = next(o["subject"] for o in world.ledger.list_objections() if o["id"] == world.objection_id)
    before = viewed(world)
    for status in ("pending", "all"):
        queue = viewer.get(f"/objections?status={status}")
        assert queue.status_code == 200
        shown = html.unescape(queue.text)
        assert world.objector not in shown
        assert mask_email(world.objector) in shown
        assert subject[:8] in shown  # masked addresses alike (pe***@ex***.com) are told apart
    assert viewed(world) == before  # the list reads nobody's record
    detail = viewer.get(f"/objections/{world.objection_id}")
    assert world.objector in html.unescape(detail.text)
    assert viewed(world) == before + 1


def pager_text(html_text: str) -> str:
    nav = html_text[html_text.index('<nav class="pager"') :]
    return re.sub(r"<[^>]+>", " ", html.unescape(nav[: nav.index("</nav>")]))


def test_a_list_in_oldest_first_order_does_not_call_its_next_page_older(viewer: Any, world: World) -> None:
    """The objection queue is oldest first: its second page holds the newer objections. The pager
    said "older →" for it (the label of the newest-first lists), sending ops the wrong way."""
    for number in range(25):
        world.ledger.raise_objection(f"queue-{number}@example.com", "profiling", actor="ops")
    first = viewer.get("/objections?status=all")
    pager = pager_text(first.text)
    assert "page 1 of 2" in pager and "next" in pager and "older" not in pager, pager
    second = viewer.get("/objections?status=all&page=2")
    assert "previous" in pager_text(second.text) and "newer" not in pager_text(second.text)
    # A newest-first list keeps its labels.
    runs = pager_text(viewer.get("/runs").text)
    assert "newer" in runs and "older" in runs, runs
    on_first = [int(i) for i in re.findall(r'href="/objections/(\d+)"', first.text)]
    on_second = [int(i) for i in re.findall(r'href="/objections/(\d+)"', second.text)]
    assert max(on_first) < min(on_second)  # the second page holds the newer ones
    assert len(set(on_first + on_second)) == 26  # no row lost or shown twice between the pages
