"""Push plans in the console (issue 13): what a connector's next run would push, computed by a dry
run, kept for review, and applied exactly (at most once) when an admin approves it.

Plans live in their own table (``plans``, see ledger/schema.py) rather than in the audit log's
entries: a plan's status changes after it is made, its approval must be taken at most once (a
conditional update from pending), and its items hold CRM field values (the old values of an
anonymising erasure among them) that must not enter the append-only chain. The items are kept only
while the plan awaits a decision; the masked address of each record is looked up when shown, so an
erased person's records show none. The audit log records ``plan.made``, the engine's
``plan.applied`` (with the approving admin as actor), ``plan.refused`` and ``plan.rejected``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson
from sqlalchemy import func, insert, select, update

from consentsync import audit
from consentsync.accounts import Account
from consentsync.audit import AuditRecord
from consentsync.config import Config, ConfigError
from consentsync.domain import REASON_MAX, InvalidInput, check_reason
from consentsync.ledger.engine import reading
from consentsync.ledger.schema import crm_links, plans, subject_identifiers
from consentsync.ledger.service import Ledger, NotFound
from consentsync.rowview import RowView

PENDING = "pending"
# A plan's statuses: pending (awaiting a decision), applying (an approval is running it), applied,
# refused (outdated: what the run would push no longer matched it), failed (the run failed or
# stopped), rejected, superseded (a newer plan of the connector was made while it was pending).
PLAN_STATUSES = ("pending", "applying", "applied", "refused", "failed", "rejected", "superseded")


class Conflict(Exception):
    """The action cannot be taken now (a run in progress, a plan already decided): HTTP 409."""


class PlanDesk:
    def __init__(self, config: Config, ledger: Ledger) -> None:
        self.config = config
        self.ledger = ledger
        self.engine = ledger.engine

    def connector(self, name: str) -> dict[str, Any]:
        """A configured connector's mode and push guard; NotFound for any other name."""
        for item in self.config.settings.connectors:
            if item.name == name:
                return {
                    "name": item.name,
                    "vendor": item.vendor,
                    "mode": item.mode,
                    "push_guard": item.push_guard.model_dump(),
                }
        raise NotFound(f"no connector {name!r} in the configuration")

    # -- reading -----------------------------------------------------------------------------------

    def history(self, connector: str, *, page: int, per_page: int) -> tuple[list[dict[str, Any]], int]:
        self.connector(connector)
        with reading(self.engine) as conn:
            total = conn.execute(
                select(func.count()).select_from(plans).where(plans.c.connector == connector)
            ).scalar_one()
            rows = conn.execute(
                select(plans)
                .where(plans.c.connector == connector)
                .order_by(plans.c.id.desc())
                .limit(per_page)
                .offset((max(1, page) - 1) * per_page)
            ).all()
        return [_summary(row) for row in rows], int(total)

    def view(self, plan_id: int, *, page: int, per_page: int) -> dict[str, Any]:
        """One plan: its counts per object, field and new value, and a page of its records."""
        with reading(self.engine) as conn:
            row = conn.execute(select(plans).where(plans.c.id == plan_id)).one_or_none()
            if row is None:
                raise NotFound(f"no plan with id {plan_id}")
            items: list[dict[str, Any]] = orjson.loads(row.items) if row.items else []
            start = (max(1, page) - 1) * per_page
            shown = items[start : start + per_page]
            who = _who(conn, row.connector, shown)
        return {
            **_summary(row),
            "changes": orjson.loads(row.changes),
            "items": {
                "items": [
                    {**item, "who": who.get((item["object_type"], item["record_id"]), "(no address)")}
                    for item in shown
                ],
                "page": page,
                "per_page": per_page,
                "total": len(items),
                "pages": max(1, -(-len(items) // per_page)),
            },
        }

    # -- acting ------------------------------------------------------------------------------------

    def make(self, connector: str, account: Account) -> int:
        """A dry run of the connector (reads the CRM, changes nothing), stored as a pending plan;
        an older pending plan of the connector is superseded. Returns the new plan's id."""
        from consentsync.app import open_sync
        from consentsync.sdk.errors import ConnectorError
        from consentsync.sync.locks import RunInProgress

        self.connector(connector)
        try:
            engine = open_sync(self.config, connector, self.ledger)
        except (ConfigError, ConnectorError, InvalidInput) as error:
            raise Conflict(f"{connector}: cannot open the connector: {error}") from None
        try:
            report = engine.run(dry_run=True)
        except RunInProgress as busy:
            raise Conflict(f"{busy}: try again once it has finished") from None
        finally:
            engine.connector.close()
        if report.plan is None:
            raise Conflict(f"no plan: the dry run of {connector} {report.status}: {report.error}")
        plan = report.plan
        changes = plan.changes()
        # Who each record belongs to is looked up when the plan is shown, not stored.
        items = [
            {k: v for k, v in asdict(item).items() if k not in ("outbox_id", "who")} for item in plan.items
        ]
        now = self.ledger.clock()
        with self.engine.begin() as conn:
            conn.execute(
                update(plans)
                .where(plans.c.connector == connector, plans.c.status == PENDING)
                .values(status="superseded", items=None, decided_at=now, outcome="a newer plan was made")
            )
            plan_id = conn.execute(
                insert(plans).values(
                    connector=connector,
                    digest=plan.digest,
                    status=PENDING,
                    records=len(plan.items),
                    changes=orjson.dumps(changes).decode(),
                    items=orjson.dumps(items).decode(),
                    made_by=account.name,
                    made_at=now,
                    made_run_id=report.run_id,
                )
            ).inserted_primary_key[0]
            audit.append(
                conn,
                [
                    AuditRecord(
                        "plan.made",
                        {
                            "connector": connector,
                            "plan": plan_id,
                            "digest": plan.digest,
                            "records": len(items),
                        },
                        new={"changes": changes},
                        source="console",
                        actor=account.name,
                    )
                ],
                now,
            )
        return int(plan_id)

    def approve(self, plan_id: int, digest: str, account: Account) -> dict[str, Any]:
        """Pushes exactly the plan (the engine refuses it when what it would push changed since),
        at most once; ``digest`` is the one the admin confirmed."""
        from consentsync.app import open_sync
        from consentsync.sdk.errors import ConnectorError
        from consentsync.sync.locks import RunInProgress
        from consentsync.sync.plan import Plan

        now = self.ledger.clock()
        with self.engine.begin() as conn:
            row = self._pending(conn, plan_id, "approved")
            if digest != row.digest:
                raise InvalidInput(
                    "the digest confirmed is not this plan's: reload the plan, review it and confirm again"
                )
            self._take(
                conn, plan_id, values={"status": "applying", "decided_by": account.name, "decided_at": now}
            )
        plan = Plan.from_json({"connector": row.connector, "items": orjson.loads(row.items or b"[]")})
        if plan.digest != row.digest:  # the stored plan is not what was reviewed: never push it
            self._finish(plan_id, "failed", "the stored plan does not match its digest: make a new plan")
            raise Conflict(f"plan {plan_id}: the stored plan does not match its digest: make a new plan")
        try:
            engine = open_sync(self.config, row.connector, self.ledger)
        except (ConfigError, ConnectorError, InvalidInput) as error:
            self._release(plan_id)
            raise Conflict(f"{row.connector}: cannot open the connector: {error}") from None
        engine.plan_actor = account.name
        try:
            report = engine.run(apply_plan=plan)
        except RunInProgress as busy:
            self._release(plan_id)
            raise Conflict(
                f"{busy}: the plan stays pending; approve it again once that run has finished"
            ) from None
        except BaseException as error:
            self._finish(plan_id, "failed", f"{type(error).__name__}: {error}")
            raise
        finally:
            engine.connector.close()
        if report.status == "succeeded":
            self._finish(plan_id, "applied", None, run_id=report.run_id, pushed=report.counts.pushed)
        elif report.status == "failed" and (report.error or "").startswith("plan: "):
            self._finish(plan_id, "refused", report.error, run_id=report.run_id, pushed=report.counts.pushed)
            with self.engine.begin() as conn:
                audit.append(
                    conn,
                    [
                        AuditRecord(
                            "plan.refused",
                            {"connector": row.connector, "plan": plan_id, "digest": row.digest},
                            source="console",
                            actor=account.name,
                            run_id=report.run_id,
                        )
                    ],
                    self.ledger.clock(),
                )
        else:
            self._finish(
                plan_id,
                "failed",
                f"the run {report.status}: {report.error}",
                run_id=report.run_id,
                pushed=report.counts.pushed,
            )
        return self.view(plan_id, page=1, per_page=25)

    def reject(self, plan_id: int, reason: str, account: Account) -> dict[str, Any]:
        # The reason outlives any erasure (the plan and the audit details name no subject).
        check_reason(reason, "reason", REASON_MAX, erasable=False)
        now = self.ledger.clock()
        with self.engine.begin() as conn:
            row = self._pending(conn, plan_id, "rejected")
            self._take(
                conn,
                plan_id,
                values={
                    "status": "rejected",
                    "items": None,
                    "decided_by": account.name,
                    "decided_at": now,
                    "outcome": reason,
                },
            )
            audit.append(
                conn,
                [
                    AuditRecord(
                        "plan.rejected",
                        {
                            "connector": row.connector,
                            "plan": plan_id,
                            "digest": row.digest,
                            "records": row.records,
                        },
                        old=PENDING,
                        new="rejected",
                        source="console",
                        actor=account.name,
                        details={"reason": reason},
                    )
                ],
                now,
            )
        return self.view(plan_id, page=1, per_page=25)

    # -- helpers -----------------------------------------------------------------------------------

    def _pending(self, conn: Any, plan_id: int, verb: str) -> Any:
        row = conn.execute(select(plans).where(plans.c.id == plan_id).with_for_update()).one_or_none()
        if row is None:
            raise NotFound(f"no plan with id {plan_id}")
        if row.status != PENDING:
            raise Conflict(f"plan {plan_id} is {row.status}: only a pending plan can be {verb}, once")
        return row

    @staticmethod
    def _take(conn: Any, plan_id: int, *, values: dict[str, Any]) -> None:
        """Moves a pending plan on; exactly one request can (the update is conditional)."""
        taken = conn.execute(
            update(plans).where(plans.c.id == plan_id, plans.c.status == PENDING).values(**values)
        )
        if taken.rowcount != 1:
            raise Conflict(f"plan {plan_id} was decided meanwhile")

    def _release(self, plan_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(plans)
                .where(plans.c.id == plan_id, plans.c.status == "applying")
                .values(status=PENDING, decided_by=None, decided_at=None)
            )

    def _finish(
        self,
        plan_id: int,
        status: str,
        outcome: str | None,
        *,
        run_id: str | None = None,
        pushed: int | None = None,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(plans)
                .where(plans.c.id == plan_id)
                .values(status=status, items=None, outcome=outcome, run_id=run_id, pushed=pushed)
            )


#: A plan without its items, as the plans list and a plan's page head show it.
_summary = RowView(
    "id connector digest status records made_by made_at decided_by decided_at outcome run_id pushed"
)


def _who(conn: Any, connector: str, items: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """The masked address of each record's person (none for an erased person)."""
    from consentsync.sync.plan import mask_email

    if not items:
        return {}
    wanted = {(item["object_type"], item["record_id"]) for item in items}
    found: dict[tuple[str, str], str] = {}
    for link in conn.execute(
        select(crm_links.c.object_type, crm_links.c.record_id, subject_identifiers.c.value)
        .join(
            subject_identifiers,
            (subject_identifiers.c.subject_id == crm_links.c.subject_id)
            & (subject_identifiers.c.kind == "email"),
        )
        .where(crm_links.c.connector == connector, crm_links.c.record_id.in_(sorted({r for _, r in wanted})))
        .order_by(subject_identifiers.c.id)
    ):
        key = (link.object_type, link.record_id)
        if key in wanted:
            found.setdefault(key, mask_email(link.value))
    return found
