"""`POST /v1/erasure-requests` names its body field in bad input (black-box finding F6).

The ledger's check of an erasure's reason worded its errors for the CLI (``--reason must ...``),
and the API passed them on: a client sending a JSON body has no ``--reason``. Now the API's
errors name the field, ``reason: ...``, one line, nothing erased; the CLI still says
``--reason``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import Cli
from tests.hub.conftest import HubWorld
from tests.hub.test_capture_s53_erased_says_no import GRANT, stored_forms

ADDRESS = "nobody9@example.org"


@pytest.mark.parametrize(
    ("reason", "says"),
    [
        ("asked by nobody9@example.org", "reason: must not hold an email address"),
        ("", "reason: must say why the subject is erased"),
        ("   ", "reason: must say why the subject is erased"),
        ("why\x07", "reason: holds a control character"),
    ],
)
def test_the_api_names_the_body_field(world: HubWorld, reason: str, says: str) -> None:
    assert world.post("/consents", {**GRANT, "email": ADDRESS}).status_code == 201
    answer = world.post("/erasure-requests", {"email": ADDRESS, "reason": reason})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error.startswith(says), error
    assert "--reason" not in error and "\n" not in error
    assert stored_forms(world, ADDRESS) == 1  # nothing erased


def test_the_cli_still_names_its_option(world: HubWorld, config_path: Path) -> None:
    assert world.post("/consents", {**GRANT, "email": ADDRESS}).status_code == 201
    cli = Cli(config_path, CliRunner())
    result = cli("erase", "--email", ADDRESS, "--reason", "asked by nobody9@example.org", "--yes")
    assert result.exit_code == 2, result.output
    assert "--reason must not hold an email address" in (result.output + (result.stderr or ""))
    assert stored_forms(world, ADDRESS) == 1
