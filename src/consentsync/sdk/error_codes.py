"""Error rules for the codes a CRM answers in its error bodies, written by outcome: each outcome
once, then its codes and the reasons a person reads for them, instead of one
:class:`~consentsync.sdk.errors.ErrorRule` a code repeating the action and the fault.

>>> rules = coded_rules(retry={"UNABLE_TO_LOCK_ROW": "record locked"}, skip={"NOT_FOUND": "not found"})
>>> [(rule.code, rule.action.value, rule.fault.value) for rule in rules]
[('UNABLE_TO_LOCK_ROW', 'retry', 'transient'), ('NOT_FOUND', 'skip', 'data')]

A rule that also names an HTTP status, refuses the credentials or pairs an action with another
fault stays an ``ErrorRule`` of its own beside these.
"""

from __future__ import annotations

from collections.abc import Mapping

from consentsync.sdk.errors import Action, ErrorRule, Fault

__all__ = ["OUTCOMES", "coded_rules"]

#: Each outcome by name, with whose problem it is: a refused session is passing, a retried error
#: the CRM's or the network's, a failure a person's to fix, a skipped record its own content's.
OUTCOMES: Mapping[str, tuple[Action, Fault]] = {
    "refresh_token": (Action.REFRESH_TOKEN, Fault.TRANSIENT),
    "retry": (Action.RETRY, Fault.TRANSIENT),
    "fail": (Action.FAIL, Fault.CONFIG),
    "skip": (Action.SKIP, Fault.DATA),
}


def coded_rules(**codes_by_outcome: Mapping[str, str]) -> list[ErrorRule]:
    """One rule a code, whatever the HTTP status: ``coded_rules(fail={"MALFORMED_QUERY": "query
    rejected"})``; the keywords are the :data:`OUTCOMES`, each mapping codes to their reasons."""
    unknown = sorted(set(codes_by_outcome) - set(OUTCOMES))
    if unknown:
        raise TypeError(f"unknown outcome(s): {', '.join(unknown)} (known: {', '.join(OUTCOMES)})")
    return [
        ErrorRule(*OUTCOMES[outcome], reason, code=code)
        for outcome, reasons in codes_by_outcome.items()
        for code, reason in reasons.items()
    ]
