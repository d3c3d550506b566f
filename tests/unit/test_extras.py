"""A command that needs an extra which is not installed names the extra to install, in one line,
exit 2; the default install's commands do not need it."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from consentsync import extras
from consentsync.cli import main


@pytest.fixture
def no_fastapi(monkeypatch: pytest.MonkeyPatch) -> None:
    def without(name: str, *args: Any) -> Any:
        return None if name == "fastapi" else find_spec(name, *args)

    monkeypatch.setattr(extras, "find_spec", without)


@pytest.mark.parametrize(
    "args",
    [["web"], ["user", "list"], ["run", "--web-port", "0"]],
    ids=["web", "user", "run --web-port"],
)
def test_console_commands_name_their_extra(no_fastapi: None, tmp_path: Path, args: list[str]) -> None:
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "absent.yaml"), *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("consentsync: error: ")
    assert "needs the 'console' extra, which is not installed (missing fastapi)" in result.stderr
    assert result.stderr.rstrip().endswith("pip install 'consentsync[console]'")


def test_installed_extras_are_not_missing() -> None:
    assert extras.missing("console") == []


def test_the_extras_listed_are_the_ones_pyproject_declares() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    declared = project["optional-dependencies"]
    assert set(extras.EXTRAS) <= set(declared)
    runtime = " ".join(project["dependencies"]).lower()
    for requirement in declared["console"]:
        name = requirement.split(">")[0].split("[")[0].lower()
        assert name not in runtime, f"{name} is in the console extra and in the default install"
