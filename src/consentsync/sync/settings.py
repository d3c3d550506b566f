"""A connector instance in consentsync.yaml: which vendor plugin, which mapping files, the
vendor's own settings (secrets as ${ENV_VAR}), and how the engine paces it."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class ConnectorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    vendor: str
    mappings: list[str] = Field(min_length=1)
    settings: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(default=200, ge=1, le=10_000)
    signpost_lag_seconds: float = Field(default=2.0, ge=0)
    push_batch_size: int = Field(default=10_000, ge=1, le=100_000)
    max_push_attempts: int = Field(default=10, ge=1, le=1_000)

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("expected lower-case letters, digits, - and _, starting with a letter")
        return value
