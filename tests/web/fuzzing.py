"""Schemathesis over an API's own OpenAPI document: every operation called with valid and invalid
data, for the JSON API's and the capture API's "no server error" tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode


def fuzz_operations(
    operations: Iterable[Any],
    send: Callable[[Any], Any],
    examples: int,
    check: Callable[[Any], None] = lambda response: None,
) -> dict[str, set[int]]:
    """Call each operation with ``examples`` generated cases of valid and as many of invalid data
    (``send`` makes the call, with the test's credentials): no answer may be a server error, and
    each must pass ``check``. Returns the status codes seen, by operation label."""
    statuses: dict[str, set[int]] = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def call(case: Any) -> None:
                response = send(case)
                statuses.setdefault(case.operation.label, set()).add(response.status_code)
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path} {case.query} {case.body!r} -> "
                    f"{response.status_code}: {response.text[:500]}"
                )
                check(response)

            try:
                call()
            except Unsatisfiable:
                # An operation that takes no input has no invalid input to try.
                assert mode is GenerationMode.NEGATIVE, operation.label
    return statuses
