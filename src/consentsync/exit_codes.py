"""What a consentsync command's exit status tells a scheduler (cron, systemd, Kubernetes, Airflow).

| code | name | meaning | what a scheduler should do |
|---|---|---|---|
| 0 | OK | done | nothing |
| 1 | FAILED | an error consentsync did not expect (details in the log) | alert |
| 2 | CONFIG | bad configuration, mapping or input: retrying will not help | alert an admin |
| 3 | HELD | the push guard held the run's pushes: review `consentsync plan`, then `apply` | alert an admin |
| 4 | QUARANTINED | `sync` or `apply` finished, with records quarantined |
|   |             | (`consentsync runs show RUN`) | warn |
| 5 | AUDIT_BROKEN | `audit verify`: the audit chain, the consent events or a signed checkpoint |
|   |              | do not verify (an entry changed, added or removed outside consentsync, the |
|   |              | chain cut back): tampering or damage; the first broken one is named | alert |
|   |              | whoever answers for the ledger's integrity; retrying will not help |
| 6 | UNPROTECTED | `doctor`: the audit log is not append-only (a trigger missing or disabled) | alert an |
|   |             | admin: `consentsync migrate`, or find who disabled it |
| 65 | STALE_PLAN | `apply` refused a plan the ledger or the CRM changed since it was made: nothing |
|    |            | was pushed; the refused run is on record (EX_DATAERR); a plan applied before is |
|    |            | no failure: what of it is still pending is pushed, exit 0 once nothing is left |
|    |            | (else 69 or 75, saying how many remain), naming the run that applied it |
|    |            | make a new plan, review it, apply that |
| 69 | UNAVAILABLE | the CRM or the ledger could not be reached now (EX_UNAVAILABLE) | retry later |
| 75 | STOPPED | stopped cleanly (signal, API budget, rate limit) or another run holds the |
|    |         | connector; the next run resumes (EX_TEMPFAIL) | retry at the next interval |
| 77 | CREDENTIALS | the CRM refused the credentials (EX_NOPERM) | alert an admin |
| 141 | READER_GONE | the reader of the output stopped reading before it was all written (a pipe |
|     |             | into `head`): 128 + SIGPIPE, as for a process that signal ended; the output |
|     |             | is incomplete, and nothing is said on stderr | nothing (a pipeline's reader) |
"""

from __future__ import annotations

import errno

OK = 0
FAILED = 1
CONFIG = 2
HELD = 3
QUARANTINED = 4
AUDIT_BROKEN = 5
UNPROTECTED = 6
STALE_PLAN = 65
UNAVAILABLE = 69
STOPPED = 75
CREDENTIALS = 77
READER_GONE = 128 + 13  # 128 + SIGPIPE

# A write refused for want of room (a full disk or quota, a file over its limit, the device's
# I/O error a full thin volume gives): the machine's state, exit 69 (free some, run again), said
# in one line and logged without frames.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def for_connector_error(rule: object) -> int:
    """The code for a CRM's refusal or silence, by the rule that classified it
    (``consentsync.sdk.errors.ErrorRule``): credentials refused 77, a stop to resume later 75
    (budget, rate limit), the CRM unreachable now 69, anything an admin must fix 2."""
    from consentsync.sdk.errors import Action, Fault

    if getattr(rule, "credentials", False):
        return CREDENTIALS
    fault = getattr(rule, "fault", None)
    if fault is Fault.LIMIT or getattr(rule, "action", None) is Action.RATE_LIMITED:
        return STOPPED
    if fault is Fault.TRANSIENT:
        return UNAVAILABLE
    return CONFIG
