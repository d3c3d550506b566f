"""A refused config value whose key may hold a secret is never repeated in the error (session 50):
README.md, "No secret, nor any part of one, appears in an error". An erasure key of digits (YAML
reads it as a number) was echoed whole: `secrets.erasure_hmac_key: Input should be a valid string
(got 8392...)`; so was a ledger URL written as a mapping with its password. Other values are still
echoed (they help fix the file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from consentsync import exit_codes
from consentsync.cli import main
from consentsync.config import write_starter
from tests.conftest import one_line_error

SECRET = "839274982734982374982374"
KEY = "erasure_hmac_key_file: consentsync.key"


def config_with(tmp_path: Path, old: str, new: str) -> Path:
    path = tmp_path / "consentsync.yaml"
    write_starter(path, "sqlite:///ledger.db")
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        (KEY, f"erasure_hmac_key: {SECRET}", "secrets.erasure_hmac_key"),
        (KEY, f"erasure_hmac_key: [{SECRET}]", "secrets.erasure_hmac_key"),
        ("url: sqlite:///ledger.db", f"url: {{dsn: 'postgresql://app:{SECRET}@db/ledger'}}", "ledger.url"),
    ],
)
def test_a_refused_secret_is_not_repeated(tmp_path: Path, old: str, new: str, field: str) -> None:
    config = config_with(tmp_path, old, new)
    result = CliRunner().invoke(main, ["--config", str(config), "status"])
    line = one_line_error(
        result, exit_codes.CONFIG, f"{config}:{line_of(config, SECRET)}: {field}: ", "valid string"
    )
    assert SECRET not in result.output + result.stderr, line


def test_other_refused_values_are_still_shown(tmp_path: Path) -> None:
    config = config_with(tmp_path, "requested_stale_after_days: 30", "requested_stale_after_days: thirty")
    result = CliRunner().invoke(main, ["--config", str(config), "status"])
    one_line_error(result, exit_codes.CONFIG, "policy.requested_stale_after_days", "(got 'thirty')")
