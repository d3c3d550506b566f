"""A connector instance in consentsync.yaml: which vendor plugin, which mapping files, the
vendor's own settings (secrets as ${ENV_VAR}), and how the engine paces it."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from consentsync.identifiers import shaped

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class Schedule(BaseModel):
    """When the daemon runs a connector: every N seconds, or on a cron expression (UTC)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interval_seconds: int | None = Field(default=None, ge=10, le=366 * 86_400)
    cron: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Schedule:
        if (self.interval_seconds is None) == (self.cron is None):
            raise ValueError("give either interval_seconds or cron")
        if self.cron is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(self.cron, timezone="UTC")
            except ValueError as error:
                raise ValueError(f"cron {self.cron!r}: {error}") from None
        return self


class PushGuard(BaseModel):
    """The blast-radius guard: a run that would push to more records than this (a number, or a
    share of the connector's live records) pushes nothing and waits for an approved plan."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_records: int | None = Field(default=500, ge=0, le=10**12)
    max_share: float | None = Field(default=0.05, gt=0, le=1)


class ConnectorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, shaped(_NAME, "lower-case letters, digits, - and _, starting with a letter")]
    vendor: str
    mappings: list[str] = Field(min_length=1)
    settings: dict[str, Any] = Field(default_factory=dict)
    # Records committed per ledger transaction: each commit rewrites the index pages its records
    # touched, so a larger page writes each page fewer times (docs/performance.md).
    batch_size: int = Field(default=1000, ge=1, le=10_000)
    signpost_lag_seconds: float = Field(default=2.0, ge=0, le=86_400, allow_inf_nan=False)
    push_batch_size: int = Field(default=10_000, ge=1, le=100_000)
    # CRM write calls side by side, each over a share of a push group; default: the connector's
    # own (Salesforce 4, the others 1). 1 writes one call after another. At most 8: a connector's
    # HTTP session keeps 10 connections a host.
    push_concurrency: int | None = Field(default=None, ge=1, le=8)
    max_push_attempts: int = Field(default=10, ge=1, le=1_000)
    # On a SQLite ledger, from this many people to examine after the pages, a second process
    # decides their pushes a batch ahead of the run (sync/ahead.py); null, the default: never.
    # It takes about a tenth off the examination from 200,000 contacts, but the full sync was not
    # faster in the two pairs measured at a million (docs/performance.md): off until it is.
    decide_ahead_from: int | None = Field(default=None, ge=1, le=10**12)
    # How far behind its last read an incremental read starts again (changes committed late);
    # None: the connector's own default, chosen from its vendor's docs.
    lookback_seconds: float | None = Field(default=None, ge=0, le=7 * 86_400, allow_inf_nan=False)
    # The connector lease's time to live: a daemon that dies (or freezes) holding the connector
    # keeps every other one off it this long; a run alive renews it every third of it, and stops
    # touching the CRM once it cannot know it still holds it (sync/lease.py).
    lease_seconds: float = Field(default=60.0, ge=10, le=3_600, allow_inf_nan=False)
    # Art. 17(2): what an erasure does to this CRM's records of the person, per object (the
    # mapping's object name): suppress (push the suppression flags only; the default),
    # anonymise (overwrite the personal fields the mapping names under personal_fields) or
    # delete (the CRM's delete call, where the connector can delete).
    erasure: dict[str, Literal["suppress", "anonymise", "delete"]] = Field(default_factory=dict)
    # observe: read and reconcile, push nothing (a new connector's mode: see what it would do with
    # `consentsync plan`); suppress_only: push only what restricts processing (opt-outs,
    # suppressions, erasure actions); two_way: everything the mappings mark as pushed.
    mode: Literal["observe", "suppress_only", "two_way"] = "observe"
    push_guard: PushGuard = PushGuard()
    schedule: Schedule = Schedule(interval_seconds=900)
