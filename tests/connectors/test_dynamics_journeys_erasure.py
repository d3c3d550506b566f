"""``consentsync_journeys_contact`` is the contact seen from Journeys' consent center: its erasure
is the contact's own (``erasure.contact``). A delete or anonymise of it would be answered OK
with nothing done, the link marked gone, and the still-live contact, read again, would bring it
back at every run (the no-op delete sent again, another erasure row): the config refuses them
at load, on one line naming the setting and what is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from consentsync_dynamics.connector import DynamicsConnector
from consentsync_dynamics.journeys import JOURNEYS_CONTACT

from consentsync import exit_codes
from consentsync.config import ConfigError, load_config
from tests.conftest import SQLITE_ONLY, Cli, one_line_error

MAPPINGS = Path(__file__).resolve().parents[2] / "connectors/consentsync_dynamics/mappings"


def _with_dynamics(config_path: Path, **erasure: str) -> None:
    data = yaml.safe_load(config_path.read_text())
    data["connectors"] = [
        {
            "name": "dyn",
            "vendor": "dynamics",
            "mappings": [str(MAPPINGS / "contact.yaml"), str(MAPPINGS / "journeys_contact.yaml")],
            "settings": {
                "environment_url": "https://127.0.0.1:18498",
                "token_url": "https://127.0.0.1:18498/token",
                "client_id": "id",
                "client_secret": "s",
            },
            "erasure": erasure,
        }
    ]
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))


def _line_of(config_path: Path, text: str) -> int:
    return next(n for n, line in enumerate(config_path.read_text().splitlines(), 1) if text in line)


@SQLITE_ONLY
@pytest.mark.parametrize("action", ["delete", "anonymise"])
def test_a_journeys_contact_erasure_other_than_suppress_is_refused_at_config_load(
    config_path: Path, action: str
) -> None:
    _with_dynamics(config_path, contact="delete", **{JOURNEYS_CONTACT: action})
    with pytest.raises(ConfigError) as refused:
        load_config(config_path)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(
        f"{config_path}:{_line_of(config_path, JOURNEYS_CONTACT + ':')}: "
        f"connectors[0].erasure.{JOURNEYS_CONTACT}: "
    )
    assert f"cannot {action} {JOURNEYS_CONTACT} records" in message
    assert message.endswith("accepted is suppress")


@SQLITE_ONLY
def test_a_journeys_contact_suppressed_and_its_contact_deleted_load(config_path: Path) -> None:
    _with_dynamics(config_path, contact="delete", **{JOURNEYS_CONTACT: "suppress"})
    assert dict(load_config(config_path).connector("dyn").erasure) == {
        "contact": "delete",
        JOURNEYS_CONTACT: "suppress",
    }


@SQLITE_ONLY
def test_every_command_refuses_a_journeys_contact_delete(cli: Cli) -> None:
    _with_dynamics(cli.config_path, **{JOURNEYS_CONTACT: "delete"})
    for args in (("status",), ("sync", "dyn"), ("audit", "log")):
        one_line_error(
            cli(*args),
            exit_codes.CONFIG,
            f"connectors[0].erasure.{JOURNEYS_CONTACT}",
            "cannot delete",
            "accepted is suppress",
        )


def test_the_connector_declares_journeys_contact_suppress_only() -> None:
    # The contact itself takes every action the connector carries out (can_delete).
    assert DynamicsConnector.erasure_actions_by_object == {JOURNEYS_CONTACT: ("suppress",)}
    assert DynamicsConnector.can_delete
